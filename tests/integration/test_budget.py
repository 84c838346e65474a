"""The budget's tiny measured run: a broker, Redis, a worker and an API process, measured end to end; the
figures are this machine's, so only their presence and sense are checked, with the files it writes."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys

import pytest

from bench import budget
from bench.evaluate import Evaluation
from fencex.kafka.admin import ensure_topics
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration


def test_tiny_measured_run_writes_a_measurement_and_a_budget(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "bench.budget", "--tiny", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    m = json.loads((tmp_path / "measurement.json").read_text())
    assert m["fixes"] == 20_000 and m["fixes_per_record"] == 1
    cpu = m["cpu_s_per_million_fixes"]
    assert set(cpu) == {"worker", "broker", "redis", "api"}
    assert cpu["worker"] > 0 and cpu["broker"] > 0
    assert m["rss_mb"]["worker"]["rss_peak_mb"] > 50  # a Python process with the index loaded
    assert m["rss_mb"]["api"]["processes"] >= 1
    red = m["redis"]
    assert red["bytes_per_device"] > 0 and red["bytes_per_fence"] > 0 and red["bytes_per_track_fix"] > 0
    # a fix as JSON is about 90 bytes with its key; Kafka adds its record and batch headers
    assert 60 < m["kafka_locations"]["key_value_bytes"] < 200
    assert m["kafka_locations"]["sampled"] == 20_000
    assert m["events_per_million_fixes"] > 0
    b = json.loads((tmp_path / "budget.json").read_text())
    assert [r["devices"] for r in b["rows"]] == [1_500, 150_000, 10_000_000]
    assert all(r["yearly"] >= r["yearly_need"] > 0 for r in b["rows"])
    assert (tmp_path / "budget.png").read_bytes()[:4] == b"\x89PNG"
    assert "| farm: 1,500 animals" in (tmp_path / "budget.md").read_text()


def test_the_evaluations_push_run_measured_through_its_hook(tmp_path):
    # what bench.evaluate calls: a Sampler over its processes around the push run, then from_evaluation
    cfg = argparse.Namespace(fences=200, devices=500, seed=1, out=str(tmp_path), pack=1, step_s=1.0)
    ev = Evaluation(cfg)
    try:
        asyncio.run(ev.seed())
        ensure_topics(ev.bootstrap, {"fence-events": 12, "locations.dlq": 1})
        sampler = budget.Sampler(budget.evaluation_pids(ev)).start()
        rows = ev.push_sweep([1_000], 3, pack=1)
        use = sampler.stop()
        m = budget.from_evaluation(ev, use, "eval-sweep", "eval-sweep-events", fixes_per_record=1)
    finally:
        ev.close()
    sent = round(rows[0]["sent_fixes_per_s"] * 3)
    assert m["fixes"] == sent  # every fix sent is a record read back
    assert use["classes"]["worker"]["processes"] == 1  # the worker, stopped by the sweep's end, was seen
    assert m["cpu_s_per_million_fixes"]["worker"] > 0
    assert m["redis"]["bytes_per_device"] > 0
    assert m["kafka_locations"]["stored_bytes_per_fix"] > m["kafka_locations"]["key_value_bytes"]
    b = budget.budget(m)
    assert all(r["yearly"] > 0 for r in b["rows"])

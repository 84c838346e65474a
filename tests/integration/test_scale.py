"""The scale command (issue 15, item 5) is a command, not a timed test: here only a tiny run, which must
work end to end and write its JSON and plot with every figure present and plausible (not timed)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest

from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration


@pytest.mark.timeout(600)
def test_a_tiny_scale_run_reports_every_figure(tmp_path):
    args = ["--fences", "200", "--devices", "2000", "--partitions", "4", "--push-fixes", "3000"]
    args += ["--baseline-devices", "500", "--timeout", "240", "--out", str(tmp_path)]
    out = subprocess.run(
        [sys.executable, "-m", "bench.scale", *args], cwd=ROOT, capture_output=True, text=True, timeout=580
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    r = json.loads((tmp_path / "scale.json").read_text())
    assert (r["fences"], r["farms"], r["devices"], r["partitions"], r["masters"]) == (200, 20, 2000, 4, 3)
    load = r["load"]
    # a fence's record is about 0.9 KB of JSON: Redis holds it and its sets in more, but not in 20 KB
    assert 500 < load["fence_json_bytes"] < 2000
    assert load["fence_json_bytes"] < load["redis_per_fence_bytes"] < 20_000
    assert 100 < load["redis_per_device_bytes"] < 5_000  # a state, its pointers, position and membership
    start = r["worker"]["start"]
    assert 0 < start["index_s"] <= start["ready_s"] < 240
    assert start["events"] == 0  # the saved states are as a worker leaves them: loading them changes nothing
    assert r["empty_worker"]["ready_rss_mb"] > 30 and start["ready_rss_mb"] >= start["index_rss_mb"] > 30
    change = r["fence_change"]
    assert change["exit_event_s"] is not None and change["put_s"] < change["exit_event_s"] < 120
    push = r["push"]
    assert push["known"]["collars"] == 2000 and push["baseline"]["collars"] == 500
    assert push["known"]["records"] == push["known_few"]["records"] == push["baseline"]["records"] == 3000
    assert push["known_few"]["collars"] == 500
    assert push["known"]["fixes_per_s"] > 0 and push["baseline"]["fixes_per_s"] > 0
    assert push["ratio"] == pytest.approx(push["known"]["fixes_per_s"] / push["baseline"]["fixes_per_s"])
    assert push["ratio_same_collars"] == pytest.approx(
        push["known_few"]["fixes_per_s"] / push["baseline"]["fixes_per_s"]
    )
    rows = r["sizing"]
    assert [row["collars"] for row in rows] == [10_000, 1_000_000, 10_000_000]
    for small, big in itertools.pairwise(rows):
        assert small["worker_pods"] <= big["worker_pods"] and small["redis_gb"] < big["redis_gb"]
        assert small["partitions"] <= big["partitions"]
    assert all(row["partitions"] % 12 == 0 and row["api_pods"] >= 2 for row in rows)
    assert (tmp_path / "scale.png").stat().st_size > 10_000
    assert "sizing at one fix a minute" in out.stdout

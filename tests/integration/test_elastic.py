"""The elasticity experiment (bench/elastic.py) is a command, not a timed test: here a tiny run,
which must scale the workers up past one and back down by KEDA's rule, lose no event through the
rebalances, and write its JSON and figure."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration


def test_tiny_elasticity_scales_up_and_down_and_loses_no_event(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "bench.elastic", "--tiny", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    r = json.loads((tmp_path / "elastic.json").read_text())
    assert r["events_lost"] == 0 and r["ok"]
    assert r["events_expected"] > 0 and r["events_received"] >= r["events_expected"]
    assert r["unexpected_events"] == 0
    workers = [row["workers"] for row in r["timeline"]]
    assert workers[0] == 1 and max(workers) > 1, workers  # up past one worker ...
    assert workers[-1] == 1 and r["final_replicas"] == 1, workers  # ... and back down
    ups = [a for a in r["actions"] if a["to"] > a["from"]]
    downs = [a for a in r["actions"] if a["to"] < a["from"]]
    assert ups and downs and ups[0]["t"] < downs[0]["t"]
    assert all(a["lag"] > r["rules_used"]["lag_threshold"] for a in ups)  # the rule's reason to scale up
    assert r["rules_used"]["lag_threshold"] == r["rules_as_configured"]["lag_threshold"]  # only time is scaled
    assert (
        r["time_scale"] > 1 and r["rules_used"]["polling_s"] * r["time_scale"] == r["rules_as_configured"]["polling_s"]
    )
    assert sum(s["events_expected"] for s in r["segments"]) == r["events_expected"]
    assert sum(s["events_duplicated"] for s in r["segments"]) == r["events_duplicated"]
    for key in ("backlog", "workers", "replicas", "fixes_per_s", "produced_per_s"):
        assert all(key in row for row in r["timeline"]), key
    assert r["drain_threshold_records"] > 0 and "step_up_to_drained_s" in r
    assert r["peak_fixes_per_s"] > 0
    assert (tmp_path / "elastic.png").read_bytes()[:4] == b"\x89PNG"

"""The evaluation command is a command, not a timed test: here only a tiny run, which must
work end to end and write its files; its hard figures are that no event is lost and that, with
the peers, fencex's enters and exits are Tile38's (or the reason Tile38 was not run is recorded), and
that the elasticity experiment scaled the workers up past one and down again by KEDA's rule."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import tile38
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration


@pytest.mark.timeout(900)
def test_tiny_evaluation_writes_results_plots_and_report(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "bench.evaluate", "--tiny", "--with-peers", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"push_sweep", "pull", "availability", "scalability"} <= results.keys()
    assert results["availability"]["events_lost"] == 0
    assert results["availability"]["events_expected"] > 0
    assert all(r["fixes_per_s"] > 0 for r in results["push_sweep"] + results["scalability"])
    for png in ("push_sweep.png", "availability.png", "scalability.png", "pull.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG", png
    report = (tmp_path / "report.md").read_text()
    assert "FenceX" in report and "Strong scalability" in report
    assert "Against the peers, in the same run" in report
    # the peers: fencex's enters and exits, from 1 and 2 workers, are the pure pipeline's
    pp = results["push_peers"]
    assert pp["expected"]["enter"] > 0 and pp["expected"]["exit"] > 0
    assert all(r["fixes_per_s"] > 0 for r in pp["fencex"])
    assert {"fencex, 1 worker(s)", "fencex, 2 worker(s)"} <= pp["checks"].keys()
    binary, why = tile38.find()
    if binary is None:
        assert results["tile38"] == {"skipped": why}
        assert why in report
    else:  # and Tile38's, from 1 and 4 clients, are the same
        assert {"Tile38, 1 client(s)", "Tile38, 4 client(s)"} <= pp["checks"].keys()
        t38 = results["tile38"]
        assert [r["clients"] for r in t38["push"]] == [1, 4] and all(r["errors"] == 0 for r in t38["push"])
        assert all(r["requests_per_s"] > 0 for r in t38["pull_python"])
        assert t38["pull_pipelined"][0]["points_per_s"] > 0
        assert t38["pull_c"] or t38["pull_c_skipped"]
        assert (tmp_path / "ratios.png").read_bytes()[:4] == b"\x89PNG"
        ratios = {r["measure"]: r for r in results["ratios"]}
        assert ratios["push, one fix a record, 1 worker(s)"]["ratio"] > 0
    assert all(c["agree"] for c in pp["checks"].values()), pp["checks"]
    assert results["postgis"].get("skipped") or results["postgis"]["point_per_s_4_clients"] > 0
    # the elasticity experiment: the workers rose with the backlog and fell again, no event lost
    # (its only tiny run in the suite: bench.elastic alone runs the same experiment)
    el = results["elastic"]
    assert el["ok"] and el["events_lost"] == 0 and el["events_expected"] > 0
    assert el["events_received"] >= el["events_expected"] and el["unexpected_events"] == 0
    workers = [row["workers"] for row in el["timeline"]]
    assert workers[0] == 1 and max(workers) > 1, workers  # up past one worker ...
    assert workers[-1] == 1 and el["final_replicas"] == 1, workers  # ... and back down
    ups = [a for a in el["actions"] if a["to"] > a["from"]]
    downs = [a for a in el["actions"] if a["to"] < a["from"]]
    assert ups and downs and ups[0]["t"] < downs[0]["t"]
    assert all(a["lag"] > el["rules_used"]["lag_threshold"] for a in ups)  # the rule's reason to scale up
    assert el["rules_used"]["lag_threshold"] == el["rules_as_configured"]["lag_threshold"]  # only time is scaled
    assert (
        el["time_scale"] > 1
        and el["rules_used"]["polling_s"] * el["time_scale"] == el["rules_as_configured"]["polling_s"]
    )
    assert sum(s["events_expected"] for s in el["segments"]) == el["events_expected"]
    assert sum(s["events_duplicated"] for s in el["segments"]) == el["events_duplicated"]
    for key in ("backlog", "workers", "replicas", "fixes_per_s", "produced_per_s"):
        assert all(key in row for row in el["timeline"]), key
    assert el["drain_threshold_records"] > 0 and "step_up_to_drained_s" in el and el["peak_fixes_per_s"] > 0
    assert (tmp_path / "elastic.png").read_bytes()[:4] == b"\x89PNG"
    # the budget, from the push sweep's measured CPU-seconds and bytes
    m = results["budget_measurement"]
    assert m["fixes"] > 0 and m["cpu_s_per_million_fixes"]["worker"] > 0
    assert (tmp_path / "budget.png").read_bytes()[:4] == b"\x89PNG"
    assert "Elasticity" in report and "budget" in report.lower()

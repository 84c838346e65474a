"""The evaluation command is a command, not a timed test: here only a tiny run, which must
work end to end and write its files; its hard figures are that no event is lost and that, with
the peers, fencex's enters and exits are Tile38's (or the reason Tile38 was not run is recorded)."""

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
    el = results["elastic"]
    assert el["ok"] and el["events_lost"] == 0 and el["events_expected"] > 0
    assert (tmp_path / "elastic.png").read_bytes()[:4] == b"\x89PNG"
    # the budget, from the push sweep's measured CPU-seconds and bytes
    m = results["budget_measurement"]
    assert m["fixes"] > 0 and m["cpu_s_per_million_fixes"]["worker"] > 0
    assert (tmp_path / "budget.png").read_bytes()[:4] == b"\x89PNG"
    assert "Elasticity" in report and "budget" in report.lower()

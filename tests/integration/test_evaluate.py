"""The evaluation command is a command, not a timed test: here only a tiny run, which must
work end to end and write its files; its one hard figure is that no event is lost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration


def test_tiny_evaluation_writes_results_plots_and_report(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "bench.evaluate", "--tiny", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
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

"""A short, bounded locust run against the live services; it fails when requests fail."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from tests.integration.conftest import ADMIN_KEY, ROOT, wait_api, wait_ready

pytestmark = pytest.mark.integration


def test_locust_smoke_run(live, tmp_path):
    worker, port = live.start_worker()
    api, base = live.start_api()
    wait_api(base, api)
    wait_ready(port, worker)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(ROOT / "loadtest" / "locustfile.py"),
            "--headless",
            "-u",
            "8",
            "-r",
            "8",
            "-t",
            "15s",
            "--host",
            base,
            "--csv",
            str(tmp_path / "run"),
            "--only-summary",
            "--exit-code-on-error",
            "1",
        ],
        cwd=ROOT,
        env=live.env(FENCEX_ADMIN_KEY=ADMIN_KEY),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    with (tmp_path / "run_stats.csv").open() as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 100 and int(total["Failure Count"]) == 0
    for name in ("/query/fences", "/fences", "/fences/{id}", f"produce {live.locations}"):
        assert int(rows[name]["Request Count"]) > 0, name

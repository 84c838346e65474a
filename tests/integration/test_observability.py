"""Proof that the metrics are wired, not just written: a real Prometheus scrapes the local
stack under the simulator's load, and every dashboard and alert expression returns data."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from bench.dashboards import render
from deploy.build import expressions
from devtools.localserver import start_prometheus
from devtools.stack.prometheus import ALERTS, write_config
from tests.integration.conftest import ADMIN_KEY, ROOT, wait_api, wait_ready

pytestmark = pytest.mark.integration
COMPARISON = re.compile(r"\s*(>|<|==|>=|<=|!=)\s*[-\d.e]+\s*$")


def alert_series() -> list[str]:
    """Each alert's expression without its threshold: the series it watches."""
    return [COMPARISON.sub("", r["expr"]) for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


@pytest.mark.skipif(not shutil.which("prometheus"), reason="needs Debian's prometheus package (./dev test installs it)")
def test_every_dashboard_and_alert_expression_returns_data(live, tmp_path):
    workers = [live.start_worker() for _ in range(2)]
    api, base = live.start_api()
    for proc, port in workers:
        wait_ready(port, proc, timeout=90)
    wait_api(base, api)
    with (tmp_path / "simulator.log").open("wb") as log:
        sim = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.simulator",
                "--setup",
                "--fences",
                "60",
                "--devices",
                "150",
                "--rate",
                "300",
                "--bad-every",
                "40",
                "--duration-s",
                "120",
                "--quiet",
            ],
            cwd=ROOT,
            env=live.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    config = write_config(
        tmp_path / "prometheus.yml",
        [f"127.0.0.1:{p}" for _, p in workers],
        [base.removeprefix("http://")],
        interval="1s",
    )
    try:
        with start_prometheus(config, logdir=tmp_path) as prom:
            url = f"http://{prom.address}"
            key = httpx.post(
                f"{base}/admin/tenants", json={"id": "farm-000"}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
            )
            auth = {"Authorization": f"Bearer {key.json()['api_key']}"}
            pending = sorted(set(expressions() + alert_series()))
            deadline = time.monotonic() + 100
            while pending and time.monotonic() < deadline:
                for _ in range(20):  # pull traffic: point queries and a few 404s
                    httpx.get(f"{base}/query/fences", params={"lon": 17.3, "lat": 59.6}, headers=auth)
                httpx.get(f"{base}/fences/nope", headers=auth)
                time.sleep(2)
                still = []
                for expr in pending:
                    r = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
                    assert r["status"] == "success", (expr, r)
                    if not r["data"]["result"]:
                        still.append(expr)
                pending = still
            assert not pending, f"no data for: {pending}"
            rules = httpx.get(f"{url}/api/v1/rules").json()["data"]["groups"][0]["rules"]
            assert len(rules) == len(alert_series()) and all(r["health"] == "ok" for r in rules), rules
            targets = httpx.get(f"{url}/api/v1/targets").json()["data"]["activeTargets"]
            assert len(targets) == 3 and all(t["health"] == "up" for t in targets)
            # the same panels, drawn to PNG for people without Grafana
            pngs = render(url, tmp_path / "png", minutes=2)
            assert sorted(p.name for p in pngs) == ["availability.png", "herd.png", "scaling.png", "throughput.png"]
            assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 20_000 for p in pngs)
    finally:
        sim.kill()
        sim.wait()

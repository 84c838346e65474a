"""Dashboards and alert rules against the code, without servers: names, files, promtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from prometheus_client import CollectorRegistry

from deploy.build import DASHBOARDS, expressions, render_all
from devtools.stack.prometheus import ALERTS, write_config
from fencex.metrics import HerdCollector, PushMetrics, StateCollector
from fencex.store.connection import StoreHealth
from services.api.state import ApiCollector, PullMetrics

ROOT = Path(__file__).parents[2]
PROMQL_WORDS = {
    "sum",
    "by",
    "rate",
    "increase",
    "histogram_quantile",
    "topk",
    "count",
    "deriv",
    "or",
    "vector",
    "max",
    "le",
    "instance",
    "job",
    "type",
    "kind",
    "route",
    "partition",
    "path",
    "reason",
    "fence",
    "status",
    "on",
    "without",
    "and",
    "unless",
    "farm",
    "max_over_time",
    "fencex_service",  # the label both setups give the targets (deploy/prometheus/prometheus.yml)
}


def alert_exprs() -> list[str]:
    return [r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def exported_names() -> set[str]:
    reg = CollectorRegistry()
    PushMetrics(reg)
    snap = {
        "partitions": [0],
        "lag": {0: 1},
        "fences": 1,
        "index_version": 1,
        "quarantined": 0,
        "feed_reloads": 0,
        "devices": 1,
        "held": 2,
        "cache_bound": 3,
        "running": 1,
        "occupancy": [(("t", "f"), 1)],
        "fence_events": [(("t", "f"), 1)],
    }
    reg.register(StateCollector(lambda: snap))
    reg.register(HerdCollector(lambda: {"farm-000": [1, 1, 1]}))
    PullMetrics(reg)
    reg.register(
        ApiCollector(
            SimpleNamespace(
                sse_clients=0,
                ready=True,
                follower=SimpleNamespace(index=[], applied=0, quarantined={}, reloads=0),
                store_health=StoreHealth(3),
            )
        )
    )
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "info": ("_info",)}
    names = {fam.name + sfx for fam in reg.collect() for sfx in suffixes.get(fam.type, ("",))}
    return names | {s.name for fam in reg.collect() for s in fam.samples} | {"up"}


def metric_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', "", expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges))
    return {w for w in words if w not in PROMQL_WORDS and not w.startswith("fencex-")}


def test_every_metric_in_dashboards_and_alerts_exists_in_the_code():
    names = exported_names()
    used = set().union(*(metric_names(e) for e in expressions() + alert_exprs()))
    assert used, "no metric names found"
    assert used <= names, f"named in dashboards or alerts but not exported: {sorted(used - names)}"


def test_metric_names_follow_conventions():
    for name in exported_names():
        if name.startswith("fencex_"):
            assert not re.search(r"_(ms|milliseconds|minutes|kb|mb)(_|$)", name), name  # base units only


def test_generated_files_are_current():
    for path, text in render_all().items():
        assert path.read_text() == text, f"{path.name} is stale: run python deploy/build.py"
        if path.suffix == ".json":
            dash = json.loads(text)
            assert dash["uid"].startswith("fencex-") and dash["panels"]
    assert set(DASHBOARDS) == {"throughput", "availability", "scaling", "herd"}


@pytest.mark.skipif(
    not shutil.which("promtool"), reason="promtool comes with Debian's prometheus package (./dev test installs it)"
)
def test_promtool_accepts_rules_and_config(tmp_path):
    out = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    cfg = write_config(tmp_path / "prometheus.yml", ["127.0.0.1:6066"], ["127.0.0.1:8000"])
    out = subprocess.run(["promtool", "check", "config", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(alert_exprs())} rules found" in out.stdout


# A farm's herd as the compose stack labels it: one gauge per worker (job, instance) and farm.
HERD_RULE_TESTS = """
rule_files: [{alerts}]
evaluation_interval: 1m
tests:
  # hill: one ewe out for 20 minutes; half way, a rebalance moves it from processor-1 (its series
  # goes stale at 9m) to processor-2 (first scraped at 10m): the alert fires at 15 minutes all the same.
  # vale: an animal out for 10 minutes, then back: no alert.
  - interval: 1m
    input_series:
      - series: 'fencex_herd_devices_out{{job="fencex-processor",instance="processor-1:6066",farm="hill"}}'
        values: '1x8 stale'
      - series: 'fencex_herd_devices_out{{job="fencex-processor",instance="processor-2:6066",farm="hill"}}'
        values: '_x10 1x20'
      - series: 'fencex_herd_devices_out{{job="fencex-processor",instance="processor-1:6066",farm="vale"}}'
        values: '1x9 0x20'
      - series: 'fencex_herd_devices_silent{{job="fencex-processor",instance="processor-1:6066",farm="hill"}}'
        values: '1x30'
      - series: 'fencex_herd_devices_silent{{job="fencex-processor",instance="processor-1:6066",farm="vale"}}'
        values: '2x30'
      - series: 'fencex_herd_devices_silent{{job="fencex-processor",instance="processor-2:6066",farm="vale"}}'
        values: '0x3 4x30'
    alert_rule_test:
      - eval_time: 14m
        alertname: FencexHerdAnimalsOut
        exp_alerts: []
      - eval_time: 16m
        alertname: FencexHerdAnimalsOut
        exp_alerts:
          - exp_labels: {{severity: warning, farm: hill}}
            exp_annotations:
              summary: "Animals of farm hill have been out of their pastures for more than 15 minutes"
              description: "1 animals out now. GET /alerts?kind=out lists them with the pasture they left;
                a fence with a gap, a gate left open, or a pasture drawn too small.
                (_other: the farms beyond FENCEX_METRICS_FARMS_MAX.)"
      # one silent collar is the farmer's business (GET /alerts); six at once on vale are a gateway down
      - eval_time: 7m
        alertname: FencexHerdCollarsSilent
        exp_alerts: []
      - eval_time: 10m
        alertname: FencexHerdCollarsSilent
        exp_alerts:
          - exp_labels: {{severity: warning, farm: vale}}
            exp_annotations:
              summary: "6 collars of farm vale are silent"
              description: "Many collars quiet at once: a gateway or base station is down, or the farm lost
                coverage. GET /alerts?kind=silent lists them."
"""


@pytest.mark.skipif(
    not shutil.which("promtool"), reason="promtool comes with Debian's prometheus package (./dev test installs it)"
)
def test_herd_alerts_fire_for_a_farm_with_animals_out_15_minutes_and_for_many_silent_collars(tmp_path):
    tests = tmp_path / "herd-tests.yml"
    tests.write_text(HERD_RULE_TESTS.format(alerts=ALERTS))
    out = subprocess.run(["promtool", "test", "rules", str(tests)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr

"""Generated deployment files: ``python deploy/build.py`` writes them; a test keeps them current.

- deploy/grafana/dashboards/*.json from DASHBOARDS below: one place defines every panel's
  PromQL; docker-compose and Kubernetes provision the JSON, the render command draws the
  same panels to PNG, and the tests check every expression against a real Prometheus;
- deploy/k8s/base/prometheus-rule.yaml: the alert rules of deploy/prometheus/alerts.yml as a
  Prometheus Operator ``PrometheusRule``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
ALERTS = HERE / "prometheus" / "alerts.yml"
RULE = HERE / "k8s" / "base" / "prometheus-rule.yaml"
R = "[1m]"
# The processes, selected by the label both setups add at scrape time (fencex_service: processor,
# api), never by job: compose's job is "fencex-processor", a PodMonitor's "<namespace>/processor".
PROCESSOR = 'fencex_service="processor"'
FENCEX = 'fencex_service!=""'

DASHBOARDS: dict[str, dict[str, Any]] = {
    "throughput": {
        "title": "fencex / Throughput",
        "panels": [
            (
                "Fixes processed per second, per worker",
                "fixes/s",
                [("sum by (instance) (rate(fencex_fixes_processed_total" + R + "))", "{{instance}}")],
            ),
            (
                "Fixes processed per second, total",
                "fixes/s",
                [
                    ("sum(rate(fencex_fixes_processed_total" + R + "))", "processed"),
                    ("sum(rate(fencex_fixes_consumed_total" + R + "))", "consumed"),
                ],
            ),
            (
                "Fence intersections per second (FenceX push throughput)",
                "fixes/s",
                [
                    ("sum(rate(fencex_fence_intersections_total" + R + "))", "fixes inside a fence"),
                    ("sum(rate(fencex_point_tests_total" + R + "))", "exact point-in-fence tests"),
                ],
            ),
            (
                "Events published per second, by type",
                "events/s",
                [("sum by (type) (rate(fencex_events_published_total" + R + "))", "{{type}}")],
            ),
            (
                "Fix to event latency",
                "s",
                [
                    (
                        "histogram_quantile(0.5, sum by (le) (rate(fencex_event_latency_seconds_bucket" + R + ")))",
                        "p50",
                    ),
                    (
                        "histogram_quantile(0.99, sum by (le) (rate(fencex_event_latency_seconds_bucket" + R + ")))",
                        "p99",
                    ),
                ],
            ),
            (
                "Queries answered per second (FenceX pull throughput), by kind",
                "queries/s",
                [("sum by (kind) (rate(fencex_queries_total" + R + "))", "{{kind}}")],
            ),
            (
                "HTTP requests per second, per API process",
                "req/s",
                [("sum by (instance) (rate(fencex_http_requests_total" + R + "))", "{{instance}}")],
            ),
            (
                "HTTP p99 latency, by route",
                "s",
                [
                    (
                        "histogram_quantile(0.99, sum by (le, route) (rate(fencex_http_request_duration_seconds_bucket"
                        + R
                        + ")))",
                        "{{route}}",
                    )
                ],
            ),
        ],
    },
    "availability": {
        "title": "fencex / Availability",
        "panels": [
            ("Processes up", "up", [("up{" + FENCEX + "}", "{{fencex_service}} {{instance}}")]),
            ("Workers processing", "workers", [("sum(fencex_worker_up) or vector(0)", "workers")]),
            (
                "API success ratio (not 5xx)",
                "ratio",
                [
                    (
                        '1 - ((sum(rate(fencex_http_requests_total{status=~"5.."}[5m])) or vector(0)) '
                        "/ sum(rate(fencex_http_requests_total[5m])))",
                        "success",
                    )
                ],
            ),
            (
                "Error budget left this hour (SLO 99.9 %)",
                "fraction",
                [
                    (
                        '1 - ((sum(increase(fencex_http_requests_total{status=~"5.."}[1h])) or vector(0)) '
                        "/ sum(increase(fencex_http_requests_total[1h]))) / 0.001",
                        "budget left",
                    )
                ],
            ),
            (
                "Rebalances (recovery after a worker restart)",
                "rebalances",
                [("sum(increase(fencex_rebalances_total[5m]))", "partition assignments in 5 min")],
            ),
            (
                "Faults per second",
                "errors/s",
                [
                    (
                        "sum(rate(fencex_store_errors_total[5m])) + sum(rate(fencex_api_store_errors_total[5m]))",
                        "redis errors",
                    ),
                    ("sum(rate(fencex_broker_errors_total[5m]))", "broker errors"),
                    ("sum(rate(fencex_reconnects_total[5m])) or vector(0)", "reconnects"),
                ],
            ),
            (
                "Dead letters per second, by reason",
                "records/s",
                [("sum by (reason) (rate(fencex_dlq_records_total[5m]))", "{{reason}}")],
            ),
            (
                "Fixes dropped per second, by reason",
                "fixes/s",
                [("sum by (reason) (rate(fencex_fixes_dropped_total[5m]))", "{{reason}}")],
            ),
        ],
    },
    "scaling": {
        "title": "fencex / Scaling",
        "panels": [
            ("Workers alive", "workers", [("count(up{" + PROCESSOR + "} == 1) or vector(0)", "workers")]),
            ("Partitions per worker", "partitions", [("fencex_partitions_assigned", "{{instance}}")]),
            (
                "Consumer lag per partition",
                "records",
                [("sum by (partition) (fencex_consumer_lag_records)", "p{{partition}}")],
            ),
            ("Total consumer lag", "records", [("sum(fencex_consumer_lag_records)", "lag")]),
            (
                "CPU per process",
                "cores",
                [("rate(process_cpu_seconds_total{" + FENCEX + "}" + R + ")", "{{fencex_service}} {{instance}}")],
            ),
            (
                "Memory per process",
                "bytes",
                [("process_resident_memory_bytes{" + FENCEX + "}", "{{fencex_service}} {{instance}}")],
            ),
            (
                "Fences loaded and index version",
                "fences",
                [
                    ("max(fencex_fences_loaded)", "fences (workers)"),
                    ("max(fencex_api_fences_loaded)", "fences (API)"),
                    ("max(fencex_index_version)", "index version"),
                ],
            ),
            (
                "Batch size and index rebuild time",
                "",
                [
                    (
                        "histogram_quantile(0.5, sum by (le) (rate(fencex_batch_fixes_bucket" + R + ")))",
                        "median fixes per batch",
                    ),
                    (
                        "histogram_quantile(0.99, sum by (le) (rate(fencex_index_rebuild_seconds_bucket[1h])))",
                        "p99 index rebuild (s)",
                    ),
                ],
            ),
            (
                "Device-state cache hit rate (fixes whose state was cached), per worker",
                "percentunit",
                [
                    (
                        "sum by (instance) (rate(fencex_state_cache_hits_total" + R + ")) / (sum by (instance) "
                        "(rate(fencex_state_cache_hits_total" + R + ")) + sum by (instance) "
                        '(rate(fencex_state_cache_misses_total{path="fix"}' + R + ")))",
                        "{{instance}}",
                    )
                ],
            ),
            (
                "Device states: cached, held (cached or evicted) and the cache's bound, total",
                "devices",
                [
                    ("sum(fencex_devices_cached)", "cached"),
                    ("sum(fencex_devices_held)", "held"),
                    ("sum(fencex_state_cache_bound)", "bound"),
                    ("sum(rate(fencex_state_cache_evictions_total" + R + "))", "evicted per second"),
                ],
            ),
        ],
    },
    "herd": {
        "title": "fencex / Herd",
        "panels": [
            (
                "Animals out of their pastures, per farm",
                "devices",
                [("sum by (farm) (fencex_herd_devices_out)", "{{farm}}")],
            ),
            (
                "Escapes and returns in the last 15 minutes, per farm",
                "events",
                [
                    ('sum by (farm) (increase(fencex_herd_events_total{type="escape"}[15m]))', "{{farm}} escapes"),
                    ('sum by (farm) (increase(fencex_herd_events_total{type="return"}[15m]))', "{{farm}} returns"),
                ],
            ),
            (
                "Collars silent, per farm",
                "collars",
                [("sum by (farm) (fencex_herd_devices_silent)", "{{farm}}")],
            ),
            (
                "Collars low on battery, per farm",
                "collars",
                [("sum by (farm) (fencex_herd_devices_battery_low)", "{{farm}}")],
            ),
            (
                "Herd events per minute, by type",
                "events/min",
                [
                    (
                        "sum by (type) (increase(fencex_herd_events_total"
                        '{type=~"escape|return|battery_low|battery_ok|silent|resumed"}[5m])) / 5',
                        "{{type}}",
                    )
                ],
            ),
            (
                "Fixes not trusted (applied to no fence), per second, by reason",
                "fixes/s",
                [("sum by (reason) (rate(fencex_fixes_untrusted_total[5m]))", "{{reason}}")],
            ),
            (
                "Events per minute, by type",
                "events/min",
                [("sum by (type) (increase(fencex_events_published_total[1m]))", "{{type}}")],
            ),
            (
                "Busiest fences: events per second",
                "events/s",
                [("topk(10, sum by (fence) (rate(fencex_fence_events_total[5m])))", "{{fence}}")],
            ),
            (
                "Fullest fences: devices inside",
                "devices",
                [("topk(10, sum by (fence) (fencex_fence_occupancy_devices))", "{{fence}}")],
            ),
            (
                "Devices inside any fence, and devices tracked",
                "devices",
                [("sum(fencex_fence_occupancy_devices)", "inside a fence"), ("sum(fencex_devices_held)", "tracked")],
            ),
        ],
    },
}


def expressions() -> list[str]:
    return [expr for d in DASHBOARDS.values() for _t, _u, targets in d["panels"] for expr, _l in targets]


def grafana(uid: str, spec: dict[str, Any]) -> dict[str, Any]:
    panels = []
    for i, (title, unit, targets) in enumerate(spec["panels"]):
        panels.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": title,
                "datasource": {"type": "prometheus", "uid": "prometheus"},
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {
                    "defaults": {
                        "unit": {"s": "s", "bytes": "bytes", "ratio": "percentunit"}.get(unit, "short"),
                        "custom": {"axisLabel": unit},
                    },
                    "overrides": [],
                },
                "targets": [
                    {
                        "refId": chr(65 + k),
                        "expr": expr,
                        "legendFormat": legend,
                        "datasource": {"type": "prometheus", "uid": "prometheus"},
                    }
                    for k, (expr, legend) in enumerate(targets)
                ],
            }
        )
    return {
        "uid": f"fencex-{uid}",
        "title": spec["title"],
        "tags": ["fencex"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "panels": panels,
    }


def render_all() -> dict[Path, str]:
    """Every generated file and the text it must hold."""
    import yaml

    out = {
        HERE / "grafana" / "dashboards" / f"{uid}.json": json.dumps(grafana(uid, spec), indent=2) + "\n"
        for uid, spec in DASHBOARDS.items()
    }
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "fencex", "labels": {"release": "kube-prometheus-stack"}},
        "spec": yaml.safe_load(ALERTS.read_text()),
    }
    out[RULE] = (
        "# Generated from deploy/prometheus/alerts.yml by deploy/build.py: edit those, not this.\n"
        + yaml.safe_dump(rule, sort_keys=False, width=200)
    )
    return out


if __name__ == "__main__":
    for path, text in render_all().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(HERE.parent)}")

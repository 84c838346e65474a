"""The alert rules and the dashboards under promtool, with the series labelled as each setup labels them.

compose's Prometheus names its targets after its scrape jobs (job="fencex-processor"); Prometheus
Operator names a PodMonitor's targets job="<namespace>/<PodMonitor name>" and adds namespace, pod,
container and endpoint (pkg/prometheus/promcfg.go, generatePodMonitorConfig, v0.93.0). Each setup's
target labels are derived here from its own configuration (deploy/prometheus/prometheus.yml,
deploy/k8s/base/monitoring.yaml and the base's namespace), relabelling included, so a rule or panel
that selects on a label only one setup has is caught.

Every alert is checked, in both labelings and from both rule files (alerts.yml and the rules of the
generated PrometheusRule), at chosen minutes of scenarios: firing with exactly the expected labels
and annotations, and every other alert quiet. A target is up, down (its scrape fails: up is 0 and
its other series go stale) or gone (no target: every series of it goes stale), as Prometheus does.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from operator import mul
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.build import DASHBOARDS
from services.api.settings import Settings as ApiSettings
from services.processor.settings import Settings as ProcessorSettings

ROOT = Path(__file__).parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_RULE = ROOT / "deploy" / "k8s" / "base" / "prometheus-rule.yaml"
COMPOSE_PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
POD_MONITORS = ROOT / "deploy" / "k8s" / "base" / "monitoring.yaml"
BASE = ROOT / "deploy" / "k8s" / "base" / "kustomization.yaml"
PORTS = {"processor": ProcessorSettings().web_port, "api": ApiSettings().port}
MINUTES = 30
SETUPS = ["compose", "kubernetes"]
RULE_FILES = ["alerts.yml", "PrometheusRule"]
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    not PROMTOOL, reason="promtool comes with Debian's prometheus package (./dev test installs it)"
)

Labels = dict[str, str]
Targets = dict[str, list[Labels]]  # fencex_service -> one label set per target


# ------------------------------------------------------------------ the setups' target labels


def relabel(labels: Labels, rules: list[dict[str, str]], target_key: str) -> Labels:
    """The static relabellings both setups use (replace, no source labels): a label set to a value.
    Anything else is refused, so a new kind of rule gets modelled here, not silently ignored."""
    out = dict(labels)
    for rule in rules:
        assert set(rule) == {"action", target_key, "replacement"} and rule["action"] == "replace", rule
        out[rule[target_key]] = rule["replacement"]
    return out


def by_service(targets: list[Labels]) -> Targets:
    out: Targets = {"processor": [], "api": []}
    for labels in targets:
        out[labels["fencex_service"]].append(labels)
    return out


def compose_targets() -> Targets:
    config = yaml.safe_load(COMPOSE_PROMETHEUS.read_text())
    targets = []
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for address in static["targets"]:
                labels = {"job": job["job_name"], "instance": address, **static.get("labels", {})}
                targets.append(relabel(labels, job.get("relabel_configs", []), "target_label"))
    return by_service(targets)


def kubernetes_targets(pods: int = 3) -> Targets:
    """As Prometheus Operator labels a PodMonitor's targets: job is <namespace>/<name>, then the
    endpoint's relabelings. The pods' addresses and names are made up, as a cluster would."""
    namespace = yaml.safe_load(BASE.read_text())["namespace"]
    targets = []
    for monitor in yaml.safe_load_all(POD_MONITORS.read_text()):
        name = monitor["metadata"]["name"]
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            for i in range(pods if name == "processor" else 2):
                labels = {
                    "job": f"{namespace}/{name}",
                    "namespace": namespace,
                    "container": name,
                    "pod": f"{name}-5c7f9d8b6-{'xkqpz'[i]}{i}wz",
                    "endpoint": endpoint["port"],
                    "instance": f"10.244.{i + 1}.{17 + i}:{PORTS[name]}",
                }
                targets.append(relabel(labels, endpoint.get("relabelings", []), "targetLabel"))
    return by_service(targets)


def targets_of(setup: str) -> Targets:
    return compose_targets() if setup == "compose" else kubernetes_targets()


def test_both_setups_label_every_target_with_its_service():
    for setup in SETUPS:
        targets = targets_of(setup)
        assert len(targets["processor"]) >= 2 and len(targets["api"]) >= 1, (setup, targets)
    # the job names differ, which is why nothing selects on them
    assert {t["job"] for t in compose_targets()["processor"]} == {"fencex-processor"}
    assert {t["job"] for t in kubernetes_targets()["processor"]} == {"fencex/processor"}


# ------------------------------------------------------------------ series, minute by minute

Value = float | None  # None: no sample (before a series starts, or after it went stale)


def series(metric: str, labels: Labels, value: Callable[[int], Value]) -> dict[str, str]:
    """A promtool input series, one sample a minute from 0 to MINUTES; a series that stops gets a
    staleness marker, as Prometheus writes one when a target stops answering or disappears."""
    tokens, before = [], None
    for m in range(MINUTES + 1):
        v = value(m)
        if v is None:
            tokens.append("stale" if before is not None else "_")
        else:
            tokens.append(f"{v:g}")
        before = v
    text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{metric}{{{text}}}", "values": " ".join(tokens)}


State = Callable[[int, int], str]  # (target index, minute) -> "up" | "down" | "gone"


def always_up(_i: int, _m: int) -> str:
    return "up"


@dataclass
class Fleet:
    """The workers' and the API processes' series, healthy unless told otherwise."""

    workers: State = always_up
    apis: State = always_up
    consumed_per_min: float = 100.0
    lag: Callable[[int, int], float] = lambda _i, _m: 50.0
    ok_per_min: float = 600.0
    errors_per_min: float = 0.0
    corrupt: Callable[[int], float] = lambda _m: 0.0
    dlq_per_min: float = 0.0
    herd: dict[str, Callable[[int, int], Value]] = field(default_factory=dict)  # metric{farm} -> (i, m)

    def inputs(self, targets: Targets) -> list[dict[str, str]]:
        out = []

        def scraped(state: State, i: int, fn: Callable[[int], Value]) -> Callable[[int], Value]:
            return lambda m: fn(m) if state(i, m) == "up" else None

        def up(state: State, i: int) -> Callable[[int], Value]:
            return lambda m: {"up": 1.0, "down": 0.0, "gone": None}[state(i, m)]

        for i, t in enumerate(targets["processor"]):
            out.append(series("up", t, up(self.workers, i)))
            consumed = scraped(self.workers, i, lambda m: self.consumed_per_min * m)
            out.append(series("fencex_fixes_consumed_total", t, consumed))
            lag = scraped(self.workers, i, partial(self.lag, i))
            out.append(series("fencex_consumer_lag_records", t | {"partition": str(i)}, lag))
            dlq = scraped(self.workers, i, lambda m: self.dlq_per_min * m)
            out.append(series("fencex_dlq_records_total", t | {"reason": "bad_json"}, dlq))
            for key, fn in self.herd.items():
                metric, farm = key.split(":")
                out.append(series(metric, t | {"farm": farm}, scraped(self.workers, i, partial(fn, i))))
        for i, t in enumerate(targets["api"]):
            out.append(series("up", t, up(self.apis, i)))
            for status, per_min in (("200", self.ok_per_min), ("500", self.errors_per_min)):
                labels = t | {"route": "/query/fences", "method": "GET", "status": status}
                out.append(series("fencex_http_requests_total", labels, scraped(self.apis, i, partial(mul, per_min))))
            corrupt = scraped(self.apis, i, self.corrupt)
            out.append(series("fencex_api_corrupt_records_total", t | {"kind": "track"}, corrupt))
        return out


# ------------------------------------------------------------------ scenarios


@dataclass
class Expect:
    """At `minute`, `alert` fires once per label set in `each` (a function of the targets), with
    `value` for annotations that show {{ $value }}."""

    minute: int
    alert: str
    each: Callable[[Targets], list[Labels]] = lambda _t: [{}]
    value: float | None = None


@dataclass
class Scenario:
    fleet: Fleet
    minutes: list[int]  # every alert is checked at each of these: firing as expected, or quiet
    expect: list[Expect]
    only: Callable[[Targets], Targets] = lambda t: t


def after(minute: int, then: str) -> State:
    return lambda _i, m: "up" if m <= minute else then


def first_after(minute: int, then: str) -> State:
    return lambda i, m: "up" if i > 0 or m <= minute else then


def processors(t: Targets) -> list[Labels]:
    return t["processor"]


def first_processor(t: Targets) -> list[Labels]:
    return t["processor"][:1]


def herd_out(i: int, m: int) -> Value:  # hill: out 20 minutes, moved from worker 0 to 1 by a rebalance at 9-10
    if i == 0:
        return 1.0 if m <= 8 else None
    return 1.0 if i == 1 and m >= 10 else None


def herd_out_vale(i: int, m: int) -> Value:  # vale: out 10 minutes, then back: no alert
    return (1.0 if m <= 9 else 0.0) if i == 0 else None


def herd_silent_vale(i: int, m: int) -> Value:  # 2 silent on one worker, 4 more on another from minute 4
    return {0: 2.0, 1: 0.0 if m <= 3 else 4.0}.get(i)


SCENARIOS: dict[str, Scenario] = {
    # all well: nothing fires, at any minute
    "healthy": Scenario(Fleet(), [3, 10, 20, 30], []),
    "lag grows": Scenario(
        Fleet(lag=lambda _i, m: 50.0 + 100 * m),
        [4, 10, 30],
        [Expect(10, "FencexLagGrowing"), Expect(30, "FencexLagGrowing")],
    ),
    # the workers answer, but nothing comes in
    "nothing consumed": Scenario(
        Fleet(consumed_per_min=0.0), [1, 10, 30], [Expect(10, "FencexNoFixes"), Expect(30, "FencexNoFixes")]
    ),
    # one worker's scrapes fail from minute 6: that one is down, the others carry on
    "one worker down": Scenario(
        Fleet(workers=first_after(5, "down")),
        [5, 10, 30],
        [Expect(10, "FencexWorkerDown", first_processor), Expect(30, "FencexWorkerDown", first_processor)],
    ),
    # every worker's pod still there (crash-looping), none answering
    "all workers down": Scenario(
        Fleet(workers=after(5, "down")),
        [5, 12, 30],
        [
            *(Expect(m, a, processors) for m in (12, 30) for a in ["FencexWorkerDown"]),
            *(Expect(m, a) for m in (12, 30) for a in ["FencexNoWorkers", "FencexNoFixes"]),
        ],
    ),
    # every worker gone at minute 11 (scaled away, deleted, its node lost): no series at all, so
    # no WorkerDown (no target is down), but no workers and no fixes
    "all workers gone": Scenario(
        Fleet(workers=after(10, "gone")),
        [10, 16, 30],
        [Expect(m, a) for m in (16, 30) for a in ["FencexNoWorkers", "FencexNoFixes"]],
    ),
    # a Prometheus that never saw a worker: the same
    "no worker ever": Scenario(
        Fleet(),
        [5, 30],
        [Expect(m, a) for m in (5, 30) for a in ["FencexNoWorkers", "FencexNoFixes"]],
        only=lambda t: {"processor": [], "api": t["api"]},
    ),
    "API gone": Scenario(Fleet(apis=after(10, "gone")), [10, 16, 30], [Expect(m, "FencexApiDown") for m in (16, 30)]),
    # the API's scrapes fail: the API is down, and it is no worker
    "API down": Scenario(Fleet(apis=after(10, "down")), [10, 16, 30], [Expect(m, "FencexApiDown") for m in (16, 30)]),
    "5 % of requests fail": Scenario(
        Fleet(errors_per_min=30.0), [3, 10, 30], [Expect(m, "FencexErrorRatio") for m in (10, 30)]
    ),
    # 0.5 %: within the 1 %
    "a few requests fail": Scenario(Fleet(errors_per_min=3.0), [10, 30], []),
    # one unreadable record at minute 10: the alert holds for the 15 minutes of the increase
    "a corrupt record": Scenario(
        Fleet(corrupt=lambda m: 0.0 if m < 10 else 1.0), [9, 12, 30], [Expect(12, "FencexCorruptRecords")]
    ),
    "dead letters": Scenario(Fleet(dlq_per_min=5.0), [3, 30], [Expect(m, "FencexDeadLetters") for m in (3, 30)]),
    # the herd: a ewe out 20 minutes while a rebalance moves it between workers fires at 15 minutes
    # all the same; one silent collar is the farmer's business, six at once a gateway down
    "herd": Scenario(
        Fleet(
            herd={
                "fencex_herd_devices_out:hill": herd_out,
                "fencex_herd_devices_out:vale": herd_out_vale,
                "fencex_herd_devices_silent:hill": lambda i, _m: 1.0 if i == 0 else None,
                "fencex_herd_devices_silent:vale": herd_silent_vale,
            }
        ),
        [7, 10, 14, 16],
        [
            Expect(16, "FencexHerdAnimalsOut", lambda _t: [{"farm": "hill"}], value=1),
            *(Expect(m, "FencexHerdCollarsSilent", lambda _t: [{"farm": "vale"}], value=6) for m in (10, 14, 16)),
        ],
    ),
}


# ------------------------------------------------------------------ promtool


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"] if "alert" in r]


def rule_file(which: str, tmp_path: Path) -> Path:
    if which == "alerts.yml":
        return ALERTS
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert rule["kind"] == "PrometheusRule"
    path = tmp_path / "prometheus-rule-groups.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def go_value(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def render(template: str, labels: Labels, value: float | None) -> str:
    """The annotation as Prometheus renders it, for the two template forms the rules use."""
    text = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels[m.group(1)], template)
    if value is not None:
        text = re.sub(r"\{\{\s*\$value\s*\}\}", go_value(value), text)
    assert "{{" not in text, f"a template form not modelled here: {template}"
    return text


def alert_tests(scenario: Scenario, targets: Targets) -> list[dict[str, Any]]:
    by_name = {r["alert"]: r for r in rules()}
    for e in scenario.expect:
        assert e.minute in scenario.minutes and e.alert in by_name, e
    out = []
    for minute in scenario.minutes:
        for name, rule in by_name.items():
            expected = []
            for e in scenario.expect:
                if e.minute == minute and e.alert == name:
                    for labels in e.each(targets):
                        all_labels = labels | rule.get("labels", {})
                        notes = {k: render(v, all_labels, e.value) for k, v in rule.get("annotations", {}).items()}
                        expected.append({"exp_labels": all_labels, "exp_annotations": notes})
            out.append({"eval_time": f"{minute}m", "alertname": name, "exp_alerts": expected})
    return out


def promtool_test(
    tmp_path: Path, rule_files: list[Path], tests: list[dict[str, Any]], name: str = "tests"
) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL
    path = tmp_path / f"{name}.yml"
    doc = {"rule_files": [str(p) for p in rule_files], "evaluation_interval": "1m", "tests": tests}
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=1000))
    return subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)


def test_every_alert_is_shown_firing_in_some_scenario_and_all_are_quiet_when_healthy():
    fired = {e.alert for s in SCENARIOS.values() for e in s.expect}
    assert fired == {r["alert"] for r in rules()}
    assert not SCENARIOS["healthy"].expect


def scenario_test(name: str, setup: str) -> dict[str, Any]:
    """One promtool test group: the scenario's series as `setup` labels them, and its checks."""
    scenario = SCENARIOS[name]
    targets = scenario.only(targets_of(setup))
    return {
        "name": name,  # promtool names the group of a failure
        "interval": "1m",
        "input_series": scenario.fleet.inputs(targets),
        "alert_rule_test": alert_tests(scenario, targets),
    }


@needs_promtool
@pytest.mark.parametrize("which", RULE_FILES)
@pytest.mark.parametrize("setup", SETUPS)
def test_alerts_fire_as_expected_and_only_then(setup, which, tmp_path):
    tests = [scenario_test(name, setup) for name in SCENARIOS]
    out = promtool_test(tmp_path, [rule_file(which, tmp_path)], tests)
    assert out.returncode == 0, f"{setup}, {which}:\n{out.stdout}{out.stderr}"


OLD_WORKER_DOWN = """
groups:
  - name: before
    rules:
      - alert: FencexWorkerDown
        expr: up{job="fencex-processor"} == 0
        for: 1m
        labels: {severity: warning}
        annotations:
          summary: "A processor worker is down"
          description: "{{ $labels.instance }} does not answer scrapes; its partitions move to the others."
"""


@needs_promtool
def test_the_check_catches_a_rule_that_selects_compose_job_names(tmp_path):
    """The rule as it was (job="fencex-processor"): the same check passes it under compose's labels
    and fails it under Kubernetes', where it never fires."""
    old = tmp_path / "old.yml"
    old.write_text(OLD_WORKER_DOWN)
    results = {}
    for setup in SETUPS:
        test = scenario_test("one worker down", setup)
        test["alert_rule_test"] = [t for t in test["alert_rule_test"] if t["alertname"] == "FencexWorkerDown"]
        results[setup] = promtool_test(tmp_path, [old], [test], name=setup)
    assert results["compose"].returncode == 0, results["compose"].stdout + results["compose"].stderr
    assert results["kubernetes"].returncode != 0 and "FencexWorkerDown" in results["kubernetes"].stderr


# ------------------------------------------------------------------ dashboards

COUNTER, GAUGE = "counter", "gauge"
BUCKETS = ["0.005", "0.05", "0.5", "5", "+Inf"]
# Every metric the panels use, with the labels it carries and which process exports it; a test
# below keeps this in step with the panels.
PANEL_METRICS: dict[str, tuple[str, str, list[Labels]]] = {
    "up": ("both", GAUGE, [{}]),
    "process_cpu_seconds_total": ("both", COUNTER, [{}]),
    "process_resident_memory_bytes": ("both", GAUGE, [{}]),
    "fencex_fixes_processed_total": ("processor", COUNTER, [{}]),
    "fencex_fixes_consumed_total": ("processor", COUNTER, [{}]),
    "fencex_fence_intersections_total": ("processor", COUNTER, [{}]),
    "fencex_point_tests_total": ("processor", COUNTER, [{}]),
    "fencex_events_published_total": ("processor", COUNTER, [{"type": "enter"}, {"type": "exit"}]),
    "fencex_event_latency_seconds_bucket": ("processor", COUNTER, [{"le": le} for le in BUCKETS]),
    "fencex_worker_up": ("processor", GAUGE, [{}]),
    "fencex_rebalances_total": ("processor", COUNTER, [{}]),
    "fencex_store_errors_total": ("processor", COUNTER, [{}]),
    "fencex_broker_errors_total": ("processor", COUNTER, [{}]),
    "fencex_reconnects_total": ("processor", COUNTER, [{"kind": "redis"}]),
    "fencex_dlq_records_total": ("processor", COUNTER, [{"reason": "bad_json"}]),
    "fencex_fixes_dropped_total": ("processor", COUNTER, [{"reason": "stale"}]),
    "fencex_partitions_assigned": ("processor", GAUGE, [{}]),
    "fencex_consumer_lag_records": ("processor", GAUGE, [{"partition": "0"}, {"partition": "1"}]),
    "fencex_fences_loaded": ("processor", GAUGE, [{}]),
    "fencex_index_version": ("processor", GAUGE, [{}]),
    "fencex_batch_fixes_bucket": ("processor", COUNTER, [{"le": le} for le in BUCKETS]),
    "fencex_index_rebuild_seconds_bucket": ("processor", COUNTER, [{"le": le} for le in BUCKETS]),
    "fencex_herd_devices_out": ("processor", GAUGE, [{"farm": "hill"}]),
    "fencex_herd_devices_silent": ("processor", GAUGE, [{"farm": "hill"}]),
    "fencex_herd_devices_battery_low": ("processor", GAUGE, [{"farm": "hill"}]),
    "fencex_herd_events_total": (
        "processor",
        COUNTER,
        [{"farm": "hill", "type": t} for t in ("escape", "return", "battery_low", "silent")],
    ),
    "fencex_fixes_untrusted_total": ("processor", COUNTER, [{"reason": "jump"}]),
    "fencex_fence_events_total": ("processor", COUNTER, [{"tenant": "hill", "fence": "north"}]),
    "fencex_fence_occupancy_devices": ("processor", GAUGE, [{"tenant": "hill", "fence": "north"}]),
    "fencex_devices_cached": ("processor", GAUGE, [{}]),
    "fencex_devices_held": ("processor", GAUGE, [{}]),
    "fencex_state_cache_bound": ("processor", GAUGE, [{}]),
    "fencex_state_cache_hits_total": ("processor", COUNTER, [{}]),
    "fencex_state_cache_misses_total": ("processor", COUNTER, [{"path": "fix"}]),
    "fencex_state_cache_evictions_total": ("processor", COUNTER, [{}]),
    "fencex_http_requests_total": (
        "api",
        COUNTER,
        [{"route": "/query/fences", "method": "GET", "status": s} for s in ("200", "404", "503")],
    ),
    "fencex_http_request_duration_seconds_bucket": (
        "api",
        COUNTER,
        [{"route": "/query/fences", "le": le} for le in BUCKETS],
    ),
    "fencex_queries_total": ("api", COUNTER, [{"kind": "point"}]),
    "fencex_api_store_errors_total": ("api", COUNTER, [{}]),
    "fencex_api_fences_loaded": ("api", GAUGE, [{}]),
}


def constant(value: float, _minute: int) -> float:
    return value


def panel_inputs(targets: Targets) -> list[dict[str, str]]:
    out = []
    for metric, (where, kind, label_sets) in PANEL_METRICS.items():
        services = ["processor", "api"] if where == "both" else [where]
        for service in services:
            for t in targets[service]:
                for k, extra in enumerate(label_sets):
                    step = 1.0 if metric == "up" else 10.0 * (k + 1)
                    fn: Callable[[int], Value] = partial(mul, step) if kind == COUNTER else partial(constant, step)
                    out.append(series(metric, t | extra, fn))
    return out


def panel_targets() -> list[tuple[str, str, str, str]]:
    return [
        (uid, title, chr(65 + k), expr)
        for uid, spec in DASHBOARDS.items()
        for title, _unit, targets in spec["panels"]
        for k, (expr, _legend) in enumerate(targets)
    ]


def without_fallback(expr: str) -> str:
    """The query without its "or vector(0)": a panel that shows only its fallback zero shows nothing."""
    return re.sub(r"\s+or\s+vector\(0\)", "", expr)


def empty_panels(
    tmp_path: Path, setup: str, panels: list[tuple[str, str, str, str]]
) -> subprocess.CompletedProcess[str]:
    """promtool with one alert per panel query, absent(<query>): it fires for a query that returns
    nothing. The check expects no alert at the end of half an hour of every process's series."""
    group = {
        "name": "panels",
        "rules": [
            {
                "alert": "DashboardPanelEmpty",
                "expr": f"absent({without_fallback(expr)})",
                "labels": {"dashboard": uid, "panel": title, "query": ref},
            }
            for uid, title, ref, expr in panels
        ],
    }
    rules_path = tmp_path / f"panels-{setup}.yml"
    rules_path.write_text(yaml.safe_dump({"groups": [group]}, sort_keys=False, width=1000))
    test = {
        "interval": "1m",
        "input_series": panel_inputs(targets_of(setup)),
        "alert_rule_test": [{"eval_time": f"{MINUTES}m", "alertname": "DashboardPanelEmpty", "exp_alerts": []}],
    }
    return promtool_test(tmp_path, [rules_path], [test], name=f"panels-test-{setup}")


def test_the_panel_series_cover_every_metric_the_panels_use():
    from tests.unit.test_observability import metric_names

    used = set().union(*(metric_names(expr) for *_, expr in panel_targets()))
    assert used == set(PANEL_METRICS), (used - set(PANEL_METRICS), set(PANEL_METRICS) - used)


@needs_promtool
@pytest.mark.parametrize("setup", SETUPS)
def test_every_dashboard_panel_shows_data_in_both_setups(setup, tmp_path):
    out = empty_panels(tmp_path, setup, panel_targets())
    assert out.returncode == 0, f"panels with no data under {setup}'s labels:\n{out.stdout}{out.stderr}"


@needs_promtool
def test_the_panel_check_catches_a_query_that_selects_compose_job_names(tmp_path):
    """The Scaling dashboard's "Workers alive" as it was: data in compose, none in Kubernetes (where a
    fallback zero would hide that)."""
    old = [("scaling", "Workers alive", "A", 'count(up{job="fencex-processor"} == 1) or vector(0)')]
    assert without_fallback(old[0][3]) == 'count(up{job="fencex-processor"} == 1)'
    assert empty_panels(tmp_path, "compose", old).returncode == 0
    out = empty_panels(tmp_path, "kubernetes", old)
    assert out.returncode != 0 and "Workers alive" in out.stderr, out.stdout + out.stderr

"""The replica rule of KEDA's Kafka scaler and the HPA (bench/keda.py) that the elasticity experiment
drives its workers by: one rule, one row."""

from __future__ import annotations

import pytest

from bench import keda

# a ScaledObject as the processor's was configured when written (lagThreshold 50,000, 1-12 replicas, 12 partitions,
# scale-down: 300 s window, one pod a minute; scale-up: the HPA's defaults)
RULES = keda.Rules(
    min_replicas=1,
    max_replicas=12,
    polling_s=15,
    lag_threshold=50_000,
    partitions=12,
    down=keda.Direction(300, (keda.Policy("Pods", 1, 60),)),
)


def test_the_rules_are_read_from_the_deployed_scaled_object() -> None:
    r = keda.load()
    assert (r.min_replicas, r.max_replicas, r.polling_s, r.lag_threshold) == (1, 24, 15, 50_000)
    assert r.partitions == 24 and not r.allow_idle and r.earliest
    assert r.down == keda.Direction(300, (keda.Policy("Pods", 1, 60),))
    assert r.up == keda.DEFAULT_UP  # not configured: the HPA's defaults
    assert r.grace_s == 30 and r.cpu_request == 1.0


@pytest.mark.parametrize(("quantity", "cores"), [("1", 1.0), ("250m", 0.25), (2, 2.0), ("1.5", 1.5)])
def test_cpu_quantities(quantity: str | int, cores: float) -> None:
    assert keda.cpu_cores(quantity) == cores


@pytest.mark.parametrize(
    ("node_cpus", "cpu", "pods"),
    [(2, 1.0, 2), (2, 0.25, 8), (2, 1.5, 1), (1, 2.0, 1), (12, 1.0, 12)],  # at least one, always
)
def test_pods_that_fit_a_node(node_cpus: float, cpu: float, pods: int) -> None:
    rules = keda.Rules(1, 12, 15, 50_000, 12, cpu_request=cpu)
    assert keda.pods_that_fit(node_cpus, rules) == pods


def test_a_scaled_run_divides_the_time_constants_only() -> None:
    r = RULES.scaled(10)
    assert (r.polling_s, r.down.window_s, r.down.policies[0].period_s, r.up.policies[0].period_s) == (1.5, 30, 6, 1.5)
    assert (r.lag_threshold, r.min_replicas, r.max_replicas, r.grace_s, r.time_scale) == (50_000, 1, 12, 30, 10)


@pytest.mark.parametrize(
    ("latest", "committed", "earliest", "lag"),
    [
        (100, 40, True, 60),  # latest minus committed
        (100, None, True, 100),  # nothing committed, offsetResetPolicy earliest: the whole partition
        (100, -1001, True, 100),  # librdkafka's "no offset" reads the same
        (100, None, False, 0),  # ... latest: nothing
        (40, 100, True, 0),  # never negative
    ],
)
def test_partition_lag(latest: int, committed: int | None, earliest: bool, lag: int) -> None:
    assert keda.partition_lag(latest, committed, earliest) == lag


@pytest.mark.parametrize(
    ("lag", "current", "desired"),
    [
        (0, 1, 0),  # nothing behind: none wanted (min bounds it later)
        (50_000, 1, 1),  # exactly one threshold per replica
        (54_999, 1, 1),  # within the 10 % tolerance of one replica: no change
        (55_001, 1, 2),  # past it: ceil(lag / threshold)
        (149_000, 2, 3),  # ceil(2.98)
        (100_000, 3, 2),  # scale down proposed ...
        (140_000, 3, 3),  # ... not within the tolerance (0.93 of 3 thresholds)
        (10_000_000, 1, 12),  # capped at partitions x threshold: never more replicas than partitions
    ],
)
def test_metric_replicas(lag: int, current: int, desired: int) -> None:
    assert keda.metric_replicas(keda.keda_metric(lag, RULES), current, RULES) == desired


def test_idle_consumers_allowed_lift_the_partition_cap() -> None:
    rules = keda.Rules(1, 100, 15, 50_000, 12, allow_idle=True)
    assert keda.metric_replicas(keda.keda_metric(1_000_000, rules), 1, rules) == 20


def test_bounds() -> None:
    hpa = keda.Autoscaler(RULES)
    assert hpa.decide(0, 0, 1) == 1  # lag 0 wants 0: min 1
    assert keda.Autoscaler(RULES).decide(0, 0, 20) == 12  # above max: max, at once
    assert keda.Autoscaler(RULES).decide(0, 0, 0) == 1  # below min: min


def test_scale_up_is_immediate_within_the_default_policies() -> None:
    """No scale-up window; at most +4 pods or +100 % per 15 s, the larger (1 -> 5, not 12)."""
    hpa = keda.Autoscaler(RULES)
    assert hpa.decide(0, 600_000, 1) == 5
    assert hpa.decide(15, 600_000, 5) == 10  # the next period, from 5: +100 % (10) beats +4 (9)


def test_scale_up_limit_counts_the_replicas_at_the_period_start() -> None:
    hpa = keda.Autoscaler(RULES)
    assert hpa.decide(0, 150_000, 1) == 3
    # 5 s later, in the same 15 s period: the period started at 1, so at most 5 (or 2 by percent)
    assert hpa.decide(5, 600_000, 3) == 5


def test_scale_down_waits_for_the_stabilization_window() -> None:
    """The highest recommendation of the last 300 s holds; then one pod a minute."""
    hpa = keda.Autoscaler(RULES)
    assert hpa.decide(0, 200_000, 4) == 4
    for t in range(15, 300, 15):  # the load is gone, but 4 was recommended within 300 s
        assert hpa.decide(t, 0, 4) == 4, t
    assert hpa.decide(301, 0, 4) == 3  # the window has passed: one pod ...
    assert hpa.decide(316, 0, 3) == 3  # ... a minute
    assert hpa.decide(346, 0, 3) == 3
    assert hpa.decide(362, 0, 3) == 2
    assert hpa.decide(423, 0, 2) == 1
    assert hpa.decide(484, 0, 1) == 1  # min


def test_a_short_lull_does_not_scale_down() -> None:
    hpa = keda.Autoscaler(RULES)
    assert hpa.decide(0, 300_000, 6) == 6
    assert hpa.decide(100, 0, 6) == 6  # the lull: 6 was recommended 100 s ago
    assert hpa.decide(200, 300_000, 6) == 6  # back: nothing was removed in between


def test_the_default_scale_down_takes_all_at_once_after_the_window() -> None:
    rules = keda.Rules(1, 12, 15, 50_000, 12)  # no behaviour configured: -100 % per 15 s
    hpa = keda.Autoscaler(rules)
    assert hpa.decide(0, 500_000, 10) == 10
    assert hpa.decide(301, 0, 10) == 1

"""The replica count KEDA and the Horizontal Pod Autoscaler give the processor, as a pure rule.

For the evaluation's elasticity experiment (bench/elastic.py), which starts and stops worker
processes by it; it is not an autoscaler of the product (in a cluster, KEDA and the HPA do this).
The values come from the ScaledObject in deploy/k8s/base/processor.yaml (:func:`load`), and the
rule is theirs as documented and implemented:

- KEDA's Kafka scaler reports one metric, the consumer group's total lag on the topic: per
  partition the latest offset minus the committed one; a partition with no committed offset and
  ``offsetResetPolicy: earliest`` counts its latest offset (keda.sh/docs/2.15/scalers/apache-kafka,
  "New Consumers and Offset Reset Policy"). With ``allowIdleConsumers: false`` the metric is capped
  at partitions x lagThreshold, so that no more replicas than partitions are asked for (the same
  page's notice; kedacore/keda pkg/scalers/kafka_scaler.go: ``if totalLag/lagThreshold >
  totalTopicPartitions { totalLag = totalTopicPartitions * lagThreshold }``).
- The metric is an External metric with an ``AverageValue`` target of lagThreshold (the ScaledObject
  spec's "fallback": "the HPA metric being of type AverageValue"), so the HPA's replica calculator
  proposes ceil(total lag / lagThreshold), unless the ratio of the metric to lagThreshold x current
  replicas is within the tolerance (0.1) of 1, when it keeps the current count
  (kubernetes.io, Horizontal Pod Autoscaling, "Algorithm details" and "Tolerance";
  kubernetes pkg/controller/podautoscaler/replica_calculator.go, GetExternalPerPodMetricReplicas).
- Then the HPA's behavior (ScaledObject ``advanced.horizontalPodAutoscalerConfig.behavior``, merged
  with the defaults of "Default behavior": scale-up window 0 s, at most +100 % or +4 pods per 15 s,
  the larger; scale-down window 300 s, at most -100 % per 15 s): the stabilization window keeps the
  highest recommendation of the last ``stabilizationWindowSeconds`` when scaling down (the lowest of
  the scale-up window when scaling up), then the policies limit the change counted from the replicas
  at the start of each policy's period, then min/maxReplicaCount bound it (kubernetes
  pkg/controller/podautoscaler/horizontal.go: stabilizeRecommendationWithBehaviors,
  calculateScaleUpLimitWithScalingRules, calculateScaleDownLimitWithBehaviors).
- ``pollingInterval`` (15 s here) is how often KEDA checks the trigger; the HPA reconciles every
  15 s (its controller's default sync period, "How does a HorizontalPodAutoscaler work?") and asks
  KEDA's metrics server, which reads the scaler on each request. Both are 15 s here, so the rule is
  evaluated once every ``pollingInterval``. ``cooldownPeriod`` is KEDA's only for scaling to and from
  zero ("cooldownPeriod ... only applies when scaling to 0"), which minReplicaCount 1 rules out: the
  ScaledObject leaves it out, and the scale-down delay is the HPA's stabilization window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parents[1]
PROCESSOR_YAML = ROOT / "deploy" / "k8s" / "base" / "processor.yaml"
KAFKA_YAML = ROOT / "deploy" / "k8s" / "base" / "kafka.yaml"
TOLERANCE = 0.1  # the HPA's default (--horizontal-pod-autoscaler-tolerance)


@dataclass(frozen=True)
class Policy:
    kind: str  # "Pods" or "Percent"
    value: int
    period_s: float


@dataclass(frozen=True)
class Direction:
    """One direction's HPAScalingRules."""

    window_s: float
    policies: tuple[Policy, ...]
    select: str = "Max"  # Max, Min or Disabled


# the HPA's defaults (kubernetes.io, Horizontal Pod Autoscaling, "Default behavior")
DEFAULT_UP = Direction(0, (Policy("Percent", 100, 15), Policy("Pods", 4, 15)))
DEFAULT_DOWN = Direction(300, (Policy("Percent", 100, 15),))


@dataclass(frozen=True)
class Rules:
    min_replicas: int
    max_replicas: int
    polling_s: float
    lag_threshold: int
    partitions: int
    allow_idle: bool = False
    earliest: bool = True  # offsetResetPolicy: earliest
    up: Direction = DEFAULT_UP
    down: Direction = DEFAULT_DOWN
    tolerance: float = TOLERANCE
    grace_s: float = 30.0  # the Deployment's terminationGracePeriodSeconds
    cpu_request: float = 1.0  # the Deployment's container CPU request (cores): how many pods a node fits
    time_scale: float = 1.0  # every time constant above divided by this (1: as configured)

    def scaled(self, factor: float) -> Rules:
        """The same rules with the autoscaler's time constants (polling, windows, policy periods)
        divided by ``factor``: a local run in less time. Lags, counts and the workers' grace period
        (a limit on a graceful stop, not a pace) are unchanged."""

        def d(x: Direction) -> Direction:
            return replace(
                x,
                window_s=x.window_s / factor,
                policies=tuple(replace(p, period_s=p.period_s / factor) for p in x.policies),
            )

        return replace(
            self,
            polling_s=self.polling_s / factor,
            up=d(self.up),
            down=d(self.down),
            time_scale=self.time_scale * factor,
        )


def _direction(spec: dict[str, Any] | None, default: Direction) -> Direction:
    if not spec:
        return default
    pols = spec.get("policies")
    return Direction(
        float(spec.get("stabilizationWindowSeconds", default.window_s)),
        tuple(Policy(p["type"], int(p["value"]), float(p["periodSeconds"])) for p in pols)
        if pols
        else default.policies,
        spec.get("selectPolicy", default.select),
    )


def load(processor: Path = PROCESSOR_YAML, kafka: Path = KAFKA_YAML) -> Rules:
    """The rules of the processor's ScaledObject as configured in deploy/ (the Deployment's grace
    period from the same file, the partitions of the trigger's topic from the KafkaTopic)."""
    docs = [d for d in yaml.safe_load_all(processor.read_text()) if d]
    so = next(d for d in docs if d["kind"] == "ScaledObject")
    spec = so["spec"]
    target = spec["scaleTargetRef"]["name"]
    deploy = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == target)
    trigger = next(t for t in spec["triggers"] if t["type"] == "kafka")["metadata"]
    topics = [d for d in yaml.safe_load_all(kafka.read_text()) if d and d["kind"] == "KafkaTopic"]
    topic = next(t for t in topics if t["spec"].get("topicName", t["metadata"]["name"]) == trigger["topic"])
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {})
    return Rules(
        min_replicas=int(spec.get("minReplicaCount", 0)),
        max_replicas=int(spec.get("maxReplicaCount", 100)),
        polling_s=float(spec.get("pollingInterval", 30)),
        lag_threshold=int(trigger.get("lagThreshold", 10)),
        partitions=int(topic["spec"]["partitions"]),
        allow_idle=str(trigger.get("allowIdleConsumers", "false")).lower() == "true",
        earliest=trigger.get("offsetResetPolicy", "latest") == "earliest",
        up=_direction(behavior.get("scaleUp"), DEFAULT_UP),
        down=_direction(behavior.get("scaleDown"), DEFAULT_DOWN),
        grace_s=float(deploy["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)),
        cpu_request=cpu_cores(deploy["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]),
    )


def cpu_cores(quantity: str | int | float) -> float:
    """A Kubernetes CPU quantity in cores: "1", "250m", 0.5."""
    q = str(quantity)
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)


def pods_that_fit(node_cpus: float, rules: Rules) -> int:
    """The replicas one node of ``node_cpus`` cores can schedule: the rest stay Pending (at least one)."""
    return max(1, math.floor(node_cpus / rules.cpu_request + 1e-9))


def partition_lag(latest: int, committed: int | None, earliest: bool = True) -> int:
    """KEDA's lag of one partition: latest offset minus committed; with nothing committed, the
    latest offset (offsetResetPolicy earliest) or nothing (latest)."""
    if committed is None or committed < 0:
        return latest if earliest else 0
    return max(latest - committed, 0)


def keda_metric(total_lag: int, rules: Rules) -> int:
    """The metric KEDA gives the HPA: the total lag, capped at partitions x lagThreshold unless
    idle consumers are allowed."""
    if not rules.allow_idle and total_lag // rules.lag_threshold > rules.partitions:
        return rules.partitions * rules.lag_threshold
    return total_lag


def metric_replicas(metric: int, current: int, rules: Rules) -> int:
    """The HPA's proposal for an AverageValue External metric: ceil(metric / target), or the current
    count while metric / (target x current) is within the tolerance of 1."""
    if current > 0 and abs(metric / (rules.lag_threshold * current) - 1.0) <= rules.tolerance:
        return current
    return math.ceil(metric / rules.lag_threshold)


@dataclass
class Autoscaler:
    """The HPA's state for one target: its past recommendations and scale events (times in s)."""

    rules: Rules
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    up_events: list[tuple[float, int]] = field(default_factory=list)
    down_events: list[tuple[float, int]] = field(default_factory=list)

    def decide(self, now: float, total_lag: int, current: int) -> int:
        """One reconciliation at ``now`` with the group's total lag and ``current`` replicas: the
        replica count to set (records the scale event if it differs)."""
        r = self.rules
        if current > r.max_replicas:
            desired = r.max_replicas
        elif current < r.min_replicas:
            desired = r.min_replicas
        else:
            proposal = metric_replicas(keda_metric(total_lag, r), current, r)
            desired = self._rate_limited(now, self._stabilized(now, proposal, current), current)
        if desired > current:
            self.up_events.append((now, desired - current))
        elif desired < current:
            self.down_events.append((now, current - desired))
        return desired

    def _stabilized(self, now: float, proposal: int, current: int) -> int:
        up = min([n for t, n in self.recommendations if t > now - self.rules.up.window_s] + [proposal])
        down = max([n for t, n in self.recommendations if t > now - self.rules.down.window_s] + [proposal])
        longest = max(self.rules.up.window_s, self.rules.down.window_s)
        self.recommendations = [(t, n) for t, n in self.recommendations if t > now - longest]
        self.recommendations.append((now, proposal))
        return min(max(current, up), down)

    def _changed(self, events: list[tuple[float, int]], now: float, period_s: float) -> int:
        return sum(n for t, n in events if t > now - period_s)

    def _rate_limited(self, now: float, desired: int, current: int) -> int:
        r = self.rules
        if desired > current:
            limits = []
            for p in r.up.policies:
                start = current - self._changed(self.up_events, now, p.period_s)
                start += self._changed(self.down_events, now, p.period_s)
                limits.append(start + p.value if p.kind == "Pods" else math.ceil(start * (1 + p.value / 100)))
            if r.up.select == "Disabled":
                return current
            limit = max(min(limits) if r.up.select == "Min" else max(limits), current)
            return min(desired, limit, r.max_replicas)
        if desired < current:
            limits = []
            for p in r.down.policies:
                start = current + self._changed(self.down_events, now, p.period_s)
                start -= self._changed(self.up_events, now, p.period_s)
                limits.append(start - p.value if p.kind == "Pods" else int(start * (1 - p.value / 100)))
            if r.down.select == "Disabled":
                return current
            limit = min(max(limits) if r.down.select == "Min" else min(limits), current)
            return max(desired, limit, r.min_replicas)
        return desired

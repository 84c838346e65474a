"""Prometheus metrics of the push path (processor workers).

Names follow Prometheus conventions: ``fencex_`` prefix, base units, ``_total``
for counters, ``_seconds`` for durations; labels are of low cardinality (never a
device id). Gauges that describe state (partitions, lag, fences loaded) are read
at scrape time by a collector, not updated on the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from fencex.event import EVENT_TYPES
from fencex.herd import UNTRUSTED_REASONS
from fencex.kafka.producer import UNDELIVERED_REASONS

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 10, 100, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000)


HERD_SERIES = 200  # the herd metrics carry a fence label: at most this many fences each
FIX_REASONS = ("not_json", "bad_device_id", "bad_ts", "bad_lon", "bad_lat", "bad_fix")
# a dead letter's reason: a bad fix's, a record that failed after parsing, a record the broker refused
DLQ_REASONS = (*FIX_REASONS, "processing_error", "undelivered")
TOPIC_ROLES = ("events", "dlq", "locations")
FARMS_MAX = 100  # farms with a label of their own in the per-farm herd metrics (processor setting)
OTHER_FARMS = "_other"  # the label of every farm beyond them (no farm id starts with "_")
HERD_GAUGES = (  # DeviceState's flag, the gauge's name, its help
    ("out", "fencex_herd_devices_out", "Devices out of their pastures (escaped, not returned), per farm"),
    ("silent", "fencex_herd_devices_silent", "Collars silent (no fix for the farm's silence time), per farm"),
    ("low", "fencex_herd_devices_battery_low", "Collars whose battery is below the farm's threshold, per farm"),
)


def process_collectors(registry: CollectorRegistry) -> None:
    """CPU seconds and resident memory of this process, for the Scaling dashboard."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)


LATE_OUTCOMES = ("merged", "duplicate", "too_old", "newer", "failed")  # fencex_late_fixes_total's label


class PushMetrics:
    def __init__(self, registry: CollectorRegistry, farms_max: int = FARMS_MAX) -> None:
        self.registry = registry
        process_collectors(registry)
        self.herd = HerdMetrics(registry, farms_max)  # counted by the outbox, per farm
        self.records = Counter(
            "fencex_records_consumed_total", "Kafka records read from the locations topic", registry=registry
        )
        self.fixes_consumed = Counter(
            "fencex_fixes_consumed_total", "Well-formed fixes read (a packed record holds many)", registry=registry
        )
        self.fixes_processed = Counter(
            "fencex_fixes_processed_total", "Fixes applied to device state", registry=registry
        )
        self.fixes_dropped = Counter(
            "fencex_fixes_dropped_total",
            "Fixes dropped, by reason (bad input, out of order)",
            ["reason"],
            registry=registry,
        )
        self.point_tests = Counter(
            "fencex_point_tests_total", "Exact point-in-fence tests after the R-tree filter", registry=registry
        )
        self.intersections = Counter(
            "fencex_fence_intersections_total", "Fixes inside at least one fence", registry=registry
        )
        self.events = Counter(
            "fencex_events_published_total", "Fence events published, by type", ["type"], registry=registry
        )
        self.dlq = Counter(
            "fencex_dlq_records_total",
            "Records sent to the dead-letter topic, by reason",
            ["reason"],
            registry=registry,
        )
        self.latency = Histogram(
            "fencex_event_latency_seconds",
            "Fix time to event handed to the producer (acks follow within the flush interval)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch = Histogram(
            "fencex_batch_fixes", "Fixes per processed batch", buckets=BATCH_BUCKETS, registry=registry
        )
        self.batch_seconds = Histogram(
            "fencex_batch_duration_seconds",
            "Time to process, publish, save and commit one batch",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.index_rebuild = Histogram(
            "fencex_index_rebuild_seconds",
            "Time to build a fence index snapshot",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.store_errors = Counter("fencex_store_errors_total", "Redis errors seen by the worker", registry=registry)
        self.broker_errors = Counter(
            "fencex_broker_errors_total", "Broker errors seen by the worker", registry=registry
        )
        self.reconnects = Counter(
            "fencex_reconnects_total", "Reconnections after an error, by server", ["server"], registry=registry
        )
        self.rerouted = Counter(
            "fencex_fixes_rerouted_total",
            "Fixes packed under another device's key, sent back to the topic under their own",
            registry=registry,
        )
        self.rebalances = Counter("fencex_rebalances_total", "Partition assignments received", registry=registry)
        self.undelivered = Counter(
            "fencex_undelivered_records_total",
            "Records the broker refused for good (dead-lettered as a stub), by topic and reason",
            ["topic", "reason"],
            registry=registry,
        )
        self.saves_fenced = Counter(
            "fencex_saves_fenced_total",
            "State saves refused because another worker owns the partitions now (work dropped, not committed)",
            registry=registry,
        )
        self.isolated = Counter(
            "fencex_records_isolated_total",
            "Records processed one by one after their batch failed after parsing",
            registry=registry,
        )
        self.fixes_untrusted = Counter(
            "fencex_fixes_untrusted_total",
            "Fixes applied but not trusted with the device's fences (inaccurate, or a jump), by reason",
            ["reason"],
            registry=registry,
        )
        self.schedule_transitions = Counter(
            "fencex_schedule_transitions_total",
            "Rotation schedule transitions (a farm's fence opening or closing) applied to the held devices",
            registry=registry,
        )
        self.silence_sweep = Histogram(
            "fencex_silence_sweep_seconds",
            "Time the event loop spent in one sweep for silent devices",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.late_fixes = Counter(
            "fencex_late_fixes_total",
            "Fixes older than their device's newest, by outcome: merged into its track (events as if in order), "
            "a duplicate of one held, too old (behind the farm's track window), newer (none expected), "
            "failed (a bug: logged)",
            ["outcome"],
            registry=registry,
        )
        self.late_merge_seconds = Histogram(
            "fencex_late_merge_seconds",
            "Time the worker spent merging held late fixes at one flush (bounded by its budget)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tracks_corrupt = Counter(
            "fencex_tracks_corrupt_total", "Stored tracks that did not read (started again)", registry=registry
        )
        self.tracks_trimmed = Counter(
            "fencex_tracks_trimmed_total", "Stored tracks trimmed to their farm's window and the cap", registry=registry
        )
        self.state_cache_hits = Counter(
            "fencex_state_cache_hits_total", "Fixes whose device's state was cached", registry=registry
        )
        self.state_cache_misses = Counter(
            "fencex_state_cache_misses_total",
            "Device states not cached, loaded from Redis: for a fix (evicted, or new to this worker: one a "
            "batch), for a silence due, or for a change (fences, mobs, herd settings, a schedule transition)",
            ["path"],
            registry=registry,
        )
        self.state_cache_evictions = Counter(
            "fencex_state_cache_evictions_total",
            "Device states evicted from the worker's cache (saved: loaded again when needed)",
            registry=registry,
        )
        for path in ("fix", "silence", "change"):  # fencex.stream.cache.MISS_PATHS
            self.state_cache_misses.labels(path)
        for outcome in LATE_OUTCOMES:
            self.late_fixes.labels(outcome)
        for reason in UNTRUSTED_REASONS:
            self.fixes_untrusted.labels(reason)
        for reason in (*FIX_REASONS, "out_of_order"):
            self.fixes_dropped.labels(reason)
        for reason in DLQ_REASONS:
            self.dlq.labels(reason)
        for t in EVENT_TYPES:
            self.events.labels(t)
        for topic in TOPIC_ROLES:
            for reason in UNDELIVERED_REASONS:
                self.undelivered.labels(topic, reason)


class FarmLabels:
    """A farm's metric label: its id for the first ``farms_max`` farms this process sees, then
    ``_other`` for all the rest, so the label set stays bounded whatever the number of farms.
    (With no more farms than ``farms_max``, every farm has its own label on every worker.)"""

    def __init__(self, farms_max: int) -> None:
        self.farms_max = farms_max
        self.own: dict[str, str] = {}
        self.other_seen = False
        self.on_new: Callable[[str], None] = lambda label: None

    def __call__(self, tenant: str) -> str:
        label = self.own.get(tenant)
        if label is not None:
            return label
        if len(self.own) < self.farms_max:
            self.own[tenant] = tenant
            self.on_new(tenant)
            return tenant
        if not self.other_seen:
            self.other_seen = True
            self.on_new(OTHER_FARMS)
        return OTHER_FARMS

    def labels(self) -> list[str]:
        """Every label given so far."""
        return [*self.own.values(), *([OTHER_FARMS] if self.other_seen else [])]


class HerdMetrics:
    """The herd per farm: events published by type and farm (counted by
    :class:`fencex.stream.outbox.Outbox`, where every event passes). The gauges of devices out,
    silent and low on battery are :class:`HerdCollector`'s, read at scrape time."""

    def __init__(self, registry: CollectorRegistry, farms_max: int = FARMS_MAX) -> None:
        self.farms = FarmLabels(farms_max)
        self.events = Counter(
            "fencex_herd_events_total",
            f"Events published, by farm (the first {farms_max} farms seen; the rest as {OTHER_FARMS}) and type",
            ["farm", "type"],
            registry=registry,
        )
        self._children: dict[tuple[str, str], Any] = {}
        self.farms.on_new = self._new_farm

    def _new_farm(self, farm: str) -> None:
        for t in EVENT_TYPES:  # every type of a farm from its first event: rates and alerts see zeros
            self._children[(farm, t)] = self.events.labels(farm, t)

    def count(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Add events counted by (tenant, type)."""
        children, farms = self._children, self.farms
        for (tenant, type_), n in counts.items():
            key = (farms(tenant), type_)
            child = children.get(key)
            if child is None:  # a type outside EVENT_TYPES: counted all the same
                child = children[key] = self.events.labels(*key)
            child.inc(n)


class HerdCollector(Collector):
    """Devices out, silent and low on battery per farm, read at scrape time: ``read`` gives
    farm label -> (out, silent, low) (:class:`fencex.stream.gauges.HerdGauges`)."""

    def __init__(self, read: Callable[[], Mapping[str, Sequence[int]]]) -> None:
        self.read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        counts = self.read()
        for i, (_flag, name, help_) in enumerate(HERD_GAUGES):
            g = GaugeMetricFamily(name, help_, labels=["farm"])
            for farm, values in sorted(counts.items()):
                g.add_metric([farm], values[i])
            yield g


class HistoryMetrics:
    """The event-history agent's counters (``fencex.stream.history``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.errors = Counter(
            "fencex_history_errors_total", "Failures writing the event history to Redis", registry=registry
        )
        self.added = Counter("fencex_history_events_total", "Events added to the tenants' histories", registry=registry)
        self.skipped = Counter(
            "fencex_history_skipped_total", "Records on the events topic that are not fencex events", registry=registry
        )


def quarantine_metrics(
    prefix: str, quarantined: int, reloads: int
) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """What a fence follower left out, and how often it reloaded after a gap in the change feed."""
    yield GaugeMetricFamily(
        f"{prefix}_fences_quarantined",
        "Fences left out of the index: unreadable, or their geometry does not build (listed per farm by the API)",
        value=quarantined,
    )
    yield CounterMetricFamily(
        f"{prefix}_fence_feed_reloads",
        "Reloads (of some groups, or of all) after a gap in a change feed",
        value=reloads,
    )


class StoreNodesCollector(Collector):
    """The store's nodes and those down at its last health check (``RedisStore.health``: /readyz and each
    scrape ask it): one of several down is a partial outage, the farms whose slots it serves."""

    def __init__(self, read: Callable[[], tuple[int, int] | None]) -> None:
        self.read = read  # (nodes, nodes down), None before the first check

    def collect(self) -> Iterable[GaugeMetricFamily]:
        got = self.read()
        if got is None:
            return
        yield GaugeMetricFamily("fencex_store_nodes", "Redis masters the store knows (1: one Redis)", value=got[0])
        yield GaugeMetricFamily(
            "fencex_store_nodes_down", "Redis masters that did not answer the last health check", value=got[1]
        )


class StateCollector(Collector):
    """Gauges read from the running worker at scrape time."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        s = self.read()
        yield GaugeMetricFamily(
            "fencex_partitions_assigned", "Partitions of locations assigned to this worker", value=len(s["partitions"])
        )
        lag = GaugeMetricFamily(
            "fencex_consumer_lag_records", "Records behind the high watermark", labels=["partition"]
        )
        for p, n in sorted(s["lag"].items()):
            lag.add_metric([str(p)], n)
        yield lag
        yield GaugeMetricFamily("fencex_fences_loaded", "Fences in this worker's index", value=s["fences"])
        yield GaugeMetricFamily(
            "fencex_index_version", "Change-feed entries applied to the index", value=s["index_version"]
        )
        yield from quarantine_metrics("fencex", s["quarantined"], s["feed_reloads"])
        yield GaugeMetricFamily(
            "fencex_devices_cached", "Device states cached for the assigned partitions", value=s["devices"]
        )
        yield GaugeMetricFamily(
            "fencex_devices_held", "Devices of the assigned partitions, cached or evicted", value=s["held"]
        )
        yield GaugeMetricFamily(
            "fencex_state_cache_bound", "Device states this worker caches at most", value=s["cache_bound"]
        )
        yield GaugeMetricFamily("fencex_worker_up", "1 while this worker's processing loop runs", value=s["running"])
        # The herd: a fence label, so bounded to the HERD_SERIES busiest fences of this worker.
        occ = GaugeMetricFamily(
            "fencex_fence_occupancy_devices",
            f"Devices inside each fence, of this worker's devices (top {HERD_SERIES})",
            labels=["tenant", "fence"],
        )
        for (tenant, fence), n in s["occupancy"]:
            occ.add_metric([tenant, fence], n)
        yield occ
        ev = CounterMetricFamily(
            "fencex_fence_events", f"Events published per fence (top {HERD_SERIES})", labels=["tenant", "fence"]
        )
        for (tenant, fence), n in s["fence_events"]:
            ev.add_metric([tenant, fence], n)
        yield ev

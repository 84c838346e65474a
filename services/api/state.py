"""What the API holds while it runs: the store, its own fence index, a producer, metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from fencex import heap
from fencex.errors import Unavailable
from fencex.follower import FenceFollower
from fencex.kafka.producer import Producer
from fencex.metrics import StoreNodesCollector, process_collectors, quarantine_metrics
from fencex.retrying import retrying
from fencex.store.connection import StoreHealth
from fencex.store.redis import RedisStore
from services.api.auth import RateLimiter
from services.api.hub import EventHub
from services.api.settings import Settings

log = logging.getLogger("fencex.api")
# How the API's gauges add up when it runs as several processes (FENCEX_WORKERS > 1; fencex.shared_metrics)
GAUGE_MODES = {
    "fencex_sse_clients": "livesum",
    "fencex_api_up": "livemin",  # 1 only while every process is ready
    "fencex_api_fences_loaded": "livemin",  # the process furthest behind
    "fencex_api_index_version": "livemin",
    "fencex_api_fences_quarantined": "livemax",
    "fencex_store_nodes": "livemax",
    "fencex_store_nodes_down": "livemax",  # the process that saw the most down
}
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class PullMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        process_collectors(registry)
        self.requests = Counter(
            "fencex_http_requests_total",
            "HTTP requests, by route, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "fencex_http_request_duration_seconds",
            "HTTP request latency, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queries = Counter(
            "fencex_queries_total",
            "Pull queries answered (a batch counts each point), by kind",
            ["kind"],
            registry=registry,
        )
        self.store_errors = Counter("fencex_api_store_errors_total", "Redis errors seen by the API", registry=registry)
        self.fixes_ingested = Counter(
            "fencex_api_fixes_ingested_total", "Fixes accepted over HTTP and produced", registry=registry
        )
        self.fixes_rejected = Counter(
            "fencex_api_fixes_rejected_total", "Fixes refused over HTTP, by reason", ["reason"], registry=registry
        )
        self.corrupt_records = Counter(
            "fencex_api_corrupt_records_total",
            "Stored records that did not read (answered 500 problem+json), by kind",
            ["kind"],
            registry=registry,
        )
        for kind in ("point", "batch_point", "devices", "fence_devices", "occupancy", "device", "events", "track"):
            self.queries.labels(kind)
        self.corrupt_records.labels("track")


@dataclass
class ApiState:
    settings: Settings
    store: RedisStore
    follower: FenceFollower
    producer: Producer
    registry: CollectorRegistry
    metrics: PullMetrics
    sse_clients: int = 0
    ready: bool = False
    broker_ok: bool = False
    store_health: StoreHealth | None = None  # the last health check's (/readyz, /metrics)
    _keys: dict[str, tuple[str | None, float]] = field(default_factory=dict)
    admin_key: bytes = b""
    limiter: RateLimiter = field(init=False)
    hub: EventHub = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.admin_key = s.admin_key.get_secret_value().encode()
        self.limiter = RateLimiter(s.rate_limit_per_s, s.rate_limit_burst)
        self.hub = EventHub(
            self.store, s.sse_max_per_tenant, s.sse_max_per_process, on_error=lambda e: self.metrics.store_errors.inc()
        )

    def forget_keys(self) -> None:
        """Drop this process's key cache (after a key is revoked or rotated here)."""
        self._keys.clear()

    async def tenant_for_key(self, api_key: str) -> str | None:
        hit = self._keys.get(api_key)
        now = time.monotonic()
        if hit is not None and now - hit[1] < self.settings.key_cache_s:
            return hit[0]
        tenant = await self.store.tenant_for_key(api_key)
        if len(self._keys) > 100_000:
            self._keys.clear()
        self._keys[api_key] = (tenant, now)
        return tenant

    async def start(self) -> None:
        """Connect and load the fences, waiting (and saying so in the log) while Redis is down."""
        async for attempt in retrying(f"waiting for redis at {self.settings.redis_url}", (Unavailable,), logger=log):
            with attempt:
                try:
                    await self.store.connect()
                    await self.follower.load()
                except Unavailable:
                    await self.store.close()
                    raise
        heap.settle()  # fences and the index are loaded: out of the collector's sight
        self.ready = True
        log.info("api ready: %d fences in the index", len(self.follower.index))

    async def check_store(self) -> StoreHealth:
        """Which of the store's nodes answer (kept for the metrics)."""
        self.store_health = await self.store.health()
        return self.store_health

    async def connect_broker(self) -> None:
        async for attempt in retrying(f"waiting for the broker at {self.settings.kafka_bootstrap}", logger=log):
            with attempt:
                await self.producer.start()
        self.broker_ok = True


class ApiCollector(Collector):
    def __init__(self, state: ApiState) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily(
            "fencex_sse_clients", "Server-sent-event clients connected", value=self.state.sse_clients
        )
        yield GaugeMetricFamily(
            "fencex_api_fences_loaded", "Fences in the API's index", value=len(self.state.follower.index)
        )
        yield GaugeMetricFamily(
            "fencex_api_index_version",
            "Change-feed entries applied to the API's index",
            value=self.state.follower.applied,
        )
        yield GaugeMetricFamily("fencex_api_up", "1 while the API is ready", value=int(self.state.ready))
        yield from quarantine_metrics("fencex_api", len(self.state.follower.quarantined), self.state.follower.reloads)
        health = self.state.store_health
        yield from StoreNodesCollector(lambda: None if health is None else (health.nodes, len(health.down))).collect()

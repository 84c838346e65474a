"""The processor: a Faust app. Wiring only; the logic lives in ``fencex``.

- the hot path (fixes -> events) is :class:`fencex.stream.loop.Processor`, run as a
  mode service inside the Faust worker: it reads whole batches with aiokafka,
  because Faust's per-event stream measured about 7,000 records/s here;
- a Faust agent (:mod:`fencex.stream.history`) follows ``fence-events`` and keeps each
  tenant's capped event history in Redis, for the API's ``/events`` and SSE;
- the Faust web server answers ``/healthz``, ``/readyz`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, disable_created_metrics, generate_latest

from fencex import heap
from fencex.follower import FenceFollower
from fencex.herd import HerdRules
from fencex.kafka.consumer import BatchConsumer
from fencex.kafka.producer import Producer
from fencex.metrics import HerdCollector, HistoryMetrics, PushMetrics, StateCollector, StoreNodesCollector
from fencex.retrying import retrying
from fencex.store.connection import StoreHealth
from fencex.store.redis import RedisStore
from fencex.stream.gauges import HerdGauges
from fencex.stream.history import HistoryWriter, history_agent
from fencex.stream.loop import Processor
from services.processor.settings import Settings
from services.readiness import readiness

log = logging.getLogger(__name__)


class PushService(Service):
    """Runs the Processor's loop and change-feed watcher inside the Faust worker."""

    def __init__(self, processor: Processor, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.processor = processor
        self.settings = settings
        self.ready = False
        self.loaded = asyncio.Event()

    async def on_start(self) -> None:
        # wait for Redis and the broker, saying so, instead of crashing
        async for attempt in retrying("waiting for Redis and the broker", logger=log):
            with attempt:
                await self.processor.start()
        heap.settle()  # fences and device states are loaded: out of the collector's sight
        self.ready = True
        self.loaded.set()

    @Service.task
    async def _process(self) -> None:
        await self.loaded.wait()
        await self.processor.run()

    @Service.task
    async def _follow_changes(self) -> None:
        await self.loaded.wait()
        await self.processor.watch_changes()

    async def on_stop(self) -> None:
        self.ready = False
        await self.processor.stop()


def create_app(settings: Settings) -> tuple[faust.App, PushService]:
    """The Faust app and the push service to run beside it in one worker."""
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    metrics = PushMetrics(registry, settings.metrics_farms_max)
    topics = settings.topics
    store = RedisStore(settings.redis_url, settings.key_prefix, settings.history_maxlen, settings.store_groups)
    consumer = BatchConsumer(
        settings.kafka_bootstrap,
        topics.locations,
        settings.group_id,
        session_timeout_ms=int(settings.session_timeout_s * 1000),
        heartbeat_interval_ms=int(settings.heartbeat_s * 1000),
    )
    follower = FenceFollower(store, on_error=lambda e: metrics.store_errors.inc())
    producer = Producer(settings.kafka_bootstrap, idempotence=settings.producer_idempotence)
    defaults = settings.default_rules

    def rules_of(tenant: str) -> HerdRules:  # the farm's stored herd settings, else the service's defaults
        return follower.rules.get(tenant, defaults)

    processor = Processor(store, consumer, producer, follower, metrics, topics, settings.loop, rules_of=rules_of)
    herd_gauges = HerdGauges(
        lambda: processor.states, metrics.herd.farms, processor.cache.farm_flags, processor.cache.fence_occupancy
    )
    # the walks over the held states are made by the /metrics page, in chunks (herd_gauges.refresh)
    registry.register(StateCollector(lambda: processor.snapshot(herd_gauges.occupancy())))
    registry.register(HerdCollector(herd_gauges.read))

    app = faust.App(
        settings.history_group,
        broker=f"kafka://{settings.kafka_bootstrap}",
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        datadir=settings.datadir,
        topic_disable_leader=True,
        topic_allow_declare=False,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_s,
        consumer_auto_offset_reset="earliest",
        value_serializer="raw",
        key_serializer="raw",
    )
    push = PushService(processor, settings)
    history_store = RedisStore(settings.redis_url, settings.key_prefix, settings.history_maxlen, settings.store_groups)
    history_agent(app, topics.events, HistoryWriter(history_store, HistoryMetrics(registry)))

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    health: list[StoreHealth] = []  # the last health check's (/readyz, /metrics)
    registry.register(StoreNodesCollector(lambda: (health[-1].nodes, len(health[-1].down)) if health else None))

    async def check_store() -> StoreHealth:
        health[:] = [await store.health()]
        return health[0]

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        # ready while it can process for any farm: one Redis Cluster node down fails the saves of the partitions
        # whose slots it serves (their fixes wait in Kafka), not the others' (deploy/README.md, Redis Cluster)
        got = await check_store()
        body, ok = readiness({"processing": push.ready and processor.running}, got, len(follower.quarantined))
        return web.json(body, status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        await check_store()  # fencex_store_nodes_down as of this scrape
        await herd_gauges.refresh()  # the walk over the states, in chunks: the loop runs between them
        return web.bytes(generate_latest(registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    return app, push

"""The processor: a Faust app. Wiring only; the logic lives in ``fencex``.

- the hot path (fixes -> events) is :class:`fencex.stream.processor.Processor`, run as a
  mode service inside the Faust worker: it reads whole batches with aiokafka,
  because Faust's per-event stream measured about 7,000 records/s here;
- a Faust agent follows ``fence-events`` and keeps each tenant's capped event
  history in Redis (de-duplicated by ``event_id``), for the API's ``/events`` and SSE;
- the Faust web server answers ``/healthz``, ``/readyz`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging

import faust
import orjson
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, disable_created_metrics, generate_latest

from fencex import heap
from fencex.errors import Unavailable
from fencex.kafka.consumer import BatchConsumer
from fencex.kafka.producer import Producer
from fencex.metrics import PushMetrics, StateCollector
from fencex.store.redis import RedisStore
from fencex.stream.processor import Processor, Topics
from services.processor.settings import Settings

log = logging.getLogger("fencex.processor")


class PushService(Service):
    """Runs the Processor's loop and change-feed watcher inside the Faust worker."""

    def __init__(self, processor: Processor, settings: Settings, **kwargs) -> None:
        super().__init__(**kwargs)
        self.processor = processor
        self.settings = settings
        self.ready = False
        self.loaded = asyncio.Event()

    async def on_start(self) -> None:
        delay = 1.0
        while True:  # wait for Redis and the broker, saying so, instead of crashing
            try:
                await self.processor.start()
                break
            except Unavailable as exc:
                log.warning("waiting for servers: %s (retrying in %.0f s)", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
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


def topics_of(settings: Settings) -> dict[str, int]:
    return {
        settings.locations_topic: settings.partitions,
        settings.events_topic: settings.partitions,
        settings.dlq_topic: 1,
    }


def create_app(settings: Settings) -> tuple[faust.App, PushService]:
    """The Faust app and the push service to run beside it in one worker."""
    disable_created_metrics()
    registry = CollectorRegistry()
    metrics = PushMetrics(registry)
    topics = Topics(settings.locations_topic, settings.events_topic, settings.dlq_topic)
    store = RedisStore(settings.redis_url, settings.key_prefix, settings.history_maxlen)
    consumer = BatchConsumer(
        settings.kafka_bootstrap,
        settings.locations_topic,
        settings.group_id,
        session_timeout_ms=int(settings.session_timeout_s * 1000),
        heartbeat_interval_ms=int(settings.heartbeat_s * 1000),
    )
    processor = Processor(
        store,
        consumer,
        Producer(settings.kafka_bootstrap),
        metrics,
        topics,
        max_records=settings.max_records,
        default_tenant=settings.default_tenant,
        flush_interval=settings.flush_interval_s,
    )
    registry.register(StateCollector(processor.snapshot))
    history_errors = Counter(
        "fencex_history_errors_total", "Failures writing the event history to Redis", registry=registry
    )
    history_added = Counter("fencex_history_events_total", "Events added to the tenants' histories", registry=registry)

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
    history_store = RedisStore(settings.redis_url, settings.key_prefix, settings.history_maxlen)
    events_topic = app.topic(settings.events_topic, value_serializer="raw", key_serializer="raw")

    @app.agent(events_topic)
    async def history(stream):
        async for batch in stream.take(1000, within=0.2):
            events = []
            for raw in batch:
                try:
                    events.append(orjson.loads(raw))
                except orjson.JSONDecodeError:
                    continue  # not ours; the processor only publishes JSON
            delay = 0.5
            while True:  # the history is at least once: retry until Redis takes it
                try:
                    if history_store._redis is None:
                        await history_store.connect()
                    history_added.inc(await history_store.append_events(events))
                    break
                except Unavailable as exc:
                    history_errors.inc()
                    log.warning("event history: %s (retrying in %.1f s)", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)

    @app.page("/healthz")
    async def healthz(web, request):
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web, request):
        checks = {"processing": push.ready and processor.running}
        try:
            checks["redis"] = await processor.store.ping()
        except Unavailable:
            checks["redis"] = False
        ok = all(checks.values())
        return web.json({"status": "ready" if ok else "not ready", "checks": checks}, status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics_page(web, request):
        return web.bytes(generate_latest(registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    return app, push

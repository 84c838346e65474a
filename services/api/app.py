"""The query API: a FastAPI app. Wiring only; answers come from ``fencex`` and the store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, disable_created_metrics, generate_latest, values

from fencex.follower import FenceFollower
from fencex.kafka.producer import Producer
from fencex.shared_metrics import SharedMetrics
from fencex.store.redis import RedisStore
from services.api.fastpath import ApiEdge, flat_routes, role_of
from services.api.openapi import install as install_openapi
from services.api.problem import install as install_problems
from services.api.routers import (
    admin,
    devices,
    events,
    fences,
    grazing,
    herd,
    keys,
    locations,
    mobs,
    query,
    rotations,
    tracks,
)
from services.api.schema import FixIn
from services.api.settings import Settings
from services.api.state import GAUGE_MODES, ApiCollector, ApiState, PullMetrics
from services.api.webapp import web_app
from services.readiness import readiness

log = logging.getLogger("fencex.api")

DESCRIPTION = """fencex answers questions about fences and animals.

Every request carries `Authorization: Bearer <api key>`; a key belongs to one farm (tenant), and a
farm sees only its own fences, devices and events. Errors are RFC 9457 `application/problem+json`.
Fences are GeoJSON (RFC 7946): longitude first. Writes return the fence's version as an `ETag`;
send it back as `If-Match` and a write that would overwrite someone else's change gets 412.
"""


def create_app(settings: Settings) -> ApiEdge:
    """The ASGI app: FastAPI behind the edge layer (metrics, body limit, the direct point query)."""
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    metrics = PullMetrics(registry)
    store = RedisStore(settings.redis_url, settings.key_prefix, groups=settings.store_groups)
    state = ApiState(
        settings,
        store,
        # the API reads no device registration (a device's farm is looked up in Redis when asked): not held
        FenceFollower(store, on_error=lambda e: metrics.store_errors.inc(), registrations=False),
        Producer(settings.kafka_bootstrap),
        registry,
        metrics,
    )
    registry.register(ApiCollector(state))
    shared = _shared(settings, registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(_start(state)), asyncio.create_task(state.hub.run())]
        if shared is not None:
            tasks.append(asyncio.create_task(shared.run(settings.metrics_flush_s)))
        yield
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            if shared is not None:
                shared.close()
        finally:  # the producer's fixes are sent whatever became of the metrics files
            if state.broker_ok:
                await state.producer.stop()
            await store.close()

    app = FastAPI(
        title="fencex",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=lambda route: route.name,  # operationIds: the handlers' names
        openapi_tags=[
            {"name": "fences", "description": "pastures drawn by farmers"},
            {"name": "queries", "description": "point-in-fence and devices-in-area"},
            {"name": "devices"},
            {"name": "mobs", "description": "my collars in herds, each with its pastures and exclusion zones"},
            {"name": "herd", "description": "my farm's herd settings, and the collars out, silent or low on battery"},
            {"name": "grazing", "description": "animal-time inside each fence, per day and per mob"},
            {"name": "events"},
            {"name": "ingest"},
            {"name": "keys", "description": "my farm's API keys"},
            {"name": "admin", "description": "operator only: the admin key"},
            {"name": "operations"},
        ],
    )
    app.state.fencex = state
    install_problems(app)
    routers = (fences, rotations, mobs, herd, grazing, query, devices, tracks, events, locations, keys, admin)
    for r in routers:
        app.include_router(r.router)

    @app.get(
        "/healthz",
        tags=["operations"],
        summary="The process is alive",
        responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
    )
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="Redis and the broker answer (for some farms at least: one Redis Cluster node down is 'degraded')",
        responses={
            200: {
                "content": {
                    "application/json": {
                        "example": {
                            "status": "degraded",
                            "checks": {"redis": True, "broker": True},
                            "redis": {"nodes": 3, "nodes_down": ["10.0.0.7:6379"]},
                            "quarantined_fences": 0,
                        }
                    }
                }
            },
            503: {"description": "not ready: no farm can be served"},
        },
    )
    async def readyz() -> Response:
        # ready while any farm can be served (services/readiness.py; deploy/README.md, Redis Cluster)
        health = await state.check_store() if state.ready else None
        body, ok = readiness({"broker": state.broker_ok}, health, len(state.follower.quarantined))
        return Response(
            orjson.dumps(body),
            status_code=200 if ok else 503,
            media_type="application/json",
            headers=None if ok else {"Retry-After": "2"},
        )

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        responses={200: {"content": {"text/plain": {"example": 'fencex_queries_total{kind="point"} 42.0\n'}}}},
    )
    async def metrics_page() -> Response:
        if state.ready:
            await state.check_store()  # fencex_store_nodes_down as of this scrape
        body = generate_latest(registry) if shared is None else shared.scrape()  # every process's, if several
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    def role(method: str, path: str) -> str | None:
        for r in flat_routes(app.routes):
            if getattr(r, "path_format", None) == path and method in (getattr(r, "methods", None) or ()):
                return role_of(r)
        return None

    install_openapi(app, role, (FixIn,), {"Event": events.EVENT_COMPONENT})
    app.mount("/app", web_app(settings), name="app")  # the farmers' web app: static files, no key needed
    return ApiEdge(app, state)


def _shared(settings: Settings, registry: CollectorRegistry) -> SharedMetrics | None:
    """With several processes, this one's part of the metrics they share (see fencex.shared_metrics)."""
    if settings.workers <= 1:
        return None
    if not settings.metrics_dir:
        raise RuntimeError(
            "FENCEX_WORKERS is over 1 but FENCEX_METRICS_DIR is not set: start the API with python -m services.api"
        )
    if values.ValueClass._multiprocess:
        raise RuntimeError(
            "PROMETHEUS_MULTIPROC_DIR is set: unset it; the API's processes share their metrics in FENCEX_METRICS_DIR"
        )
    return SharedMetrics(registry, settings.metrics_dir, GAUGE_MODES)


async def _start(state: ApiState) -> None:
    await state.start()
    follow = asyncio.create_task(state.follower.follow())
    try:
        await state.connect_broker()
        await follow
    finally:
        follow.cancel()

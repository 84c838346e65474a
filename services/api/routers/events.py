"""What happened: the event history, and events live as Server-Sent Events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from fencex.errors import Unavailable
from services.api.deps import State, Store, Tenant
from services.api.problem import Problem

router = APIRouter(prefix="/events", tags=["events"])
EXAMPLE_EVENT = {
    "event_id": "5f0c3a0e2b1d4f7a9c8e6d5b4a392817",
    "type": "enter",
    "tenant": "hillside-farm",
    "device_id": "collar-7",
    "fence_id": "north-paddock",
    "fence_version": 3,
    "ts": "2026-05-28T20:26:41.000Z",
    "lon": 17.605,
    "lat": 59.805,
    "detected_at": "2026-05-28T20:26:41.052Z",
}


def _matches(e: dict[str, Any], device: str | None, fence: str | None, since: str | None) -> bool:
    return (
        (device is None or e["device_id"] == device)
        and (fence is None or e["fence_id"] == fence)
        and (since is None or e["ts"] >= since)
    )


def _since(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise Problem(422, f"since {value!r} is not RFC 3339") from None
    if dt.tzinfo is None:
        raise Problem(422, "since needs a time zone, e.g. 2026-05-28T20:00:00Z")
    from fencex.event import rfc3339

    return rfc3339(dt.timestamp() * 1000)


@router.get(
    "",
    summary="Recent events of my farm (a capped history), oldest first",
    responses={200: {"content": {"application/json": {"example": [EXAMPLE_EVENT]}}}},
)
async def history(
    tenant: Tenant,
    store: Store,
    state: State,
    device: Annotated[str | None, Query(description="only this device")] = None,
    fence: Annotated[str | None, Query(description="only this fence")] = None,
    since: Annotated[str | None, Query(description="RFC 3339: only events of fixes at or after it")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[dict[str, Any]]:
    after = _since(since)
    out: list[dict[str, Any]] = []
    cursor = "-"
    while len(out) < limit:
        chunk = await store.history(tenant, cursor, 2000)
        if not chunk:
            break
        out.extend(e for _, e in chunk if _matches(e, device, fence, after))
        cursor = chunk[-1][0]
    state.metrics.queries.labels("events").inc()
    return out[-limit:] if len(out) > limit else out


@router.get(
    "/stream",
    summary="My farm's events live, as Server-Sent Events",
    description="Each event's SSE id is its place in the history: reconnect with the Last-Event-ID "
    "header (browsers do it for you) to get what you missed while away.",
    responses={
        200: {
            "content": {
                "text/event-stream": {
                    "example": f"id: 1780000000000-0\nevent: enter\ndata: {orjson.dumps(EXAMPLE_EVENT).decode()}\n\n"
                }
            }
        }
    },
)
async def stream(
    request: Request,
    tenant: Tenant,
    store: Store,
    state: State,
    device: Annotated[str | None, Query()] = None,
    fence: Annotated[str | None, Query()] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    start = last_event_id or "$"
    if start != "$" and not all(p.isdigit() for p in start.split("-", 1)):
        raise Problem(422, "Last-Event-ID must be an id this stream sent")

    async def events() -> AsyncIterator[bytes]:
        nonlocal start
        state.sse_clients += 1
        try:
            if start == "$":
                start = await store.last_event_id(tenant)
            yield b": connected\n\n"
            while not await request.is_disconnected():
                try:
                    got = await store.follow(tenant, start, block_ms=5000)
                except Unavailable:
                    yield b": redis unavailable, retrying\n\n"
                    await asyncio.sleep(1.0)
                    continue
                if not got:
                    yield b": keep-alive\n\n"
                    continue
                for entry_id, e in got:
                    start = entry_id
                    if _matches(e, device, fence, None):
                        yield b"id: %s\nevent: %s\ndata: %s\n\n" % (
                            entry_id.encode(),
                            e["type"].encode(),
                            orjson.dumps(e),
                        )
        finally:
            state.sse_clients -= 1

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )

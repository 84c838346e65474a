"""What happened: the event history, and events live as Server-Sent Events."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from pydantic import AwareDatetime, BeforeValidator

from fencex.errors import Unavailable
from fencex.event import EVENT_SCHEMA, RETRACT, rfc3339
from services.api.deps import State, Store, Tenant
from services.api.hub import entry_key

router = APIRouter(prefix="/events", tags=["events"])
LAST_EVENT_ID = r"^[0-9]{1,19}(-[0-9]{1,19})?$"  # within Redis's 64-bit stream ids
KEEP_ALIVE_S = 15.0
RFC3339_START = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}")
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
# a collar out of coverage from 02:00 uploads at 02:41: its exit really came at 02:10, not at 02:40
EXAMPLE_RETRACT = {
    "event_id": "9d3b1f0a7c6e4b2a8f5d1e0c3b7a6f42",
    "type": "retract",
    "tenant": "hillside-farm",
    "device_id": "collar-7",
    "fence_id": "",
    "fence_version": 0,
    "ts": "2026-05-29T02:40:00.000Z",
    "lon": 17.612,
    "lat": 59.807,
    "detected_at": "2026-05-29T02:41:03.120Z",
    "retracts": "3e8a5c1d9b0f4e7a2c6d8b1f0e5a9c73",
}
EXAMPLE_LATE = {
    **EXAMPLE_EVENT,
    "event_id": "c41f0b8e2d7a4c19b6e3a5d0f8c2e617",
    "type": "exit",
    "ts": "2026-05-29T02:10:00.000Z",
    "lon": 17.611,
    "lat": 59.806,
    "detected_at": "2026-05-29T02:41:03.120Z",
    "late": True,
}


# the OpenAPI document's Event: the published JSON Schema (schema/fence-event.schema.json), one source
EVENT_COMPONENT: dict[str, Any] = {k: v for k, v in EVENT_SCHEMA.items() if not k.startswith("$")}
EVENT_REF = {"$ref": "#/components/schemas/Event"}
FENCE_FILTER = (
    "only this fence's events; retracts pass too (a retract names the event it withdraws, not a fence: "
    "drop one whose retracts you do not hold)"
)
RETRACTS = (
    "Late fixes (a collar that was out of coverage uploads what it recorded) bring events marked "
    "`late: true`, the events in-order arrival would have given, and `retract` events withdrawing "
    "(by `retracts`, an event_id) events published that in-order arrival would not have given: "
    "a retract comes before its replacement."
)


def _matches(e: dict[str, Any], device: str | None, fence: str | None, since: str | None) -> bool:
    """Whether an event passes the filters. A retract carries no fence (``fence_id`` ""): it passes a
    fence filter, so a client watching one fence still hears that an exit it holds was withdrawn."""
    return (
        (device is None or e["device_id"] == device)
        and (fence is None or e["fence_id"] == fence or e["type"] == RETRACT)
        and (since is None or e["ts"] >= since)
    )


def rfc3339_only(value: Any) -> Any:
    """pydantic would read a number as unix seconds; ``since`` is RFC 3339 text only."""
    if isinstance(value, str) and not RFC3339_START.match(value):
        raise ValueError("since is RFC 3339, e.g. 2026-05-28T20:00:00Z")
    return value


def _since(value: datetime | None) -> str | None:
    return None if value is None else rfc3339(value.timestamp() * 1000)


@router.get(
    "",
    response_model=None,
    summary="Recent events of my farm (a capped history), oldest first",
    description=RETRACTS,
    responses={
        200: {
            "content": {
                "application/json": {
                    "schema": {"type": "array", "items": EVENT_REF},
                    "example": [EXAMPLE_EVENT, EXAMPLE_RETRACT, EXAMPLE_LATE],
                }
            }
        }
    },
)
async def history(
    tenant: Tenant,
    store: Store,
    state: State,
    device: Annotated[str | None, Query(description="only this device")] = None,
    fence: Annotated[str | None, Query(description=FENCE_FILTER)] = None,
    since: Annotated[
        AwareDatetime,
        BeforeValidator(rfc3339_only),
        Query(description="RFC 3339 with a time zone: only events of fixes at or after it"),
    ] = None,  # type: ignore[assignment]
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[dict[str, Any]]:
    after = _since(since)
    out: list[dict[str, Any]] = []
    cursor = "+"
    while len(out) < limit:  # backwards from the newest, until `limit` match or the history ends
        chunk = await store.history_back(tenant, cursor, 2000)
        out.extend(e for _, e in chunk if _matches(e, device, fence, after))
        if len(chunk) < 2000:
            break
        cursor = chunk[-1][0]
    state.metrics.queries.labels("events").inc()
    return out[:limit][::-1]  # oldest first


@router.get(
    "/stream",
    summary="My farm's events live, as Server-Sent Events",
    description="Each event's SSE id is its place in the history: reconnect with the Last-Event-ID "
    "header (browsers do it for you) to get what you missed while away. Each frame's `event` is the "
    "event's type (listen for `retract` too) and its `data` an Event (the schema of GET /events). " + RETRACTS,
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
    tenant: Tenant,
    store: Store,
    state: State,
    device: Annotated[str | None, Query(description="only this device")] = None,
    fence: Annotated[str | None, Query(description=FENCE_FILTER)] = None,
    last_event_id: Annotated[
        str,  # noqa: RUF013 - absent or an id, never null: the OpenAPI document says so
        Header(
            description="the id of the last event you received: the stream resumes after it",
            pattern=LAST_EVENT_ID,
            max_length=39,
        ),
    ] = None,  # type: ignore[assignment]
) -> StreamingResponse:
    hub = state.hub
    hub.check(tenant)  # 429 before touching Redis
    newest = await store.last_event_id(tenant)  # and a 503 now while Redis is down, not a silent stream
    start = last_event_id or newest
    sub = hub.subscribe(tenant, newest)  # the reader follows the tail; this client catches up from its own start
    state.sse_clients += 1

    def frame(entry_id: str, e: dict[str, Any]) -> bytes:
        return b"id: %s\nevent: %s\ndata: %s\n\n" % (entry_id.encode(), e["type"].encode(), orjson.dumps(e))

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b": connected\n\n"
            sent = entry_key(start)
            cursor = start
            while True:  # catch up from the history: what came after start, before the reader had us
                try:
                    chunk = await store.history(tenant, cursor, 1000)
                except Unavailable:
                    break  # the reader hands us the rest when Redis is back
                for entry_id, e in chunk:
                    sent = max(sent, entry_key(entry_id))
                    if _matches(e, device, fence, None):
                        yield frame(entry_id, e)
                if len(chunk) < 1000:
                    break
                cursor = chunk[-1][0]
            while not sub.overflowed:
                try:
                    entry_id, e = await asyncio.wait_for(sub.queue.get(), KEEP_ALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                key = entry_key(entry_id)
                if key <= sent:
                    continue
                sent = key
                if _matches(e, device, fence, None):
                    yield frame(entry_id, e)
        finally:
            hub.unsubscribe(sub)
            state.sse_clients -= 1

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )

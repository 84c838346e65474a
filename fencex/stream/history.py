"""The event history: a Faust agent that follows ``fence-events`` and keeps each tenant's
capped history in Redis (de-duplicated by ``event_id``), for the API's ``/events`` and SSE.

It stays a real consumer of the events topic (its own consumer group), not a side effect of
the worker's checkpoint: the history then holds exactly what was published, whichever worker
(or replay) published it, and it can be scaled, paused or rebuilt from the topic on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable
from typing import Any, Protocol

import faust
import orjson

from fencex.metrics import HistoryMetrics
from fencex.retrying import retrying

log = logging.getLogger(__name__)


class HistoryStore(Protocol):
    def connect(self) -> Awaitable[None]: ...
    def append_events(self, events: Iterable[dict[str, Any]]) -> Awaitable[int]: ...


class HistoryWriter:
    """Decodes a batch of event records and adds them to the histories, at least once."""

    def __init__(self, store: HistoryStore, metrics: HistoryMetrics) -> None:
        self.store = store
        self.metrics = metrics
        self._connected = False

    async def write(self, raws: Iterable[bytes]) -> int:
        events = []
        for raw in raws:
            try:
                event = orjson.loads(raw)
            except orjson.JSONDecodeError:
                event = None
            if (
                isinstance(event, dict)
                and isinstance(event.get("event_id"), str)
                and isinstance(event.get("tenant"), str)
            ):
                events.append(event)
            else:
                self.metrics.skipped.inc()  # not ours: the processor only publishes its events
        added = 0
        async for attempt in retrying(
            "writing the event history", on_error=lambda e: self.metrics.errors.inc(), logger=log
        ):
            with attempt:
                if not self._connected:
                    await self.store.connect()
                    self._connected = True
                added = await self.store.append_events(events)
        self.metrics.added.inc(added)
        return added


def history_agent(app: faust.App, topic: str, writer: HistoryWriter, take: int = 1000, within: float = 0.2) -> Any:
    """Register the agent on ``app``: batches of up to ``take`` events, or what ``within`` seconds bring."""
    events_topic = app.topic(topic, value_serializer="raw", key_serializer="raw")

    async def history(stream: faust.StreamT[bytes]) -> None:
        async for batch in stream.take(take, within=within):
            await writer.write(batch)

    return app.agent(events_topic, name="fencex-history")(history)

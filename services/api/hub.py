"""Live events for Server-Sent Events: one reader per API process fans each event out to that
process's clients, however many there are (one blocking Redis read, not one per client).

The reader reads the histories of the tenants that have clients. A client registers *before*
it catches up from the history (its Last-Event-ID), then takes what the reader hands it,
skipping what it has sent already: nothing falls between the two. A client that does not keep
up (its queue full) is ended; its browser reconnects with Last-Event-ID and catches up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from fencex.retrying import retrying
from fencex.store.redis import RedisStore
from services.api.problem import Problem

log = logging.getLogger("fencex.api")
Entry = tuple[str, dict[str, Any]]


def entry_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Subscriber:
    def __init__(self, tenant: str, queue_size: int) -> None:
        self.tenant = tenant
        self.queue: asyncio.Queue[Entry] = asyncio.Queue(queue_size)
        self.overflowed = False

    def put(self, entry: Entry) -> None:
        try:
            self.queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.overflowed = True


class EventHub:
    def __init__(
        self,
        store: RedisStore,
        max_per_tenant: int,
        max_total: int,
        block_ms: int = 1000,
        queue_size: int = 1000,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.store = store
        self.max_per_tenant = max_per_tenant
        self.max_total = max_total
        self.block_ms = block_ms
        self.queue_size = queue_size
        self.on_error = on_error
        self._subs: dict[str, set[Subscriber]] = {}
        self._after: dict[str, str] = {}  # tenant -> the last id the reader handed out
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def check(self, tenant: str) -> None:
        """429 (with Retry-After) when the farm or this process has as many streams as allowed."""
        if len(self) >= self.max_total:
            raise Problem(
                429,
                f"this API process serves {len(self)} live streams, its limit; try again shortly",
                headers={"Retry-After": "5"},
                limit="sse_max_per_process",
            )
        held = len(self._subs.get(tenant, ()))
        if held >= self.max_per_tenant:
            raise Problem(
                429,
                f"your farm has {held} live streams open here, its limit; close one",
                headers={"Retry-After": "5"},
                limit="sse_max_per_tenant",
            )

    def subscribe(self, tenant: str, after: str) -> Subscriber:
        self.check(tenant)
        sub = Subscriber(tenant, self.queue_size)
        subs = self._subs.setdefault(tenant, set())
        if not subs:
            self._after[tenant] = after
        subs.add(sub)
        self._wake.set()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._subs.get(sub.tenant)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[sub.tenant]
            self._after.pop(sub.tenant, None)

    async def run(self) -> None:
        """The reader: runs for the life of the process, idle while no one listens."""
        while True:
            if not self._subs:
                self._wake.clear()
                await self._wake.wait()
                continue
            async for attempt in retrying("live events", on_error=self.on_error, max_delay=2.0, logger=log):
                with attempt:
                    got = await self.store.follow(dict(self._after), block_ms=self.block_ms)
            for tenant, entry_id, event in got:
                if tenant in self._after:
                    self._after[tenant] = entry_id
                for sub in self._subs.get(tenant, ()):
                    sub.put((entry_id, event))

"""The live-event hub without Redis: one reader fans each tenant's events out to that tenant's
clients only, streams are capped per farm and per process, and a slow client is let go."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fencex.errors import StoreUnavailable
from services.api.hub import EventHub, entry_key
from services.api.problem import Problem


class History:
    """The event streams of a store: one read hands out everything after the given ids."""

    def __init__(self) -> None:
        self.entries: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self.reads: list[dict[str, str]] = []
        self.down = False

    def add(self, tenant: str, entry_id: str) -> None:
        self.entries.setdefault(tenant, []).append((entry_id, {"tenant": tenant, "id": entry_id}))

    async def follow(self, after: dict[str, str], block_ms: int = 0) -> list[tuple[str, str, dict[str, Any]]]:
        self.reads.append(dict(after))
        await asyncio.sleep(0.001)
        if self.down:
            raise StoreUnavailable("redis does not answer")
        return [
            (t, i, e) for t, pos in after.items() for i, e in self.entries.get(t, []) if entry_key(i) > entry_key(pos)
        ]


async def drain(queue: asyncio.Queue) -> list[str]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait()[0])
    return out


def test_one_reader_fans_out_per_tenant():
    async def run() -> None:
        store = History()
        hub = EventHub(store, max_per_tenant=5, max_total=10)  # type: ignore[arg-type]
        reader = asyncio.create_task(hub.run())
        a1, a2 = hub.subscribe("a", "0-0"), hub.subscribe("a", "0-0")
        b = hub.subscribe("b", "0-0")
        store.add("a", "1-0"), store.add("b", "2-0"), store.add("a", "3-0")
        await asyncio.sleep(0.05)
        assert await drain(a1.queue) == ["1-0", "3-0"]
        assert await drain(a2.queue) == ["1-0", "3-0"]
        assert await drain(b.queue) == ["2-0"]
        assert all(set(r) <= {"a", "b"} for r in store.reads)  # one read covers every tenant
        hub.unsubscribe(b)
        store.reads.clear()
        await asyncio.sleep(0.02)
        assert store.reads and all(set(r) == {"a"} for r in store.reads)  # b is no longer read
        hub.unsubscribe(a1), hub.unsubscribe(a2)
        store.reads.clear()
        await asyncio.sleep(0.02)
        assert store.reads == []  # nobody listens: no reads
        reader.cancel()

    asyncio.run(run())


def test_streams_are_capped_per_farm_and_per_process():
    hub = EventHub(History(), max_per_tenant=2, max_total=3)  # type: ignore[arg-type]
    hub.subscribe("a", "0-0"), hub.subscribe("a", "0-0")
    with pytest.raises(Problem) as farm:
        hub.subscribe("a", "0-0")
    assert farm.value.status == 429 and farm.value.extra["limit"] == "sse_max_per_tenant"
    assert farm.value.headers and farm.value.headers["Retry-After"]
    hub.subscribe("b", "0-0")
    with pytest.raises(Problem) as process:
        hub.subscribe("c", "0-0")
    assert process.value.extra["limit"] == "sse_max_per_process"
    assert len(hub) == 3


def test_a_slow_client_is_let_go_and_the_reader_survives_redis_errors():
    async def run() -> None:
        store = History()
        errors: list[BaseException] = []
        hub = EventHub(store, 5, 5, queue_size=2, on_error=errors.append)  # type: ignore[arg-type]
        reader = asyncio.create_task(hub.run())
        slow = hub.subscribe("a", "0-0")
        for i in range(1, 5):
            store.add("a", f"{i}-0")
        await asyncio.sleep(0.05)
        assert slow.overflowed  # its stream ends; it reconnects with Last-Event-ID
        store.down = True
        await asyncio.sleep(0.05)
        assert errors and not reader.done()
        reader.cancel()

    asyncio.run(run())


def test_entry_ids_order_as_redis_orders_them():
    assert entry_key("10-0") > entry_key("9-5") > entry_key("9-1") > entry_key("9")

"""The event history's append on one Redis and on a cluster: events of farms of many groups, each
added once by event_id, to its own farm's history (one script call in all on one Redis, one per farm
group on a cluster: the same result)."""

from __future__ import annotations

import asyncio

import pytest

from fencex.store.redis import RedisStore

pytestmark = pytest.mark.integration


def event(farm: str, n: int, retracts: str | None = None) -> dict:
    e = {"event_id": f"{farm}-e{n}", "tenant": farm, "type": "enter", "device_id": f"{farm}-cow", "ts_ms": n}
    if retracts:
        e["retracts"] = retracts
    return e


def test_events_of_many_farm_groups_are_each_added_once_to_their_farms_history(redis_url):
    async def main() -> None:
        store = RedisStore(redis_url, prefix="hist")
        await store.connect()
        try:
            farms = [f"farm-{i}" for i in range(40)]  # spread over every one of the 16 groups
            assert len({store.keys.group(f) for f in farms}) > 8
            first = [event(f, n) for f in farms for n in range(3)]
            assert await store.append_events(first) == 120
            again = [event(f, n) for f in farms for n in range(2, 5)]  # e2 sent again: not added twice
            assert await store.append_events(again) == 80
            for f in farms:
                got = [e["event_id"] for _, e in await store.history(f)]
                assert got == [f"{f}-e{n}" for n in range(5)]
        finally:
            await store.close()

    asyncio.run(main())

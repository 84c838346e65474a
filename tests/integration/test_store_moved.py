"""The store's side of partitions added (docs/design/partitions.md) against the suite's Redis (a 3-master
cluster with ``FENCEX_TEST_REDIS=cluster``): a device's state under two partitions is read as its newest
copy (the pointer's on a tie), and the stale copy's deletion keeps a copy newer than it was told."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest

from fencex.detector import DeviceState
from fencex.errors import Fenced
from fencex.store.redis import RedisStore
from tests.integration.conftest import run

pytestmark = pytest.mark.integration

P, Q, TOPIC = 2, 5, "loc"


def _state(ts: int) -> bytes:
    return orjson.dumps({"tenant": "farm", "ts": ts, "lon": 17.6, "lat": 59.8, "in": {}})


async def _with_store(redis_url: str, body) -> None:
    store = RedisStore(redis_url, f"fx{uuid.uuid4().hex[:8]}")
    await store.connect()
    try:
        await body(store)
    finally:
        await store.close()


async def _put(store: RedisStore, device: str, copies: dict[int, int], where: int | None) -> None:
    k = store.keys
    for n, ts in copies.items():
        await store.redis.set(k.device(n, device), _state(ts))
        await store.redis.rpush(k.track(n, device), b"track")
        await store.redis.sadd(k.partition(TOPIC, n), device)
    if where is not None:
        await store.redis.hset(k.where(k.group(device)), device, str(where))


def test_the_newest_copy_is_the_state_and_the_pointers_wins_a_tie(redis_url):
    async def body(store: RedisStore) -> None:
        await _put(store, "moved", {P: 1000, Q: 2000}, where=P)  # adopted by Q, its pointer not moved yet
        await _put(store, "tie", {P: 1000, Q: 1000}, where=Q)
        await _put(store, "home", {P: 1000}, where=P)
        got = await store.locate_states(["moved", "tie", "home", "none"], {"moved": Q, "tie": P, "home": Q})
        assert {d: s.last_ts for d, s in got.states.items()} == {"moved": 2000, "tie": 1000, "home": 1000}
        assert got.under == {"moved": Q, "tie": Q, "home": P}
        assert got.where == {"moved": P, "tie": Q, "home": P}
        # the API and tools, which do not know the partition, follow the pointer
        assert {d: s.last_ts for d, s in (await store.load_states(["moved", "home"])).items()} == {
            "moved": 1000,
            "home": 1000,
        }

    run(_with_store(redis_url, body))


def test_forget_moved_deletes_the_stale_copy_and_keeps_a_newer_one(redis_url):
    async def body(store: RedisStore) -> None:
        k = store.keys
        await _put(store, "stale", {P: 1000, Q: 2000}, where=Q)
        await _put(store, "newer", {P: 3000, Q: 2000}, where=Q)  # P's copy moved on since it was looked at
        await store.redis.sadd(k.partition(TOPIC, P), "gone")  # listed, its state already deleted
        assert await store.forget_moved(TOPIC, P, {"stale": 2000, "newer": 2000, "gone": 2000}) == 2
        assert await store.redis.get(k.device(P, "stale")) is None
        assert await store.redis.exists(k.track(P, "stale")) == 0
        assert await store.redis.get(k.device(P, "newer")) is not None
        lists = await store.partition_lists(TOPIC, [P, Q])
        assert {n: set(ds) for n, ds in lists.items()} == {P: {"newer"}, Q: {"stale", "newer"}}
        assert await store.redis.get(k.device(Q, "stale")) is not None  # the other partition's copy untouched
        assert await store.forget_moved(TOPIC, P, {}) == 0

    run(_with_store(redis_url, body))


def test_a_moved_devices_save_fenced_after_its_generations_were_read_leaves_its_pointer_on_the_old_state(redis_url):
    """On a cluster the pointer is written after the partition steps: a save that moves a device to Q and
    is refused at Q's step (a newer owner claimed Q after the save read the generations) leaves the pointer
    on P, where the device's state is; a pointer moved first would name a partition without its state, and
    Q's next owner would take the device for a new one. (On one Redis the save is one script: all or none.)"""

    async def body(store: RedisStore) -> None:
        old = DeviceState("farm", 1000, 17.6, 59.8)
        gens = await store.claim_partitions(TOPIC, [P, Q])
        await store.save_packed(store.pack_save({"cow": old}, [], {(TOPIC, P): ["cow"]}, {(TOPIC, P): gens[P]}))
        assert await store.device_partition("cow") == P
        moved = DeviceState("farm", 2000, 17.6, 59.8)
        blob = store.pack_save({"cow": moved}, [], {(TOPIC, Q): ["cow"]}, {(TOPIC, Q): gens[Q]}, None, {"cow": Q})
        await store.claim_partitions(TOPIC, [Q])  # Q changed hands after the read below
        read = store._gets
        store._gets = lambda keys: asyncio.sleep(0, [str(gens[Q]).encode()] * len(keys))  # type: ignore[method-assign]
        with pytest.raises(Fenced):
            await store.save_packed(blob)
        store._gets = read  # type: ignore[method-assign]
        assert await store.device_partition("cow") == P
        assert (await store.load_states(["cow"]))["cow"].last_ts == 1000  # found, through the pointer
        assert (await store.load_states(["cow"], {"cow": Q}))["cow"].last_ts == 1000  # by Q's next owner too

    run(_with_store(redis_url, body))

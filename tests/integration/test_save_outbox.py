"""The cluster save's crash window, closed by the outbox (fencex.store.outbox): on a Redis Cluster a save is
partition steps, then farm steps; a saver that dies between them leaves farm steps owed, and the next owner's
claim of any of the save's partitions writes them, once. Runs on a real 3-master cluster: the suite's own
with FENCEX_TEST_REDIS=cluster, else one started here."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from devtools.localserver import RedisCluster, start_redis_cluster
from fencex.detector import DeviceState
from fencex.errors import Fenced, StoreUnavailable
from fencex.event import Event
from fencex.store.base import SaveWrites
from fencex.store.redis import RedisStore
from fencex.store.save import unpack_save
from tests.integration.conftest import run

TOPIC = "loc"
T0 = 1_790_000_000_000
DAY = "2026-09-21"
FARMS = ("farm-a", "farm-b", "farm-c")  # three farms: farm steps in more than one group's slot, most likely
COWS = {f"cow-{i}": (FARMS[i % 3], i % 2) for i in range(6)}  # device -> (farm, partition)


@pytest.fixture(scope="module")
def cluster_url(request, tmp_path_factory) -> Iterator[str]:
    server = request.getfixturevalue("redis_server")
    if isinstance(server, RedisCluster):
        yield server.url
        return
    with start_redis_cluster(3, logdir=tmp_path_factory.mktemp("outbox-cluster")) as cluster:
        yield cluster.url


def snapshot(store: RedisStore, gens: dict[int, int]) -> bytes:
    """A save of six cows on partitions 0 and 1: each enters its farm's fence, cow-0 escapes, and each
    farm is credited 60 s of grazing."""
    states = {d: DeviceState(farm, T0, 17.6, 59.8) for d, (farm, _) in COWS.items()}
    events = [Event("enter", farm, d, f"{farm}-north", 1, T0, 17.6, 59.8) for d, (farm, _) in COWS.items()]
    events.append(Event("escape", "farm-a", "cow-0", "", 0, T0, 17.6, 59.8))
    new = {(TOPIC, p): [d for d, (_, q) in COWS.items() if q == p] for p in (0, 1)}
    grazing = {(farm, f"{farm}-north", "", DAY): 60_000 for farm in FARMS}
    writes = SaveWrites(grazing=grazing)
    parts = {d: p for d, (_, p) in COWS.items()}
    blob = store.pack_save(states, events, new, {(TOPIC, p): g for p, g in gens.items()}, writes, parts)
    assert blob is not None
    return blob


async def farm_rows(store: RedisStore) -> dict[str, Any]:
    """What the farm steps write, as the API reads it."""
    inside = {farm: sorted(d for d, _ in await store.devices_inside(farm, f"{farm}-north")) for farm in FARMS}
    grazing = {farm: [(r.fence_id, r.ms) for r in await store.grazing(farm, [DAY])] for farm in FARMS}
    near = await store.devices_near("farm-b", 17.6, 59.8, 100, 100)
    return {"inside": inside, "out": await store.alerts("farm-a", "out", 10), "grazing": grazing, "near": near}


NOTHING: dict[str, list[Any]] = {farm: [] for farm in FARMS}
WRITTEN_ONCE = {
    "inside": {farm: sorted(d for d, (f, _) in COWS.items() if f == farm) for farm in FARMS},
    "out": [("cow-0", T0)],
    "grazing": {farm: [(f"{farm}-north", 60_000)] for farm in FARMS},
}


def failing(real: Any, when: Callable[[dict[str, Any]], bool]) -> Callable[..., Any]:
    """A call (a script's, a coroutine function's) that, when ``when(kwargs)``, is cut before it reaches
    Redis: it fails a moment later (the calls sent beside it are done by then)."""

    async def cut() -> Any:
        await asyncio.sleep(0.2)
        raise RedisConnectionError("connection cut (test)")

    def call(*args: Any, **kwargs: Any) -> Any:
        return cut() if when(kwargs) else real(*args, **kwargs)

    return call


async def stores(url: str) -> tuple[RedisStore, RedisStore]:
    prefix = f"fx{uuid.uuid4().hex[:8]}"
    old, new = RedisStore(url, prefix), RedisStore(url, prefix)
    await old.connect()
    await new.connect()
    assert old.cluster and new.cluster
    return old, new


def test_a_saver_that_dies_between_the_steps_leaves_its_farm_steps_to_the_next_owner(cluster_url):
    """The farm steps fail (the connection cut): the states are saved, the farm rows not. The new owner's
    claim writes memberships, the alert list, positions and grazing, each once; a second claim, and the
    dead saver's own steps arriving late, add nothing."""

    async def main() -> None:
        old, new = await stores(cluster_url)
        try:
            blob = snapshot(old, await old.claim_partitions(TOPIC, [0, 1]))
            real_farm = old._save_farm
            old._save_farm = failing(real_farm, lambda kw: True)
            with pytest.raises(StoreUnavailable):
                await old.save_packed(blob)
            assert len(await new.load_states(list(COWS))) == 6  # the partition steps ran
            rows = await farm_rows(new)
            assert rows["inside"] == NOTHING and rows["grazing"] == NOTHING

            await new.claim_partitions(TOPIC, [1])  # the next owner of one of the save's partitions
            rows = await farm_rows(new)
            assert {k: rows[k] for k in WRITTEN_ONCE} == WRITTEN_ONCE
            assert {d for d, *_ in rows["near"]} == {"cow-1", "cow-4"}
            assert await new.redis.hlen(new.keys.outbox("{p0}")) == 0  # every partition's entry cleared
            assert await new.redis.hlen(new.keys.outbox("{p1}")) == 0

            await new.claim_partitions(TOPIC, [0, 1])  # claimed again: nothing owed
            for token, d in unpack_save(blob)[3]:  # the dead saver's farm steps, arriving late
                assert [int(x) for x in await real_farm(keys=[token], args=[d])] == [0]
            rows = await farm_rows(new)
            assert {k: rows[k] for k in WRITTEN_ONCE} == WRITTEN_ONCE
        finally:
            await old.close()
            await new.close()

    run(main())


def test_farm_steps_that_ran_before_the_saver_died_are_not_written_twice(cluster_url):
    """The saver dies after its farm steps, before it cleared the outbox: the next owner's replay sends the
    steps again, and their tokens make them write nothing (grazing is HINCRBY: it would double)."""

    async def main() -> None:
        old, new = await stores(cluster_url)
        try:
            blob = snapshot(old, await old.claim_partitions(TOPIC, [0, 1]))
            old.clear_filed = failing(old.clear_filed, lambda kw: True)  # the clearing cut
            with pytest.raises(StoreUnavailable):
                await old.save_packed(blob)
            assert await new.redis.hlen(new.keys.outbox("{p0}")) == 1  # still filed
            assert await new.replay_outboxes([0, 1]) == 1
            rows = await farm_rows(new)
            assert {k: rows[k] for k in WRITTEN_ONCE} == WRITTEN_ONCE
            assert await new.redis.hlen(new.keys.outbox("{p0}")) == 0
        finally:
            await old.close()
            await new.close()

    run(main())


def test_a_save_cut_between_its_partition_steps_owes_no_farm_step(cluster_url):
    """Partition 1's step never reaches Redis: its fixes go to its new owner, who writes their farm rows
    itself. The farm steps of the half-written save are then owed by no one: the claim replays nothing
    (it would credit partition 1's grazing twice)."""

    async def main() -> None:
        old, new = await stores(cluster_url)
        try:
            blob = snapshot(old, await old.claim_partitions(TOPIC, [0, 1]))
            old._save_part = failing(old._save_part, lambda kw: "{p1}" in kw["keys"][0])
            with pytest.raises(StoreUnavailable):
                await old.save_packed(blob)
            # partition 0's states are saved (found under the partition the worker reads them on: their
            # pointers come after every partition step, so none was written: docs/design/partitions.md)
            where = {d: p for d, (_, p) in COWS.items()}
            assert set(await new.load_states(list(COWS), where)) == {d for d, p in where.items() if p == 0}
            assert await new.redis.hlen(new.keys.outbox("{p0}")) == 1
            assert await new.replay_outboxes([0, 1]) == 0
            rows = await farm_rows(new)
            assert rows["inside"] == NOTHING and rows["grazing"] == NOTHING
        finally:
            await old.close()
            await new.close()

    run(main())


def test_a_save_that_completes_leaves_nothing_owed(cluster_url):
    async def main() -> None:
        old, new = await stores(cluster_url)
        try:
            await old.save_packed(snapshot(old, await old.claim_partitions(TOPIC, [0, 1])))
            assert await new.redis.hlen(new.keys.outbox("{p0}")) == 0
            assert await new.redis.hlen(new.keys.outbox("{p1}")) == 0
            assert await new.replay_outboxes([0, 1]) == 0
            rows = await farm_rows(new)
            assert {k: rows[k] for k in WRITTEN_ONCE} == WRITTEN_ONCE
        finally:
            await old.close()
            await new.close()

    run(main())


def test_a_resent_save_refused_by_the_new_owner_leaves_the_steps_it_owes_to_that_owner(cluster_url):
    """The saver's first try wrote both partition steps and lost its farm steps; partition 1's new owner
    raises its generation (its claim has not read the outbox yet); the saver sends the save again and
    partition 1 refuses it. Every partition step of the save ran, so its farm steps are owed: the saver
    must leave them filed, and the claim's replay writes them, once."""

    async def main() -> None:
        old, new = await stores(cluster_url)
        try:
            gens = await old.claim_partitions(TOPIC, [0, 1])
            blob = snapshot(old, gens)
            real_farm = old._save_farm
            old._save_farm = failing(real_farm, lambda kw: True)
            with pytest.raises(StoreUnavailable):
                await old.save_packed(blob)
            old._save_farm = real_farm
            await new.redis.incr(new.keys.generation(TOPIC, 1))  # the new owner's claim, before its replay
            old._gets = lambda keys: asyncio.sleep(0, [str(gens[0]).encode(), str(gens[1]).encode()])  # read before
            with pytest.raises(Fenced):
                await old.save_packed(blob)
            assert await new.replay_outboxes([1]) == 1  # the rest of the new owner's claim
            rows = await farm_rows(new)
            assert {k: rows[k] for k in WRITTEN_ONCE} == WRITTEN_ONCE
        finally:
            await old.close()
            await new.close()

    run(main())

"""A farm's slot moving between nodes of a Redis Cluster (``redis-cli --cluster reshard``, or CLUSTER SETSLOT
MIGRATING/IMPORTING and MIGRATE by hand) while the farm writes (review15c). A transaction (WATCH/MULTI: a fence
put or delete, a mob, a device claim) on a slot being moved whose keys are partly moved gets ASK; redis-py's
cluster transaction does not follow it and raised AskError, a ResponseError the store's guard let through:
the API answered 500. It is a cluster in motion: StoreUnavailable (503, Retry-After), nothing written, and the
write goes through once the slot has moved."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from devtools.localserver import RedisCluster, redis_cli_path, start_redis_cluster
from fencex.errors import StoreUnavailable
from fencex.fence import Fence
from fencex.store.redis import RedisStore
from tests.integration.test_api import FAR, SQUARE

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory) -> Iterator[RedisCluster]:
    server = request.getfixturevalue("redis_server")
    if isinstance(server, RedisCluster):
        yield server
        return
    with start_redis_cluster(3, logdir=tmp_path_factory.mktemp("slot-moving")) as own:
        yield own


def cli(port: int, *args: object) -> str:
    done = subprocess.run([redis_cli_path(), "-p", str(port), *map(str, args)], capture_output=True, text=True)
    return done.stdout.strip()


def test_a_write_to_a_slot_being_moved_is_unavailable_not_an_error(cluster):
    async def go() -> None:
        store = RedisStore(cluster.url, f"s{uuid.uuid4().hex[:6]}")
        await store.connect()
        try:
            await store.put_fences([Fence(id="north", tenant="farm", geometry=SQUARE)])
            key = store.keys.fence("farm", "north")
            slot = store.redis.keyslot(key)  # type: ignore[attr-defined]
            src = store.redis.nodes_manager.get_node_from_slot(slot).port  # type: ignore[attr-defined]
            dst = next(s.port for s in cluster.servers if s.port != src)
            ids = {s.port: cli(s.port, "cluster", "myid") for s in cluster.servers}
            assert cli(dst, "cluster", "setslot", slot, "importing", ids[src]) == "OK"
            assert cli(src, "cluster", "setslot", slot, "migrating", ids[dst]) == "OK"
            try:
                assert cli(src, "migrate", "127.0.0.1", dst, key, 0, 5000) == "OK"  # the fence moved, its sets not yet
                assert (await store.get_fence("farm", "north")).version == 1  # a read follows ASK
                with pytest.raises(StoreUnavailable):
                    await store.put_fences([Fence(id="north", tenant="farm", geometry=FAR)])
                with pytest.raises(StoreUnavailable):
                    await store.delete_fence("farm", "north")
            finally:  # the move finished: every key of the slot, then the slot
                while keys := cli(src, "cluster", "getkeysinslot", slot, 100).split():
                    for k in keys:
                        cli(src, "migrate", "127.0.0.1", dst, k, 0, 5000)
                for s in cluster.servers:
                    cli(s.port, "cluster", "setslot", slot, "node", ids[dst])
            (stored,) = await store.put_fences([Fence(id="north", tenant="farm", geometry=FAR)])
            assert stored.version == 2  # the refused put wrote nothing; this one went through
        finally:
            await store.close()

    asyncio.run(go())


def move_slot(cluster: RedisCluster, slot: int, src: int, dst: int, ids: dict[int, str], replace: bool) -> list[str]:
    """Finish moving ``slot`` from ``src`` to ``dst`` as ``redis-cli --cluster reshard`` does (MIGRATE each key,
    then assign the slot); the MIGRATE errors (BUSYKEY: the target has a key of that name already)."""
    errors: list[str] = []
    extra = ["REPLACE"] if replace else []
    while keys := cli(src, "cluster", "getkeysinslot", slot, 100).split():
        for k in keys:
            got = cli(src, "migrate", "127.0.0.1", dst, k, 0, 5000, *extra)
            if got != "OK":
                errors.append(got)
                cli(src, "migrate", "127.0.0.1", dst, k, 0, 5000, "REPLACE")  # unstick the test's cluster
    for s in cluster.servers:
        cli(s.port, "cluster", "setslot", slot, "node", ids[dst])
    return errors


def test_a_save_while_its_farms_slot_moves_waits_and_does_not_break_the_reshard(cluster):
    from fencex.detector import DeviceState
    from fencex.event import Event

    T0 = 1_790_000_000_000

    async def go() -> None:
        store = RedisStore(cluster.url, f"s{uuid.uuid4().hex[:6]}")
        await store.connect()
        try:
            gens = {("loc", 0): (await store.claim_partitions("loc", [0]))[0]}
            cows = ["cow-1", "cow-2"]

            def save(ts: int, fence: str) -> bytes | None:
                states = {d: DeviceState("farm", ts, 17.6, 59.8) for d in cows}
                events = [Event("enter", "farm", d, fence, 1, ts, 17.6, 59.8) for d in cows]
                return store.pack_save(states, events, {("loc", 0): cows}, gens, None, dict.fromkeys(cows, 0))

            await store.save_packed(save(T0, "north"))
            slot = store.redis.keyslot(store.keys.geo("farm"))  # type: ignore[attr-defined]
            src = store.redis.nodes_manager.get_node_from_slot(slot).port  # type: ignore[attr-defined]
            dst = next(s.port for s in cluster.servers if s.port != src)
            ids = {s.port: cli(s.port, "cluster", "myid") for s in cluster.servers}
            cli(dst, "cluster", "setslot", slot, "importing", ids[src])
            cli(src, "cluster", "setslot", slot, "migrating", ids[dst])
            try:
                with pytest.raises(StoreUnavailable):  # the farm's slot moves: the save waits for it
                    await store.save_packed(save(T0 + 60_000, "south"))
            finally:
                errors = move_slot(cluster, slot, src, dst, ids, replace=False)
            assert errors == [], "the reshard failed on keys the save wrote on the importing node"
            assert [d for d, _ in await store.devices_inside("farm", "north")] == cows
        finally:
            await store.close()

    asyncio.run(go())


def test_a_replayed_farm_step_while_its_slot_moves_waits_and_does_not_break_the_reshard(cluster):
    """The outbox's replay (a claim writing the farm steps a dead saver owed) sent SAVE_FARM with one key, its
    token: while the farm's slot moved it ran on the importing node and created the farm's keys beside the
    source's (the reshard's MIGRATE then fails, BUSYKEY). It names a second key of the slot now: TRYAGAIN,
    StoreUnavailable, and the claim is made again once the slot has moved."""
    from tests.integration.test_save_outbox import COWS, TOPIC, WRITTEN_ONCE, failing, farm_rows, snapshot, stores

    async def go() -> None:
        old, new = await stores(cluster.url)
        try:
            blob = snapshot(old, await old.claim_partitions(TOPIC, [0, 1]))
            old._save_farm = failing(old._save_farm, lambda kw: True)  # the saver dies before its farm steps
            with pytest.raises(StoreUnavailable):
                await old.save_packed(blob)
            assert len(await new.load_states(list(COWS))) == 6
            slot = new.redis.keyslot(new.keys.geo("farm-b"))  # type: ignore[attr-defined]
            src = new.redis.nodes_manager.get_node_from_slot(slot).port  # type: ignore[attr-defined]
            dst = next(s.port for s in cluster.servers if s.port != src)
            ids = {s.port: cli(s.port, "cluster", "myid") for s in cluster.servers}
            await new.redis.set(new.keys.inside("farm-b", "b-west"), "on the source")  # a key of the slot
            cli(dst, "cluster", "setslot", slot, "importing", ids[src])
            cli(src, "cluster", "setslot", slot, "migrating", ids[dst])
            try:
                with pytest.raises(StoreUnavailable):
                    await new.claim_partitions(TOPIC, [1])
            finally:
                errors = move_slot(cluster, slot, src, dst, ids, replace=False)
            assert errors == []
            await new.claim_partitions(TOPIC, [1])  # the slot has moved: the replay goes through
            rows = await farm_rows(new)
            assert {k: rows[k] for k in WRITTEN_ONCE} == WRITTEN_ONCE
        finally:
            await old.close()
            await new.close()

    asyncio.run(go())


def test_a_partition_step_while_its_slot_moves_is_not_lost(cluster):
    from fencex.detector import DeviceState

    T0 = 1_790_000_000_000

    async def go() -> None:
        store = RedisStore(cluster.url, f"s{uuid.uuid4().hex[:6]}")
        await store.connect()
        try:
            p = 5
            gens = {("loc", p): (await store.claim_partitions("loc", [p]))[p]}
            cows = [f"cow-{i}" for i in range(4)]
            parts = dict.fromkeys(cows, p)

            def save(ts: int) -> bytes | None:  # near the pole: no position to write, so no farm step
                return store.pack_save(
                    {d: DeviceState("farm", ts, 17.6, 89.5) for d in cows}, [], None, gens, None, parts
                )

            await store.save_packed(
                store.pack_save(
                    {d: DeviceState("farm", T0, 17.6, 89.5) for d in cows}, [], {("loc", p): cows}, gens, None, parts
                )
            )
            slot = store.redis.keyslot(store.keys.generation("loc", p))  # type: ignore[attr-defined]
            src = store.redis.nodes_manager.get_node_from_slot(slot).port  # type: ignore[attr-defined]
            dst = next(s.port for s in cluster.servers if s.port != src)
            ids = {s.port: cli(s.port, "cluster", "myid") for s in cluster.servers}
            cli(dst, "cluster", "setslot", slot, "importing", ids[src])
            cli(src, "cluster", "setslot", slot, "migrating", ids[dst])
            blob = save(T0 + 60_000)
            try:
                assert cli(src, "migrate", "127.0.0.1", dst, store.keys.generation("loc", p), 0, 5000) == "OK"
                with pytest.raises(StoreUnavailable):
                    await store.save_packed(blob)
            finally:
                move_slot(cluster, slot, src, dst, ids, replace=True)
            await store.save_packed(blob)  # sent again once the slot has moved
            states = await store.load_states(cows, parts)
            assert {d: s.last_ts for d, s in states.items()} == dict.fromkeys(cows, T0 + 60_000)
        finally:
            await store.close()

    asyncio.run(go())

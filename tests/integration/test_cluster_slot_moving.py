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

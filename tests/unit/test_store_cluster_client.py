"""The cluster client's hooks into redis-py (fencex.store.cluster), with the network left out: a task
holding a node's permit takes no second one of it (review 16a #1: a burst of fence puts waited for
each other's permits and all failed); a transaction's commands are queued on the caller's loop, not
each in a thread with its own loop (review 16a #2: a put of 1,000 fences stopped every farm's loop for
seconds); and redis-py's internals these rely on are still there (review 16a #3)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from redis.asyncio.cluster import ClusterNode, PipelineStrategy, RedisCluster, TransactionStrategy
from redis.exceptions import CrossSlotTransactionError, RedisClusterException, RedisError

from fencex.store import cluster
from fencex.store.cluster import PermittedCluster

NODE = ClusterNode("127.0.0.1", 7000)


def offline_client(limit: int) -> PermittedCluster:
    """A client whose every slot is on NODE, as found: no network until a command is sent."""
    client = PermittedCluster(startup_nodes=[NODE], node_permits=limit)
    client._initialize = False
    client.nodes_manager.nodes_cache = {NODE.name: NODE}
    client.nodes_manager.slots_cache = {s: [NODE] for s in range(16384)}
    return client


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Commands 'sent' (to a node, or at once in a transaction), each answered after a moment."""
    got: list[tuple[Any, ...]] = []

    async def to_node(self: RedisCluster, node: ClusterNode, *args: Any, **kwargs: Any) -> Any:
        got.append(args)
        await asyncio.sleep(0.01)
        return [None]

    async def at_once(self: TransactionStrategy, *args: Any, **kwargs: Any) -> Any:
        got.append(args)
        return True

    monkeypatch.setattr(RedisCluster, "_execute_command", to_node)
    monkeypatch.setattr(TransactionStrategy, "_immediate_execute_command", at_once)
    return got


def test_redis_py_still_has_what_the_hooks_use():
    assert cluster.FAST_TRANSACTIONS  # else transactions fall back to a thread a command

    async def go() -> None:
        client = offline_client(1)
        strategy = client.pipeline(transaction=True)._execution_strategy
        assert all(hasattr(strategy, n) for n in cluster._TXN_NAMES)
        await client.aclose()

    asyncio.run(go())


def test_a_read_inside_a_transaction_takes_no_second_permit_of_its_node(monkeypatch, sent):
    monkeypatch.setattr(cluster, "POOL_WAIT_S", 0.5)
    limit = 4

    async def go() -> list[Any]:
        client = offline_client(limit)
        arrived = asyncio.Barrier(limit)

        async def put_group(i: int) -> Any:  # the shape of RedisFences._put_group
            async with client.pipeline(transaction=True) as pipe:
                await pipe.watch(f"fx:{{g1}}:fence:farm{i}:f")
                assert client.permits.in_use(NODE.name) >= 1
                await arrived.wait()  # every permit held at once (a burst)
                # the client's read after the WATCH (sent to the key's node: the node found, as redis-py does)
                return await client._execute_command(NODE, "MGET", f"fx:{{g1}}:fence:farm{i}:f")

        got = await asyncio.gather(*(put_group(i) for i in range(limit)), return_exceptions=True)
        assert client.permits.in_use(NODE.name) == 0  # all given back
        assert cluster._held.get() == frozenset()
        await client.aclose()
        return got

    got = asyncio.run(go())
    assert got == [[None]] * limit, got
    assert sum(1 for a in sent if a[0] == "WATCH") == limit


def test_a_command_waits_for_its_nodes_permit_and_holds_it_while_it_runs(monkeypatch):
    monkeypatch.setattr(cluster, "POOL_WAIT_S", 0.3)
    seen: list[int] = []

    async def to_node(self: RedisCluster, node: ClusterNode, *args: Any, **kwargs: Any) -> Any:
        seen.append(client.permits.in_use(node.name))
        await asyncio.sleep(0.05)
        return b"v"

    monkeypatch.setattr(RedisCluster, "_execute_command", to_node)

    async def go() -> None:
        nonlocal client
        client = offline_client(2)
        got = await asyncio.gather(*(client._execute_command(NODE, "GET", f"k{i}") for i in range(4)))
        assert got == [b"v"] * 4
        assert max(seen) == 2  # never more than the node's permits under way
        await client.aclose()

    client: PermittedCluster

    asyncio.run(go())


def test_a_transactions_commands_are_queued_on_the_callers_loop(sent, monkeypatch):
    threads: list[threading.Thread] = []
    start = threading.Thread.start

    def counted(self: threading.Thread) -> None:
        threads.append(self)
        start(self)

    monkeypatch.setattr(threading.Thread, "start", counted)

    async def go() -> None:
        client = offline_client(50)
        pipe = client.pipeline(transaction=True)
        await pipe.watch("fx:{g1}:fence:t:f0", "fx:{g1}:tenant-fences:t")
        pipe.multi()
        for i in range(1000):
            pipe.set(f"fx:{{g1}}:fence:t:f{i}", "x")
            pipe.sadd("fx:{g1}:fences", f"f{i}")
            pipe.xadd("fx:{g1}:changes", {"k": f"f{i}"})
        strategy = pipe._execution_strategy
        assert len(strategy._command_queue) == 3000
        assert strategy._pipeline_slots == {client.keyslot("fx:{g1}:fences")}
        await pipe.reset()
        assert client.permits.in_use(NODE.name) == 0
        await client.aclose()

    asyncio.run(go())
    assert threads == []  # redis-py's own path starts one a command
    assert [a[0] for a in sent] == ["WATCH"]


def test_a_transaction_still_refuses_a_second_slot(sent):
    async def go() -> None:
        client = offline_client(50)
        async with client.pipeline(transaction=True) as pipe:
            await pipe.watch("fx:{g1}:a")
            with pytest.raises(CrossSlotTransactionError):
                await pipe.execute_command("GET", "fx:{g2}:b")  # while watching: sent at once, checked first
        await client.aclose()

    asyncio.run(go())


def test_a_task_holding_one_nodes_permit_waits_for_no_other_nodes(monkeypatch, sent):
    """review 16b #2: a transaction holding node X's permit read from node Y (a fence id's release, a mob's
    members) while another burst held Y's and read X: all of both waited POOL_WAIT_S and failed."""
    monkeypatch.setattr(cluster, "POOL_WAIT_S", 0.5)
    x, y = ClusterNode("127.0.0.1", 7000), ClusterNode("127.0.0.1", 7001)

    async def no_net(self: Any, *args: Any, **kwargs: Any) -> list[Any]:
        return []

    monkeypatch.setattr(PipelineStrategy, "execute", no_net)

    async def go() -> list[Any]:
        client = PermittedCluster(startup_nodes=[x], node_permits=2)
        client._initialize = False
        client.nodes_manager.nodes_cache = {x.name: x, y.name: y}
        client.nodes_manager.slots_cache = {s: [x if s < 8192 else y] for s in range(16384)}

        def key_on(node: ClusterNode, stem: str) -> str:
            return next(
                k
                for k in (f"{stem}{i}" for i in range(10_000))
                if client.nodes_manager.get_node_from_slot(client.keyslot(k)) is node
            )

        kx, ky = key_on(x, "fx:fence-id:f"), key_on(y, "fx:{g")
        barrier = asyncio.Barrier(4)

        async def release(watched: str, other: str) -> str:  # the shape of _release_id and put_mob
            async with client.pipeline(transaction=True) as pipe:
                await pipe.watch(watched)
                await barrier.wait()  # every permit of both nodes held by the WATCHes
                async with client.pipeline(transaction=False) as reads:
                    reads.exists(other)
                    await reads.execute()
                return "ok"

        got = await asyncio.gather(*[release(kx, ky) for _ in range(2)], *[release(ky, kx) for _ in range(2)])
        assert client.permits.in_use(x.name) == client.permits.in_use(y.name) == 0
        await client.aclose()
        return got

    assert asyncio.run(go()) == ["ok"] * 4


def test_a_watch_after_multi_is_refused_as_redis_py_refuses_it(sent):
    async def go() -> None:
        client = offline_client(5)
        pipe = client.pipeline(transaction=True)
        pipe.multi()
        pipe.set("fx:{g1}:a", "1")
        with pytest.raises(RedisError, match="WATCH after a MULTI"):
            await pipe.watch("fx:{g1}:a")
        assert len(pipe._execution_strategy._command_queue) == 1  # the queue kept
        await pipe.reset()
        await client.aclose()

    asyncio.run(go())


def test_a_transaction_after_a_failure_finds_the_nodes_on_its_own_loop(sent, monkeypatch):
    """review 16b #1: after a failure (``_initialize``) redis-py's path found the nodes again in a thread with
    its own loop, against this loop's lock: frozen, or a RuntimeError answered 500."""
    found: list[bool] = []

    async def initialize(self: PermittedCluster, *args: Any, **kwargs: Any) -> PermittedCluster:
        found.append(threading.current_thread() is threading.main_thread())
        self._initialize = False
        return self

    monkeypatch.setattr(PermittedCluster, "initialize", initialize)

    async def go() -> None:
        client = offline_client(5)
        client._initialize = True
        async with client.pipeline(transaction=True) as pipe:
            await pipe.watch("fx:{g1}:a")
            pipe.multi()
            pipe.set("fx:{g1}:a", "1")
        await client.aclose()

    asyncio.run(go())
    assert found == [True] and [a[0] for a in sent] == ["WATCH"]


def test_a_command_the_store_does_not_send_in_a_transaction_is_refused_not_threaded(sent):
    async def go() -> None:
        client = offline_client(5)
        pipe = client.pipeline(transaction=True)
        pipe.multi()
        with pytest.raises(RedisClusterException, match="not mapped"):
            pipe.execute_command("OBJECT", "ENCODING", "fx:{g1}:a")
        await pipe.reset()
        await client.aclose()

    asyncio.run(go())


@pytest.mark.parametrize(
    ("args", "same_slot_as"),
    [
        (("SET", "fx:{g1}:a", "v"), "fx:{g1}:a"),
        (("WATCH", "fx:{g1}:a", "fx:{g1}:b"), "fx:{g1}:a"),
        (("EVALSHA", "abc", 2, "fx:{p7}:x", "fx:{p7}:y", "blob"), "fx:{p7}:x"),
        (("EVALSHA", "abc", 0, "blob"), None),  # no key
        (("ZINTER", 2, "fx:{g1}:a", "fx:{g1}:b"), None),  # not a command the store sends so: not mapped
    ],
)
def test_a_transaction_commands_slot(args, same_slot_as):
    from redis.crc import key_slot

    want = key_slot(same_slot_as.encode()) if same_slot_as else None
    assert cluster.transaction_slot(args, lambda k: key_slot(str(k).encode())) == want


def test_a_watch_of_keys_in_two_slots_is_refused():
    from redis.crc import key_slot

    with pytest.raises(CrossSlotTransactionError):
        cluster.transaction_slot(("WATCH", "fx:{g1}:a", "fx:{g2}:b"), lambda k: key_slot(str(k).encode()))

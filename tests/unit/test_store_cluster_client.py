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
from redis.asyncio.cluster import ClusterNode, RedisCluster, TransactionStrategy
from redis.exceptions import CrossSlotTransactionError

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

"""The cluster client's permits are per node (fencex.store.cluster.NodePermits, review15d #1): a node whose
permits are all held (its calls hang on a paused node) makes only its own calls wait, never another node's."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.exceptions import MaxConnectionsError

from fencex.store import cluster
from fencex.store.cluster import NodePermits


def test_a_full_node_does_not_hold_up_another(monkeypatch):
    monkeypatch.setattr(cluster, "POOL_WAIT_S", 0.2)

    async def go() -> None:
        permits = NodePermits(2)
        stuck = asyncio.Event()

        async def hang() -> None:
            async with permits.hold(["10.0.0.3:7002"]):
                await stuck.wait()

        hung = [asyncio.create_task(hang()) for _ in range(2)]
        await asyncio.sleep(0)
        assert permits.in_use("10.0.0.3:7002") == 2
        t = time.monotonic()
        async with permits.hold(["10.0.0.1:7000"]):  # another node: at once
            assert time.monotonic() - t < 0.05
        with pytest.raises(MaxConnectionsError):  # the full node: waits, then refused
            async with permits.hold(["10.0.0.3:7002"]):
                pass
        with pytest.raises(MaxConnectionsError):  # several nodes, one full: none is kept
            async with permits.hold(["10.0.0.1:7000", "10.0.0.3:7002"]):
                pass
        assert permits.in_use("10.0.0.1:7000") == 0
        stuck.set()
        await asyncio.gather(*hung)
        assert permits.in_use("10.0.0.3:7002") == 0

    asyncio.run(go())


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (("HMGET", "fx:{g1}:devices", "cow-1", "cow-2"), "fx:{g1}:devices"),  # the first argument
        (("XINFO STREAM", "fx:{g3}:changes"), "fx:{g3}:changes"),
        (("XREAD", "COUNT", 10, "STREAMS", "fx:{g1}:changes", "0-0"), "fx:{g1}:changes"),  # the first stream
        (("EVALSHA", "abc", 2, "fx:{p7}:saved:t", "fx:{p7}:saved:t:slot", "blob"), "fx:{p7}:saved:t"),
        (("EVALSHA", "abc", 0, "blob"), None),  # a script with no key: any node, no permit
    ],
)
def test_the_key_a_pipelined_command_is_sent_by(args, key):
    assert cluster.key_of(args) == key

"""One node of a Redis Cluster stops answering (paused: a long GC-like stall, a VM frozen, a network
partition that drops no connection) while farms whose slots are on the other nodes keep working (review15c).

The cluster client retried every timeout (three socket timeouts of 10 s for one call), and a pipeline that
failed closed every node's connections before trying again and found the nodes again through whichever
answered first: the follower's read of the 16 feeds (one pipeline, a node per feed group) took 107 s to
fail, and calls of farms on the healthy nodes stalled or failed with it. Now a call that reaches the paused
node fails after one socket timeout (StoreUnavailable) and no other farm's call notices.

The cluster is this test's own (a node is paused), with a node timeout long enough that the other nodes do
not declare the cluster down meanwhile (the behaviour under test is the client's, not the failover)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.localserver import RedisCluster, Server, redis_cli_path, start_redis_cluster
from fencex.errors import StoreUnavailable
from fencex.fence import Fence
from fencex.store.redis import RedisStore
from tests.integration.conftest import wait_api
from tests.integration.test_api import SQUARE

pytestmark = pytest.mark.integration


async def timed_read(store: RedisStore, farm: str, failed: list[str]) -> float:
    """Seconds a read of the farm's fence took (a StoreUnavailable noted in ``failed``)."""
    t = time.monotonic()
    try:
        await store.get_fence(farm, f"f-{farm}")
    except StoreUnavailable as exc:
        failed.append(str(exc))
    return time.monotonic() - t


@contextlib.contextmanager
def patient_cluster(logdir: Path) -> Iterator[tuple[RedisCluster, Server]]:
    """A 3-master cluster whose nodes wait 120 s before they declare one failed (the pause under test is the
    client's to survive, not a failover), and the node to pause."""
    with start_redis_cluster(3, logdir=logdir) as cluster:
        for server in cluster.servers:
            subprocess.run(
                [redis_cli_path(), "-p", str(server.port), "config", "set", "cluster-node-timeout", "120000"],
                check=True,
                capture_output=True,
            )
        yield cluster, cluster.servers[2]


def test_a_paused_node_fails_its_calls_after_one_timeout_and_stalls_no_other_farm(tmp_path):
    with patient_cluster(tmp_path) as (cluster, victim):

        async def go() -> None:
            store = RedisStore(cluster.url, f"n{uuid.uuid4().hex[:6]}")
            await store.connect()
            try:
                farms = [f"farm-{i}" for i in range(40)]
                await store.put_fences([Fence(id=f"f-{f}", tenant=f, geometry=SQUARE) for f in farms])
                nodes = store.redis.nodes_manager  # type: ignore[attr-defined]
                healthy = [
                    f
                    for f in farms
                    if nodes.get_node_from_slot(store.redis.keyslot(store.keys.fence(f, "x"))).port != victim.port  # type: ignore[attr-defined]
                ]
                slowest, failed = 0.0, []
                stop = asyncio.Event()

                async def farm_reads(offset: int) -> None:
                    nonlocal slowest
                    i = offset
                    while not stop.is_set():
                        f = healthy[i % len(healthy)]
                        i += 1
                        slowest = max(slowest, await timed_read(store, f, failed))
                        await asyncio.sleep(0.01)

                readers = [asyncio.create_task(farm_reads(k)) for k in range(4)]
                await asyncio.sleep(0.3)
                os.kill(victim.proc.pid, signal.SIGSTOP)
                try:
                    t = time.monotonic()
                    with pytest.raises(StoreUnavailable):  # every feed: one pipeline, the paused node among them
                        await asyncio.wait_for(store.last_change_id(), 40)
                    waited = time.monotonic() - t
                finally:
                    os.kill(victim.proc.pid, signal.SIGCONT)
                stop.set()
                await asyncio.gather(*readers)
                assert waited < 15, f"a call to the paused node failed after {waited:.0f} s, not one socket timeout"
                assert not failed, f"farms on healthy nodes failed: {failed[:3]}"
                assert slowest < 2, f"a farm on a healthy node waited {slowest:.1f} s"
                assert len(await store.last_change_id()) > 0  # the node is back: the store is too
            finally:
                await store.close()

        asyncio.run(go())


def test_a_burst_to_a_paused_node_holds_no_permit_of_the_healthy_nodes(tmp_path):
    """review15d #1: the store bounded its calls under way by one set of permits for the whole cluster
    (the URL's max_connections), so while a node was paused a burst of calls to its farms held every permit
    for a socket timeout each, and every farm's calls waited 5 s for one and failed (503). The permits are
    per node now: farms on the healthy nodes are served at once during the burst."""
    with patient_cluster(tmp_path) as (cluster, victim):

        async def go() -> None:
            store = RedisStore(f"{cluster.url}?max_connections=4", f"n{uuid.uuid4().hex[:6]}")
            await store.connect()
            try:
                farms = [f"farm-{i}" for i in range(40)]
                await store.put_fences([Fence(id=f"f-{f}", tenant=f, geometry=SQUARE) for f in farms])
                nodes = store.redis.nodes_manager  # type: ignore[attr-defined]

                def on_victim(f: str) -> bool:
                    key = store.keys.fence(f, "x")
                    return bool(nodes.get_node_from_slot(store.redis.keyslot(key)).port == victim.port)  # type: ignore[attr-defined]

                paused = [f for f in farms if on_victim(f)]
                healthy = [f for f in farms if not on_victim(f)]
                assert paused and healthy
                os.kill(victim.proc.pid, signal.SIGSTOP)
                try:
                    burst = [  # five times the permits, each waiting a socket timeout on the paused node
                        asyncio.create_task(store.get_fence(f, f"f-{f}")) for f in (paused * 20)[:20]
                    ]
                    await asyncio.sleep(0.5)
                    slowest, failed = 0.0, []
                    until = time.monotonic() + 14  # past the burst's socket timeouts: the client finds the nodes again
                    while time.monotonic() < until:
                        for f in healthy[:6]:
                            slowest = max(slowest, await timed_read(store, f, failed))
                        await asyncio.sleep(0.05)
                finally:
                    os.kill(victim.proc.pid, signal.SIGCONT)
                await asyncio.gather(*burst, return_exceptions=True)
                assert not failed, f"farms on healthy nodes failed during the burst: {failed[:3]}"
                assert slowest < 1, f"a farm on a healthy node waited {slowest:.1f} s behind the paused node"
            finally:
                await store.close()

        asyncio.run(go())


def test_a_paused_node_leaves_the_store_serving_and_degraded(tmp_path):
    """review15d #3: the readiness check pinged every node, so one node down made every API pod (and worker)
    not ready, also for the farms on the healthy nodes. The store's health now says which nodes are down,
    within a probe's second, and that the store still serves (the cluster serves its other slots)."""
    with patient_cluster(tmp_path) as (cluster, victim):

        async def go() -> None:
            store = RedisStore(cluster.url, f"n{uuid.uuid4().hex[:6]}")
            await store.connect()
            try:
                health = await store.health()
                assert (health.nodes, health.down, health.serving, health.degraded) == (3, (), True, False)
                os.kill(victim.proc.pid, signal.SIGSTOP)
                try:
                    t = time.monotonic()
                    health = await store.health()
                    took = time.monotonic() - t
                finally:
                    os.kill(victim.proc.pid, signal.SIGCONT)
                assert took < 1, f"the health check took {took:.1f} s (a readiness probe waits 1 s)"
                assert health.down == (f"127.0.0.1:{victim.port}",) and health.nodes == 3
                assert health.serving and health.degraded
                for _ in range(75):  # the node is back (its connection cut by the pause is opened again)
                    if not (health := await store.health()).down:
                        break
                    await asyncio.sleep(0.2)
                assert health.down == ()
            finally:
                await store.close()

        asyncio.run(go())


def test_the_api_stays_ready_with_one_node_paused(live, tmp_path):
    """review15d #3, end to end: the API process on a cluster with a node paused answers /readyz 200
    "degraded" (its load balancer keeps serving the farms on the healthy nodes) and counts the node down."""
    with patient_cluster(tmp_path / "redis") as (cluster, victim):
        proc, base = live.start_api(redis_url=cluster.url)
        wait_api(base, proc)
        os.kill(victim.proc.pid, signal.SIGSTOP)
        try:
            t = time.monotonic()
            r = httpx.get(f"{base}/readyz", timeout=5)
            took = time.monotonic() - t
            metrics = httpx.get(f"{base}/metrics", timeout=5).text
        finally:
            os.kill(victim.proc.pid, signal.SIGCONT)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "degraded" and body["redis"]["nodes_down"] == [f"127.0.0.1:{victim.port}"]
        assert took < 1, f"/readyz took {took:.1f} s (a readiness probe waits 1 s)"
        assert "fencex_store_nodes_down 1.0" in metrics

"""redis-py's cluster client with a bound on the calls under way *per node*, each waiting for a permit of its
node (up to :data:`POOL_WAIT_S`, then ``MaxConnectionsError``: the guard's StoreUnavailable, a 503).

redis-py's cluster client keeps a pool per node and fails at once when it is full, where the single client's
blocking pool waits; the store used to bound its calls with one set of permits for the whole cluster. While a
node was paused (until the cluster declares it failed, ``cluster-node-timeout``), each call to it held one of
those permits for a socket timeout, and a burst of them made every farm's calls wait 5 s and fail. Now each
node has its own permits (the URL's ``max_connections``), taken where redis-py sends to a node:

- a command (and a script: EVALSHA) holds its node's permit while it is sent and answered (redis-py's
  ``RedisCluster._execute_command``, which is given the node; a command sent to every node takes each's);
- a pipeline holds the permits of the nodes its commands map to (``nodes_manager`` from each command's slot),
  from ``execute`` until it is reset; a transaction its node's, from ``watch`` (or ``execute``) until reset.

So a call waits only for calls to its own node(s). What is left: a pipeline over several nodes (the
follower's read of every feed, a worker's load) holds each of its nodes' permits until its slowest node
answers, so with a node paused it holds the healthy nodes' permits for a socket timeout: one such pipeline
per follower at a time, far fewer than a node's permits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError

POOL_WAIT_S = 5.0  # a call waits this long for a free connection (single Redis) or its node's permit (cluster)


def key_of(args: tuple[Any, ...]) -> Any | None:
    """A key of a command as the store sends it (each command's keys are in one slot), found without asking
    Redis (redis-py's parser sends ``COMMAND GETKEYS`` for XREAD): EVAL/EVALSHA's first key, XREAD's first
    stream, else the first argument; None for a script with no key."""
    name = str(args[0]).upper()
    if name in ("EVAL", "EVALSHA"):
        return args[3] if len(args) > 3 and int(args[2]) > 0 else None
    if name.startswith("XREAD"):
        words = [str(a).upper() if isinstance(a, str) else a for a in args]
        return args[words.index("STREAMS") + 1] if "STREAMS" in words else None
    return args[1] if len(args) > 1 else None


class NodePermits:
    """Per node (by name, ``host:port``): at most ``limit`` calls under way; one more waits up to
    :data:`POOL_WAIT_S` for a permit of that node, never for another node's."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._nodes: dict[str, asyncio.Semaphore] = {}

    def in_use(self, node: str) -> int:
        """Permits of ``node`` held now."""
        sem = self._nodes.get(node)
        return 0 if sem is None else self.limit - sem._value

    async def take(self, nodes: Iterable[str]) -> list[asyncio.Semaphore]:
        """One permit of each node (in name order: two calls never wait for each other's); all or none."""
        held: list[asyncio.Semaphore] = []
        try:
            async with asyncio.timeout(POOL_WAIT_S):
                for name in sorted(set(nodes)):
                    sem = self._nodes.setdefault(name, asyncio.Semaphore(self.limit))
                    await sem.acquire()
                    held.append(sem)
        except BaseException as exc:
            for sem in held:
                sem.release()
            if isinstance(exc, TimeoutError):
                raise MaxConnectionsError(f"no connection to the node free within {POOL_WAIT_S:.0f} s") from None
            raise
        return held

    @contextlib.asynccontextmanager
    async def hold(self, nodes: Iterable[str]) -> Any:
        held = await self.take(nodes)
        try:
            yield
        finally:
            for sem in held:
                sem.release()


class PermittedCluster(RedisCluster):
    """``RedisCluster`` whose calls to a node hold one of that node's permits (see the module)."""

    def __init__(self, *args: Any, node_permits: int = 50, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.permits = NodePermits(node_permits)
        self.failed: str | None = None  # the node a call failed on last (a timeout, a refused connection)

    async def _execute_command(self, target_node: ClusterNode, *args: Any, **kwargs: Any) -> Any:
        async with self.permits.hold([target_node.name]):
            try:
                return await super()._execute_command(target_node, *args, **kwargs)
            except (RedisConnectionError, RedisTimeoutError):
                self.failed = target_node.name
                raise

    async def initialize(
        self,
        additional_startup_nodes_info: list[tuple[str, int]] | None = None,
        last_failed_node_name: str | None = None,
    ) -> RedisCluster:
        """After a call failed on a node, the client finds the nodes again before its next call (every call
        waits for that): through the seeds in random order, so a paused node's CLUSTER SLOTS held every call
        for a socket timeout one time in three. The node that failed last is asked last."""
        return await super().initialize(additional_startup_nodes_info, last_failed_node_name or self.failed)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")  # as redis-py's
        return PermittedPipeline(self, transaction)  # type: ignore[abstract]  # (as redis-py's own)


class PermittedPipeline(ClusterPipeline):
    """A pipeline (or transaction) holding the permits of the nodes its commands map to while it runs."""

    cluster_client: PermittedCluster

    def __init__(self, client: PermittedCluster, transaction: bool | None = None) -> None:
        super().__init__(client, transaction)
        self._fx_queued: list[tuple[Any, ...]] = []
        self._fx_nodes: set[str] = set()
        self._fx_held: list[asyncio.Semaphore] = []

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        self._fx_queued.append(args)
        return super().execute_command(*args, **kwargs)

    async def _fx_take(self, commands: Iterable[tuple[Any, ...]]) -> None:
        client = self.cluster_client
        nodes: set[str] = set()
        for args in commands:
            key = key_of(args)
            if key is not None:
                nodes.add(client.nodes_manager.get_node_from_slot(client.keyslot(key)).name)
        nodes -= self._fx_nodes
        if nodes:
            self._fx_held += await client.permits.take(nodes)
            self._fx_nodes |= nodes

    async def watch(self, *names: Any) -> None:  # type: ignore[override]  # (redis-py's pipeline's)
        await self._fx_take([("WATCH", *names)])
        await super().watch(*names)  # type: ignore[no-untyped-call]

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        try:
            await self._fx_take(self._fx_queued)
        except BaseException:
            await self.reset()
            raise
        return await super().execute(raise_on_error, allow_redirections)  # resets: the permits go back

    async def reset(self) -> None:  # type: ignore[override]  # (redis-py's pipeline's)
        try:
            await super().reset()  # type: ignore[no-untyped-call]
        finally:
            held, self._fx_held = self._fx_held, []
            self._fx_queued, self._fx_nodes = [], set()
            for sem in held:
                sem.release()

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

So a call waits only for calls to its own node(s). A call made while its task holds a permit (a read
between a transaction's WATCH and its EXEC, on the same node or another: a fence id's release, a mob's
members; a redirected command of a pipeline) takes none (:data:`_held`, the task's nodes): two bursts,
each holding one node's permits and asking for the other's, would otherwise wait for each other and all
fail. So the bound holds for the calls that start a task's use of a node; calls nested in them add to it.

A transaction's commands are mapped to their slot here, from their keys (:func:`transaction_slot`): redis-py
8's ``TransactionStrategy.execute_command`` does it by running each command's slot lookup in a new thread
with its own event loop, joined on the caller's: a put of 1,000 fences (4,000 commands) stopped the
loop of every farm for about 3 s (and after a failure it found the nodes again in that thread, against
this loop's lock: frozen, or a 500). A command the store does not send in a transaction
(:func:`transaction_slot`) is refused, never sent through that thread; redis-py's own path is left only if
the strategy's private names this relies on are gone (redis-py is pinned below 9; a unit test checks them).

What is left: a pipeline over several nodes (the follower's read of every feed, a worker's load) holds each
of its nodes' permits until its slowest node answers, so with a node paused it holds the healthy nodes'
permits for a socket timeout: one such pipeline per follower at a time, far fewer than a node's permits. A
pipeline's permits are those of the nodes its slots map to before it runs: a retry after a failover sends
to the promoted node without taking its permit.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

from redis.asyncio.cluster import AbstractStrategy, ClusterNode, ClusterPipeline, RedisCluster, TransactionStrategy
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import CrossSlotTransactionError, MaxConnectionsError, RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

POOL_WAIT_S = 5.0  # a call waits this long for a free connection (single Redis) or its node's permit (cluster)

# the nodes whose permits the running task holds (a frozenset: tasks it starts see a copy)
_held: ContextVar[frozenset[str]] = ContextVar("fencex_store_held_nodes", default=frozenset())

# redis-py's internals this module hooks (redis-py 8: pinned below 9); checked at import, so an upgrade that
# moves them fails loudly here (the per-node bound) or falls back to redis-py's own path (the transaction's)
if "target_node" not in inspect.signature(RedisCluster._execute_command).parameters:
    raise ImportError("fencex.store.cluster: redis-py's RedisCluster._execute_command(target_node, ...) is gone")
_TXN_NAMES = ("_watching", "_explicit_transaction", "_pipeline_slots", "_command_queue")
_TXN_METHODS = ("_immediate_execute_command", "_validate_watch", "IMMEDIATE_EXECUTE_COMMANDS")
FAST_TRANSACTIONS = all(hasattr(TransactionStrategy, n) for n in _TXN_METHODS)


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


# the commands the store sends in a transaction whose every argument after the name is a key, and those whose
# first argument is their one key (the rest values): their slot is known without asking Redis
ALL_KEYS = frozenset({"WATCH", "DEL", "UNLINK", "EXISTS", "MGET", "TOUCH"})
FIRST_KEY = frozenset(
    {
        "GET", "SET", "SETNX", "GETDEL", "APPEND", "STRLEN", "INCR", "INCRBY", "DECR", "DECRBY", "EXPIRE",
        "PEXPIRE", "EXPIREAT", "PERSIST", "TYPE", "SADD", "SREM", "SCARD", "SMEMBERS", "SISMEMBER",
        "HSET", "HSETNX", "HGET", "HDEL", "HGETALL", "HMGET", "HINCRBY", "HLEN", "HEXISTS", "LRANGE", "RPUSH",
        "LPUSH", "LTRIM", "LLEN", "XADD", "XTRIM", "XLEN", "ZADD", "ZREM", "ZRANGE", "ZCARD",
        "SMISMEMBER", "SSCAN", "SRANDMEMBER", "SPOP", "HSCAN", "HKEYS", "HVALS", "HMSET", "HSTRLEN", "SETEX",
        "PSETEX", "GETSET", "GETEX", "GETRANGE", "SETRANGE", "TTL", "PTTL", "XRANGE", "XREVRANGE", "XDEL",
        "XINFO STREAM", "LPOP", "RPOP", "LREM", "LINDEX", "LSET", "ZSCORE", "ZINCRBY", "ZRANGEBYSCORE",
        "ZREMRANGEBYSCORE", "ZREMRANGEBYRANK", "MEMORY USAGE", "DUMP", "RESTORE",
    }
)  # fmt: skip


def transaction_slot(args: tuple[Any, ...], keyslot: Any) -> int | None:
    """The one slot of a command queued in a transaction (CrossSlotTransactionError if its keys are in
    several); None for a command not listed here (EVAL/EVALSHA: their keys; WATCH, DEL...: every key)."""
    name = str(args[0]).upper()
    if name in ("EVAL", "EVALSHA"):
        keys = list(args[3 : 3 + int(args[2])]) if len(args) > 2 else []
    elif name in ALL_KEYS:
        keys = list(args[1:])
    elif name in FIRST_KEY and len(args) > 1:
        keys = [args[1]]
    else:
        return None
    slots = {keyslot(k) for k in keys}
    if len(slots) > 1:
        raise CrossSlotTransactionError(f"{name}: keys in {len(slots)} slots in one transaction")
    return slots.pop() if slots else None


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
        """One permit of each node (in name order: two calls never wait for each other's); all or none; none
        for a task that holds a permit already (:data:`_held`, which the caller marks while it holds them)."""
        held: list[asyncio.Semaphore] = []
        if _held.get():  # a call nested in one holding a permit waits for none (no two calls wait on each other)
            return held
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
        names = set(nodes)
        held = await self.take(names)
        token = _held.set(_held.get() | names)
        try:
            yield
        finally:
            _held.reset(token)
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
        strategy = self._execution_strategy
        if not isinstance(strategy, TransactionStrategy):
            return super().execute_command(*args, **kwargs)
        if not (FAST_TRANSACTIONS and all(hasattr(strategy, n) for n in _TXN_NAMES)):  # another redis-py
            return super().execute_command(*args, **kwargs)
        slot = transaction_slot(args, self.cluster_client.keyslot)
        if slot is None:  # a command the store does not send in a transaction: refused, never a thread
            raise RedisClusterException(f"fencex.store.cluster: {args[0]!r} is not mapped to a slot in a transaction")
        return self._fx_transaction_command(strategy, slot, args, kwargs)

    def _fx_transaction_command(self, strategy: Any, slot: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """redis-py's ``TransactionStrategy._execute_command`` with the slot known, on this loop, no thread:
        sent at once while watching (before MULTI; the nodes found again first if a failure asked for it),
        else queued."""
        if (
            strategy._watching or args[0] in strategy.IMMEDIATE_EXECUTE_COMMANDS
        ) and not strategy._explicit_transaction:
            if args[0] == "WATCH":
                strategy._validate_watch()
            if strategy._pipeline_slots and slot not in strategy._pipeline_slots:
                raise CrossSlotTransactionError("Cannot watch or send commands on different slots")
            strategy._pipeline_slots.add(slot)
            return self._fx_immediate(strategy, args, kwargs)
        strategy._pipeline_slots.add(slot)
        return AbstractStrategy.execute_command(strategy, *args, **kwargs)  # the queue's append

    async def _fx_immediate(self, strategy: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        client = self.cluster_client
        if client._initialize:  # as redis-py's own, but on this loop (its lock is this loop's)
            await client.initialize()
        return await strategy._immediate_execute_command(*args, **kwargs)

    async def _fx_take(self, commands: Iterable[tuple[Any, ...]]) -> None:
        client = self.cluster_client
        nodes: set[str] = set()
        for args in commands:
            key = key_of(args)
            if key is not None:
                nodes.add(client.nodes_manager.get_node_from_slot(client.keyslot(key)).name)
        nodes -= self._fx_nodes | _held.get()
        if nodes:
            self._fx_held += await client.permits.take(nodes)
            self._fx_nodes |= nodes
            _held.set(_held.get() | nodes)  # this task's later calls to them take none (until reset)

    async def watch(self, *names: Any) -> Any:  # type: ignore[override]  # (redis-py's pipeline's)
        strategy = self._execution_strategy
        if isinstance(strategy, TransactionStrategy) and getattr(strategy, "_explicit_transaction", False):
            raise RedisError("Cannot issue a WATCH after a MULTI")  # as redis-py's (it would empty the queue)
        await self._fx_take([("WATCH", *names)])
        if isinstance(strategy, TransactionStrategy):  # as its watch(), through ours
            return await self.execute_command("WATCH", *names)
        return await super().watch(*names)  # type: ignore[no-untyped-call]  # raises: not a transaction

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
            if self._fx_nodes:
                _held.set(_held.get() - self._fx_nodes)
            self._fx_queued, self._fx_nodes = [], set()
            for sem in held:
                sem.release()

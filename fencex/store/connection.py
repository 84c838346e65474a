"""The store's connection to Redis, shared by all its parts, and :func:`guard`, which maps
redis-py's errors to fencex's at the edge: every connection error leaves as StoreUnavailable.

The URL chooses the client: ``redis://`` (or ``rediss://``) one Redis, ``redis+cluster://host:port[,host:port...]``
(or ``rediss+cluster://``) a Redis Cluster, through redis-py's ``redis.asyncio.cluster.RedisCluster`` (the
nodes given are seeds: the client finds the others). The store's keys and scripts are the same on both
(``fencex.store.base``): each script, transaction and multi-key command touches one slot.

No I/O in ``__init__``: ``connect()`` opens the connection and checks it.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeAlias, TypeVar, cast
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import (
    AskError,
    ClusterError,
    OutOfMemoryError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fencex.errors import Misconfigured, StoreUnavailable
from fencex.store.base import Keys, tag_of
from fencex.store.cluster import POOL_WAIT_S, PermittedCluster
from fencex.store.scripts import APPEND_EVENTS, SAVE_ALL, SAVE_FARM, SAVE_PART

P = ParamSpec("P")
R = TypeVar("R")

# The store's client keeps redis-py's default decode_responses=False, so every reply is bytes;
# redis-py types replies for either setting (bytes | str), and the store narrows them with cast().
StreamEntries: TypeAlias = list[tuple[bytes, dict[bytes, bytes]]]  # XRANGE, XREVRANGE: (id, fields)
StreamsRead: TypeAlias = list[tuple[bytes, StreamEntries]] | None  # XREAD: (stream, entries), None if none came
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
POLL_S = 0.05  # on a cluster, streams of several slots are polled this often instead of one blocking read
HEALTH_TIMEOUT_S = 0.8  # a node that does not answer a readiness check within this is down (a probe waits 1 s)
FAN_OUT = 64  # connections a node's pool has beyond its permits (a redirected command uses another's)


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """The store's answer to a readiness check: its masters (1 for one Redis), those that did not answer
    within :data:`HEALTH_TIMEOUT_S` (by ``host:port``), and whether a node that answers says the cluster
    serves its slots (``cluster_state:ok``; Redis Cluster says ``fail`` for every slot while one is not
    served, unless ``cluster-require-full-coverage`` is off)."""

    nodes: int
    down: tuple[str, ...] = ()
    cluster_ok: bool = True

    @property
    def serving(self) -> bool:
        """Some farm's calls can be served: a node answers and the cluster serves."""
        return len(self.down) < self.nodes and self.cluster_ok

    @property
    def degraded(self) -> bool:
        """Serving, but some nodes do not answer: their farms' calls fail (503), the others' do not."""
        return self.serving and bool(self.down)


def cluster_seeds(url: str) -> tuple[str, list[tuple[str, int]]] | None:
    """For a ``redis+cluster://`` URL: the URL redis-py's cluster client reads (its first node, the
    scheme without ``+cluster``) and every node given, as seeds; None for a single Redis's URL."""
    parts = urlsplit(url)
    scheme = CLUSTER_SCHEMES.get(parts.scheme)
    if scheme is None:
        return None
    creds, _, hosts = parts.netloc.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for hp in hosts.split(","):
        host, _, port = hp.strip().rpartition(":")
        nodes.append((host or hp.strip(), int(port) if host else 6379))
    first = f"{nodes[0][0]}:{nodes[0][1]}"
    return urlunsplit((scheme, f"{creds}@{first}" if creds else first, "", parts.query, "")), nodes


def max_connections(url: str) -> int:
    """The URL's ``max_connections`` (redis-py's blocking pool's default, 50, when it has none)."""
    got = parse_qs(urlsplit(url).query).get("max_connections")
    return int(got[-1]) if got else 50


def without_max_connections(url: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "max_connections"]
    return urlunsplit(parts._replace(query=urlencode(query)))


def guard(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Map redis-py's errors raised by a coroutine function to fencex's (StoreUnavailable)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(f"redis does not answer: {exc}") from exc
        except (ClusterError, TryAgainError, SlotNotCoveredError) as exc:  # a node down, a slot moving or not served
            raise StoreUnavailable(f"the redis cluster does not answer: {exc}") from exc
        except AskError as exc:  # (and MOVED) a transaction on a slot being moved: redis-py follows neither there
            if not getattr(args[0], "cluster", False):
                raise  # redis:// to a cluster's node: a setting to fix (redis+cluster://), not an outage
            raise StoreUnavailable(f"the redis cluster is moving this slot: {exc}") from exc
        except ResponseError as exc:
            # Out of memory (maxmemory, noeviction) refuses writes until memory is freed: unavailable,
            # not a bug. redis-py raises OutOfMemoryError for a command or a pipeline, and a plain
            # ResponseError ("Error running script ... -OOM command not allowed ...") from a script.
            if isinstance(exc, OutOfMemoryError) or "OOM command not allowed" in str(exc):
                raise StoreUnavailable(f"redis is out of memory: {exc}") from exc
            raise

    return wrapper


class RedisConnection:
    """The connection and the key layout: what every part of ``RedisStore`` builds on."""

    url: str
    keys: Keys
    cluster: bool  # a Redis Cluster (the URL's scheme says so)
    _redis: aioredis.Redis | None
    _append_events: Any  # the registered scripts (fencex.store.scripts), set by connect()
    _save_part: Any
    _save_farm: Any
    _save_all: Any

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise StoreUnavailable("the store is not connected: call connect() first")
        return self._redis

    @guard
    async def connect(self) -> None:
        # A blocking pool: a burst of requests beyond its connections (max_connections in the URL,
        # 50 by default) waits up to 5 s for one instead of failing at once with "Too many connections".
        # A connection Redis dropped (a restart) fails once on its next use: that command is sent
        # again on a new connection (twice at most, after a few ms). Timeouts are not retried: a
        # paused Redis answers 503 after one socket timeout, not three.
        retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.2), 2, supported_errors=(RedisConnectionError,))
        seeds = cluster_seeds(self.url)
        if seeds is not None:
            # The cluster client keeps a pool per node (max_connections in the URL: per node); it follows
            # MOVED and ASK and finds the nodes again when a slot moves or a node fails.
            # redis-py's cluster client fails at once when a node's pool is full; the single client's blocking
            # pool waits. So that a burst waits here too, the URL's max_connections bounds the calls under way
            # to each node (fencex.store.cluster: a call waits up to POOL_WAIT_S for a permit of its own node,
            # never for another's, so a paused node holds up only the calls sent to it).
            url, nodes = seeds
            limit = max_connections(url)
            client = PermittedCluster.from_url(
                without_max_connections(url),
                node_permits=limit,
                max_connections=limit + FAN_OUT,
                startup_nodes=[ClusterNode(h, p) for h, p in nodes],
                socket_connect_timeout=3,
                socket_timeout=10,
                health_check_interval=30,
                # No retries by the cluster client: it retries timeouts too (three socket timeouts for a
                # paused node), and a pipeline that fails closes every node's connections before it tries
                # again (other farms' calls in flight on healthy nodes fail with it) and finds the nodes
                # again through whichever answers. A call to a node that fails is StoreUnavailable after one
                # timeout; MOVED and ASK are still followed, and the next call finds the nodes again.
                retry=Retry(NoBackoff(), 0),
            )
            self.cluster = True
            # the cluster client has the single client's command methods: the store uses those only
            self._redis = cast(aioredis.Redis, client)
            await client.initialize()
        else:
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url,
                timeout=POOL_WAIT_S,
                socket_connect_timeout=3,
                socket_timeout=10,
                health_check_interval=30,
                retry=retry,
            )
            self.cluster = False
            self._redis = aioredis.Redis.from_pool(pool)  # closing the client closes the pool
            await self._redis.ping()
        await self._check_groups()
        self._append_events = self._redis.register_script(APPEND_EVENTS)
        self._save_part = self._redis.register_script(SAVE_PART)
        self._save_farm = self._redis.register_script(SAVE_FARM)
        self._save_all = self._redis.register_script(SAVE_ALL)

    async def _check_groups(self) -> None:
        """Record the store's number of groups (FENCEX_STORE_GROUPS) on first use; refuse another one: every
        farm's and device's keys and the change feeds are placed by it, so a service with another one would
        read and write beside the rest (fences missing from the workers' index, devices not found)."""
        key, groups = self.keys.store_groups, self.keys.groups
        await self.redis.set(key, groups, nx=True)
        stored = cast(bytes | None, await self.redis.get(key))
        if stored is not None and int(stored) != groups:
            await self.close()
            raise Misconfigured(
                f"FENCEX_STORE_GROUPS is {groups} but the store at this prefix is written with {int(stored)} groups: "
                "set it to that (changing it moves every farm's keys: see docs/design/redis-cluster.md, Upgrades)"
            )

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    @guard
    async def ping(self) -> bool:
        if self.cluster:  # every node: a slot without its node is an outage of part of the store
            got = await cast(Any, self.redis).ping(target_nodes=RedisCluster.ALL_NODES)
            return bool(got) if not isinstance(got, dict) else all(got.values())
        return bool(await self.redis.ping())

    async def health(self) -> StoreHealth:
        """Which of the store's nodes answer (each within :data:`HEALTH_TIMEOUT_S`, all at once), for /readyz:
        one node down of several is a partial outage (the farms whose slots it serves), not the store's."""
        if self._redis is None:
            return StoreHealth(1, ("not connected",), False)
        if not self.cluster:
            ok = await _within(self.redis.ping()) is not None
            return StoreHealth(1, () if ok else (urlsplit(self.url).netloc.rpartition("@")[2],), ok)
        # each node asked itself (ClusterNode.execute_command): not through the client, whose call would first
        # find the nodes again after a failure (CLUSTER SLOTS, perhaps of the paused node), and whose search,
        # cut short by the timeout, closes every node's connections
        primaries = cast(RedisCluster, self.redis).get_primaries()
        infos = await asyncio.gather(*(_within(node.execute_command("CLUSTER INFO")) for node in primaries))
        down = tuple(sorted(node.name for node, info in zip(primaries, infos) if info is None))
        states = [_cluster_state(info) for info in infos if info is not None]
        return StoreHealth(len(primaries), down, "ok" in states)

    async def _by_group(self, key: Callable[[str], str], names: Sequence[str]) -> dict[str, bytes | None]:
        """Fields ``names`` of a per-group hash (``key(group)``), each read from its own group's."""
        by_group: dict[str, list[str]] = {}
        for n in names:
            by_group.setdefault(self.keys.group(n), []).append(n)
        if not by_group:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for group, some in by_group.items():
                pipe.hmget(key(group), some)
            got = cast(list[list[bytes | None]], await pipe.execute())
        return {n: r for some, raws in zip(by_group.values(), got) for n, r in zip(some, raws)}

    async def _mgets(self, batches: Sequence[Sequence[str]]) -> list[list[bytes | None]]:
        """MGET of each batch of keys (the keys of a batch in one slot): in one pipeline on one Redis; on
        a cluster (whose pipelines refuse MGET) all at once, each to its slot's node."""
        if not self.cluster:
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys in batches:
                    pipe.mget(keys)
                return cast(list[list[bytes | None]], await pipe.execute())
        got = await asyncio.gather(*(self.redis.mget(keys) for keys in batches))
        return cast(list[list[bytes | None]], got)

    async def _xread(self, streams: Mapping[str, str], block_ms: int, count: int) -> list[tuple[bytes, StreamEntries]]:
        """XREAD of several streams, waiting up to ``block_ms`` for any: one blocking read on one Redis.
        On a cluster one XREAD may name the streams of one slot only: those of each slot are read
        without blocking, all in one pipeline (a round trip per node), every :data:`POLL_S` until
        something comes or ``block_ms`` has passed."""
        if not streams:
            return []
        if not self.cluster:
            one: dict[Any, Any] = dict(streams)  # redis-py types the mapping with an invariant key
            return cast(StreamsRead, await self.redis.xread(one, block=block_ms, count=count)) or []
        slots: dict[str, dict[Any, Any]] = {}
        for name, after in streams.items():
            slots.setdefault(tag_of(name), {})[name] = after
        deadline = time.monotonic() + block_ms / 1000
        while True:
            async with self.redis.pipeline(transaction=False) as pipe:
                for some in slots.values():
                    pipe.xread(some, count=count)
                got = cast(list[StreamsRead], await pipe.execute())
            out = [entry for reply in got for entry in reply or []]
            left = deadline - time.monotonic()
            if out or left <= 0:
                return out
            await asyncio.sleep(min(POLL_S, left))


async def _within(call: Awaitable[Any]) -> Any | None:
    """What ``call`` answers within :data:`HEALTH_TIMEOUT_S`; None if it fails or does not answer by then."""
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            return await call
    except (RedisError, OSError, TimeoutError):
        return None


def _cluster_state(info: Any) -> str:
    """``cluster_state`` of a node's CLUSTER INFO answer (parsed to a dict by redis-py, or its text)."""
    if isinstance(info, bytes | str):
        text = info.decode() if isinstance(info, bytes) else info
        info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    state = info.get("cluster_state", "") if isinstance(info, dict) else ""
    return state.decode() if isinstance(state, bytes) else str(state)

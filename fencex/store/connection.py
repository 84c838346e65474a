"""The store's connection to Redis, shared by all its parts, and :func:`guard`, which maps
redis-py's errors to fencex's at the edge: every connection error leaves as StoreUnavailable.

No I/O in ``__init__``: ``connect()`` opens the connection and checks it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeAlias, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fencex.errors import StoreUnavailable
from fencex.store.base import Keys
from fencex.store.scripts import APPEND_EVENTS, SAVE_BATCH

P = ParamSpec("P")
R = TypeVar("R")

# The store's client keeps redis-py's default decode_responses=False, so every reply is bytes;
# redis-py types replies for either setting (bytes | str), and the store narrows them with cast().
StreamEntries: TypeAlias = list[tuple[bytes, dict[bytes, bytes]]]  # XRANGE, XREVRANGE: (id, fields)
StreamsRead: TypeAlias = list[tuple[bytes, StreamEntries]] | None  # XREAD: (stream, entries), None if none came


def guard(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Map redis-py's errors raised by a coroutine function to fencex's (StoreUnavailable)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(f"redis does not answer: {exc}") from exc
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
    _redis: aioredis.Redis | None
    _append_events: Any  # the registered scripts (fencex.store.scripts), set by connect()
    _save_batch: Any

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
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            timeout=5,
            socket_connect_timeout=3,
            socket_timeout=10,
            health_check_interval=30,
            retry=retry,
        )
        self._redis = aioredis.Redis.from_pool(pool)  # closing the client closes the pool
        await self._redis.ping()
        self._append_events = self._redis.register_script(APPEND_EVENTS)
        self._save_batch = self._redis.register_script(SAVE_BATCH)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    @guard
    async def ping(self) -> bool:
        return bool(await self.redis.ping())

"""The change feed in Redis: a capped stream of fence and device changes, written in the same
transaction as each change and read by the followers (``fencex.follower``)."""

from __future__ import annotations

from typing import Any, cast

from redis.exceptions import ResponseError

from fencex.store.base import Change, feed_trimmed
from fencex.store.connection import RedisConnection, StreamEntries, StreamsRead, guard

CHANGES_MAXLEN = 100_000


class RedisFeed(RedisConnection):
    """Writes to the change feed (inside a caller's transaction) and reads from it."""

    def _feed(self, pipe: Any, kind: str, op: str, key: str, tenant: str, version: int) -> None:
        pipe.xadd(
            self.keys.changes,
            {"kind": kind, "op": op, "id": key, "tenant": tenant, "version": version},
            maxlen=CHANGES_MAXLEN,
            approximate=True,
        )

    @guard
    async def last_change_id(self) -> str:
        entries = cast(StreamEntries, await self.redis.xrevrange(self.keys.changes, count=1))
        return entries[0][0].decode() if entries else "0-0"

    @guard
    async def changes(self, after: str, block_ms: int = 500, count: int = 10_000) -> list[Change]:
        got = cast(StreamsRead, await self.redis.xread({self.keys.changes: after}, block=block_ms, count=count))
        out: list[Change] = []
        for _stream, entries in got or []:
            for entry_id, f in entries:
                out.append(
                    Change(
                        entry_id.decode(),
                        f[b"kind"].decode(),
                        f[b"op"].decode(),
                        f[b"id"].decode(),
                        f[b"tenant"].decode(),
                        int(f[b"version"]),
                    )
                )
        return out

    @guard
    async def changes_trimmed(self, after: str) -> bool:
        """Whether changes after ``after`` may be gone from the capped feed (see :func:`feed_trimmed`):
        a follower at ``after`` must then reload in full. Ask it after reading from ``after``."""
        try:
            info = await self.redis.xinfo_stream(self.keys.changes)
        except ResponseError as exc:
            if "no such key" not in str(exc).lower():
                raise
            info = None
        return feed_trimmed(after, info, CHANGES_MAXLEN)

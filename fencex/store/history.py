"""The event history in Redis: each tenant's capped stream of recent events, written once per
event (``fencex.store.scripts.APPEND_EVENTS``), read by page and followed live."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, cast

import orjson

from fencex.store.connection import RedisConnection, StreamEntries, guard


class RedisHistory(RedisConnection):
    """Appends to and reads from the tenants' event histories."""

    history_maxlen: int

    @guard
    async def append_events(self, events: Iterable[dict[str, Any]]) -> int:
        """Add events to their tenants' capped histories, each once (by event_id): one script call per
        farm group on a cluster, one in all on one Redis (a retract forgets the marker of the event it
        withdraws, of the same farm)."""
        calls: dict[str, tuple[list[str], list[Any]]] = {}  # one call per farm group: its slot's keys only
        for e in events:
            t = e["tenant"]
            keys, argv = calls.setdefault(self.keys.group(t), ([], [self.history_maxlen]))
            seen = self.keys.seen(t, e["event_id"])
            gone = e.get("retracts")
            keys.extend((seen, self.keys.events(t), self.keys.seen(t, gone) if gone else seen))
            argv.append(orjson.dumps(e))
        if not self.cluster and len(calls) > 1:  # one Redis: no slots, one call for every group
            keys, argv = [], [self.history_maxlen]
            for k, a in calls.values():
                keys.extend(k)
                argv.extend(a[1:])
            calls = {"": (keys, argv)}
        added = await asyncio.gather(*(self._append_events(keys=k, args=a) for k, a in calls.values()))
        return sum(int(n) for n in added)

    @guard
    async def history(self, tenant: str, after: str = "-", count: int = 1000) -> list[tuple[str, dict[str, Any]]]:
        start = after if after == "-" else f"({after}"
        got = cast(StreamEntries, await self.redis.xrange(self.keys.events(tenant), min=start, max="+", count=count))
        return [(i.decode(), orjson.loads(f[b"e"])) for i, f in got]

    @guard
    async def history_back(self, tenant: str, before: str = "+", count: int = 1000) -> list[tuple[str, dict[str, Any]]]:
        """The history read backwards from the newest (or from before ``before``): newest first."""
        end = before if before == "+" else f"({before}"
        got = cast(StreamEntries, await self.redis.xrevrange(self.keys.events(tenant), max=end, min="-", count=count))
        return [(i.decode(), orjson.loads(f[b"e"])) for i, f in got]

    @guard
    async def last_event_id(self, tenant: str) -> str:
        got = cast(StreamEntries, await self.redis.xrevrange(self.keys.events(tenant), count=1))
        return got[0][0].decode() if got else "0-0"

    @guard
    async def follow(
        self, after: Mapping[str, str], block_ms: int = 1000, count: int = 1000
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """Events after the given ids in these tenants' histories, as (tenant, id, event),
        waiting up to ``block_ms``: one blocking read however many tenants."""
        if not after:
            return []
        names = {self.keys.events(t): t for t in after}
        got = await self._xread({k: after[t] for k, t in names.items()}, block_ms, count)
        return [
            (names[stream.decode()], i.decode(), orjson.loads(f[b"e"])) for stream, entries in got for i, f in entries
        ]

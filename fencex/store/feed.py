"""The change feed in Redis: one capped stream per group (``{P}:{g}:changes``), each written in the
same transaction as each change of its group's farms or devices, and read together by the followers
(``fencex.follower``): no one stream (one slot of a cluster) carries every change of the country.

A follower's position is one string, opaque to it: each feed's last id read, in group order, joined
by spaces (``"0-0"`` alone: from the start of every feed). A position for another number of groups
is one whose changes may be gone (:meth:`RedisFeed.trimmed_feeds`: every feed): the follower reloads. A follower
whose position fell behind one feed's cap reloads that feed's group only (its farms' fences, mobs and herd
settings, its devices' registrations)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from redis.exceptions import ResponseError

from fencex.store.base import Change, feed_trimmed, feed_unsure
from fencex.store.connection import RedisConnection, guard

CHANGES_MAXLEN = 100_000  # per feed


class RedisFeed(RedisConnection):
    """Writes to the change feeds (inside a caller's transaction) and reads from them."""

    def _feed(self, pipe: Any, group: str, kind: str, op: str, key: str, tenant: str, version: int) -> None:
        pipe.xadd(
            self.keys.changes(group),
            {"kind": kind, "op": op, "id": key, "tenant": tenant, "version": version},
            maxlen=CHANGES_MAXLEN,
            approximate=True,
        )

    def _position(self, after: str) -> list[str] | None:
        """Each feed's id in a position; None when the position is for another number of feeds."""
        ids = after.split()
        if ids == ["0-0"]:
            return ["0-0"] * self.keys.groups
        return ids if len(ids) == self.keys.groups else None

    def feed_groups(self) -> list[str]:
        """Every group, in feed order (a position holds one id per group)."""
        return self.keys.all_groups

    def feed_group(self, name: str) -> str:
        """The group (and so the feed) of a farm or a device id."""
        return self.keys.group(name)

    @guard
    async def last_change_id(self, after: str | None = None, groups: Collection[str] | None = None) -> str:
        """The position after every change so far: each feed's last generated id ("0-0" where there is no
        feed). Not its last entry's: a feed emptied by hand (XTRIM MAXLEN 0) has none, and a position of
        "0-0" before entries Redis 7 says it deleted reads as trimmed (a reload on every step).
        With ``after`` and ``groups``: the position ``after`` with the feeds of ``groups`` only moved to
        their last id (what a follower reloading those groups follows from)."""
        ids = self._position(after) if after is not None else None
        if ids is None or groups is None:
            ids, groups = ["0-0"] * self.keys.groups, self.keys.all_groups
        wanted = [i for i, g in enumerate(self.keys.all_groups) if g in groups]
        async with self.redis.pipeline(transaction=False) as pipe:
            for i in wanted:
                pipe.xinfo_stream(self.keys.changes(self.keys.all_groups[i]))
            got = await pipe.execute(raise_on_error=False)
        for i, info in zip(wanted, got):
            if isinstance(info, ResponseError) and "no such key" in str(info).lower():
                ids[i] = "0-0"
            elif isinstance(info, BaseException):  # a node down, a timeout: the guard's StoreUnavailable
                raise info
            else:
                last = info["last-generated-id"]
                ids[i] = last.decode() if isinstance(last, bytes) else str(last)
        return " ".join(ids)

    @guard
    async def changes(self, after: str, block_ms: int = 500, count: int = 10_000) -> list[Change]:
        """The changes after ``after`` in every feed (up to ``count`` of each), waiting up to ``block_ms``
        for one; each change's ``id`` is the position after it. A position for another number of feeds
        reads nothing (:meth:`changes_trimmed` says so)."""
        ids = self._position(after)
        if ids is None:
            return []
        feeds = {self.keys.changes(g): i for i, g in enumerate(self.keys.all_groups)}
        got = await self._xread({name: ids[i] for name, i in feeds.items()}, block_ms, count)
        out: list[Change] = []
        for stream, entries in got:
            i = feeds[stream.decode()]
            for entry_id, f in entries:
                ids[i] = entry_id.decode()
                out.append(
                    Change(
                        " ".join(ids),
                        f[b"kind"].decode(),
                        f[b"op"].decode(),
                        f[b"id"].decode(),
                        f[b"tenant"].decode(),
                        int(f[b"version"]),
                    )
                )
        return out

    async def changes_trimmed(self, after: str) -> bool:
        """Whether changes after ``after`` may be gone from a capped feed (:meth:`trimmed_feeds`)."""
        return bool(await self.trimmed_feeds(after))

    @guard
    async def trimmed_feeds(self, after: str) -> set[str]:
        """The groups whose feed may have lost changes after ``after`` (see :func:`feed_trimmed`): a follower
        at ``after`` must reload those groups (every group, for a position for another number of feeds).
        Ask it after reading from ``after``."""
        ids = self._position(after)
        if ids is None:
            return set(self.keys.all_groups)
        async with self.redis.pipeline(transaction=False) as pipe:
            for group in self.keys.all_groups:
                pipe.xinfo_stream(self.keys.changes(group))
            got = await pipe.execute(raise_on_error=False)
        trimmed: set[str] = set()
        unsure: set[str] = set()  # Redis 6 cannot tell (feed_unsure): reloaded with the trimmed, if any
        for group, at, info in zip(self.keys.all_groups, ids, got):
            if isinstance(info, ResponseError) and "no such key" in str(info).lower():
                info = None
            elif isinstance(info, BaseException):  # a node down, a timeout: the guard's StoreUnavailable
                raise info
            if feed_trimmed(at, info, CHANGES_MAXLEN):
                trimmed.add(group)
            elif feed_unsure(at, info):
                unsure.add(group)
        return trimmed | unsure if trimmed else trimmed

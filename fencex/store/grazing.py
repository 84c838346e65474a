"""Grazing time in Redis: per farm and day of the farm (its time zone), a hash
``{p}:graze:{t}:{day}`` of ``fence id\\tmob id`` -> milliseconds of animal-time inside
(:mod:`fencex.grazing`; mob id ``""``: the farm's default mob).

Written by the worker's save (:meth:`RedisGrazing.grazing_writes` gives what to add: HINCRBY,
so the live credits and a late merge's corrections, negative ones included, add up), each key
given an expiry of :data:`GRAZING_TTL_S` (400 days: a year back and some) with each write; read
here, a farm's own days only.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from fencex.grazing import GrazingKey
from fencex.store.base import Keys
from fencex.store.connection import RedisConnection, guard

log = logging.getLogger("fencex.store")

GRAZING_TTL_S = 400 * 86_400  # the expiry the save sets on a day's grazing hash with each write
SEP = "\t"  # between the fence id and the mob id in a field (neither id can hold a tab)
DAYS_A_ROUND = 31  # days read in one round trip
IN_A_THREAD = 5_000  # fields read in a round trip beyond which they are decoded off the event loop


@dataclass(frozen=True, slots=True)
class GrazingRow:
    """One fence's grazing by one mob on one day (the farm's)."""

    day: str  # YYYY-MM-DD
    fence_id: str
    mob_id: str  # "": the farm's default mob
    ms: int  # milliseconds of animal-time inside


def field_of(fence_id: str, mob_id: str) -> str:
    return f"{fence_id}{SEP}{mob_id}"


def rows_of(day: str, fields: Mapping[bytes, bytes], fence_ids: Collection[str] | None) -> list[GrazingRow]:
    """A day's hash as rows (of ``fence_ids`` only, unless None), by fence then mob. A field that does
    not read (no tab, not an integer) is left out, logged; so is a total not above zero (a correction
    that brought it to nothing)."""
    out: list[GrazingRow] = []
    for raw, value in fields.items():
        name = raw.decode(errors="replace")
        fid, sep, mob = name.partition(SEP)
        if fence_ids is not None and fid not in fence_ids:
            continue
        try:
            ms = int(value)
        except ValueError:
            ms = 0
            sep = ""
        if not sep:
            log.error("grazing field %r of %s is unreadable and left out", name[:200], day)
            continue
        if ms > 0:
            out.append(GrazingRow(day, fid, mob, ms))
    out.sort(key=lambda r: (r.fence_id, r.mob_id))
    return out


def _decode(
    days: Sequence[str], got: Sequence[Mapping[bytes, bytes]], fence_ids: Collection[str] | None
) -> list[GrazingRow]:
    return [row for day, fields in zip(days, got) for row in rows_of(day, fields, fence_ids)]


def writes_of(keys: Keys, acc: Mapping[GrazingKey, int]) -> dict[str, dict[str, int]]:
    """:meth:`RedisGrazing.grazing_writes` (the worker's save calls it with its keys)."""
    out: dict[str, dict[str, int]] = {}
    for (tenant, fid, mob, day), ms in acc.items():
        if ms:
            fields = out.setdefault(keys.grazing(tenant, day), {})
            f = field_of(fid, mob)
            fields[f] = fields.get(f, 0) + ms
    return {k: {f: v for f, v in fields.items() if v} for k, fields in out.items()}


class RedisGrazing(RedisConnection):
    """Reads the farms' grazing time; says what the worker's save adds to it."""

    def grazing_writes(self, acc: Mapping[GrazingKey, int]) -> dict[str, dict[str, int]]:
        """What to add to the store for ``acc`` (``Processed.grazing``, or a late merge's ``Merged.grazing``):
        key (``Keys.grazing(tenant, day)``) -> field (``fence id\\tmob id``) -> milliseconds, for
        ``HINCRBY`` (a negative one: a late fix's correction); zeros left out. The save gives each key
        written an expiry of :data:`GRAZING_TTL_S` (400 days) in the same step. No I/O."""
        return writes_of(self.keys, acc)

    @guard
    async def grazing(
        self, tenant: str, days: Sequence[str], fence_ids: Collection[str] | None = None
    ) -> list[GrazingRow]:
        """The farm's grazing on ``days`` (YYYY-MM-DD, the farm's), by day, fence, mob: of every fence,
        or of ``fence_ids`` only. For a few fences each day's hash is scanned for their fields (HSCAN
        MATCH, in steps: one large farm's hash never holds Redis up for long), else read whole."""
        rows: list[GrazingRow] = []
        for start in range(0, len(days), DAYS_A_ROUND):
            some = days[start : start + DAYS_A_ROUND]
            if fence_ids is not None and len(fence_ids) <= 8:
                got = await self._scan(tenant, some, fence_ids)
            else:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for day in some:
                        pipe.hgetall(self.keys.grazing(tenant, day))
                    got = cast(list[dict[bytes, bytes]], await pipe.execute())
            if sum(len(fields) for fields in got) > IN_A_THREAD:  # a large farm's days: other farms' requests go on
                rows.extend(await asyncio.to_thread(_decode, some, got, fence_ids))
            else:
                rows.extend(_decode(some, got, fence_ids))
        return rows

    async def _scan(self, tenant: str, days: Sequence[str], fence_ids: Iterable[str]) -> list[dict[bytes, bytes]]:
        """Each day's fields of ``fence_ids``: the first HSCAN of every (day, fence) in one round trip
        (a small hash answers whole at once), then the scans not done, one step at a time."""
        todo = [
            (i, self.keys.grazing(tenant, day), re.sub(r"([*?\[\]\\])", r"\\\1", fid) + SEP + "*")
            for i, day in enumerate(days)
            for fid in fence_ids
        ]
        found: list[dict[bytes, bytes]] = [{} for _ in days]
        cursors: list[Any] = [0] * len(todo)
        while todo:
            async with self.redis.pipeline(transaction=False) as pipe:
                for (_, key, match), cursor in zip(todo, cursors):
                    pipe.hscan(key, cursor, match=match, count=1000)
                replies = await pipe.execute()
            left, cursors = [], []
            for job, (cursor, page) in zip(todo, replies):
                found[job[0]].update(cast(dict[bytes, bytes], page))
                if int(cursor):
                    left.append(job)
                    cursors.append(cursor)
            todo = left
        return found

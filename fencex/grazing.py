"""Grazing time: each fence's animal-time inside, per farm, mob and day of the farm (issue 12, part 3).

Grazing is a ``dict`` (tenant, fence id, mob id, day ``YYYY-MM-DD`` in the farm's time zone) ->
milliseconds of animal-time inside (a mob id ``""``: the farm's default mob). Computed in event
time from each device's fixes, by one rule (:func:`credit_after`):

- when a device with a state gets its next applied fix (not stale; trusted or not) at ``t1``, the
  fences it is a member of (``DeviceState.members``: from its enter to its exit, the exit buffer
  included) are credited from its previous fix's time ``t0`` to ``t1``;
- at most the farm's ``silence_s`` after that previous fix: a collar that said nothing for longer
  is not counted as grazing all that while (a farm with no finite ``silence_s``, the fence rules
  alone, keeps no grazing: :func:`cap_of`);
- a schedule's transition (:func:`fencex.pipeline.reevaluate_all` with ``at_ms``) that changes
  the device's fences credits its fences up to the transition, and the device's ``sched_ms``
  (the transition) starts the next interval: no interval is counted twice, and the cap still
  counts from the last fix;
- an interval over the farm's midnight is split between the two days (a day of a change of
  daylight saving time is 23 or 25 hours long).

A fence change (reshaped, deleted) re-decides a device's memberships at its last accepted fix
(:func:`fencex.detector.reevaluate`): its events and so its grazing are as of that fix, and nothing
is credited then. A late fix corrects what was credited: :func:`fencex.late.merge` gives the delta
(its ``Merged.grazing``). Pure: no server library.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from fencex.herd import HerdRules, zone

if TYPE_CHECKING:
    from fencex.detector import DeviceState

GrazingKey = tuple[str, str, str, str]  # tenant, fence id, mob id, day (YYYY-MM-DD, the farm's)
Grazing = dict[GrazingKey, int]  # -> milliseconds of animal-time inside
# What the credits add into: a one-item list per key, so a credit is one dict lookup, not two (the pipeline's
# fast path credits every fix of a device inside a fence); :func:`totals` gives the Grazing.
Cells = dict[GrazingKey, list[int]]
_DAY = timedelta(days=1)


def cap_of(rules: HerdRules) -> int | None:
    """The most one interval between two fixes counts (ms): the farm's ``silence_s``; None when it
    has none (``NO_HERD``: the fence rules alone keep no grazing)."""
    s = rules.silence_s
    return int(s * 1000) if math.isfinite(s) else None


class Days:
    """A time zone's days as spans of epoch milliseconds ``[start, end)``, the last one asked kept."""

    __slots__ = ("last", "zone")

    def __init__(self, tz: ZoneInfo) -> None:
        self.zone = tz
        self.last: tuple[int, int, str] = (0, 0, "")  # one tuple, replaced whole: safe to read from any thread

    def span(self, t_ms: int) -> tuple[int, int, str]:
        """The day holding the instant ``t_ms``: (its first instant, the next day's first, YYYY-MM-DD)."""
        last = self.last
        if last[0] <= t_ms < last[1]:
            return last
        d = self.date_at(t_ms)
        start = self.first_instant(d)
        end = self.first_instant(d + _DAY)
        got = self.last = (start, end, d.isoformat())
        return got

    def date_at(self, t_ms: int) -> date:
        return datetime.fromtimestamp(t_ms / 1000, self.zone).date()

    def first_instant(self, d: date) -> int:
        """The first millisecond whose local date is ``d`` or later (a day whose midnight a change of
        daylight saving time skips starts at the change; a day the zone skipped has none)."""
        guess = round(datetime.combine(d, time(0), self.zone).timestamp() * 1000)
        if self.date_at(guess) >= d and self.date_at(guess - 1) < d:
            return guess
        lo, hi = guess - 2 * 86_400_000, guess + 2 * 86_400_000  # lo before d, hi in it or after: bisect
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.date_at(mid) >= d:
                hi = mid
            else:
                lo = mid
        return hi


UTC_DAYS = Days(zone("UTC"))
_DAYS: dict[str, Days] = {"UTC": UTC_DAYS}


def days_of(name: str) -> Days:
    """The :class:`Days` of the IANA zone ``name`` (kept); ValueError for an unknown zone."""
    got = _DAYS.get(name)
    if got is None:
        got = _DAYS[name] = Days(zone(name))
    return got


def credit(
    acc: Cells,
    tenant: str,
    fences: Iterable[str],
    mob_id: str,
    t0: int,
    t1: int,
    cap_ms: int,
    tz: str | Days,
) -> None:
    """Add ``min(t1 - t0, cap_ms)`` ms from ``t0`` to each of ``fences`` (for ``mob_id`` of
    ``tenant``) in ``acc``, split at the midnights of the zone ``tz`` (an IANA name, or its
    :class:`Days`). Nothing when that is not positive."""
    ms = t1 - t0
    if ms > cap_ms:
        ms = cap_ms
    if ms <= 0:
        return
    days = tz if isinstance(tz, Days) else days_of(tz)
    start, end, day = days.last
    if start <= t0 and t0 + ms <= end:  # within the day last asked: the common case
        for fid in fences:
            key = (tenant, fid, mob_id, day)
            cell = acc.get(key)
            if cell is None:
                acc[key] = cell = [0]
            cell[0] += ms
        return
    t, stop = t0, t0 + ms
    while t < stop:
        _, end, day = days.span(t)
        part = (end if end < stop else stop) - t
        for fid in fences:
            key = (tenant, fid, mob_id, day)
            cell = acc.get(key)
            if cell is None:
                acc[key] = cell = [0]
            cell[0] += part
        t += part


def credit_after(acc: Cells, state: DeviceState, mob_id: str, t1: int, cap_ms: int, days: Days) -> None:
    """The live rule: ``state``'s fences credited from its previous fix (or its last schedule transition,
    when later) to ``t1`` (its next applied fix, or a transition that changes its fences), at most
    ``cap_ms`` after that previous fix. :func:`credit`, with the common case (one day) first: the
    pipeline's fast path calls it for every fix of a device inside a fence."""
    members = state.members
    if not members:
        return
    last = state.last_ts
    t0 = state.sched_ms
    if t0 < last:
        t0 = last
    stop = last + cap_ms
    if t1 > stop:
        t1 = stop
    if t1 <= t0:
        return
    start, end, day = days.last
    if start <= t0 and t1 <= end:
        ms = t1 - t0
        tenant = state.tenant
        for fid in members:
            key = (tenant, fid, mob_id, day)
            cell = acc.get(key)
            if cell is None:
                acc[key] = cell = [0]
            cell[0] += ms
    else:
        credit(acc, state.tenant, members, mob_id, t0, t1, t1 - t0, days)


def totals(acc: Cells) -> Grazing:
    """The grazing the credits into ``acc`` came to."""
    return {key: cell[0] for key, cell in acc.items()}


def add(acc: Grazing, more: Mapping[GrazingKey, int], sign: int = 1) -> Grazing:
    """``acc`` plus ``sign`` times ``more``, in place; keys that come to 0 are dropped. Returns ``acc``."""
    for key, ms in more.items():
        got = acc.get(key, 0) + sign * ms
        if got:
            acc[key] = got
        else:
            acc.pop(key, None)
    return acc


def hours(ms: int) -> float:
    """Animal-hours of ``ms`` milliseconds."""
    return ms / 3_600_000

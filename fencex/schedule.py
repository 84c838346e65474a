"""Rotation schedules: the time windows in which a fence is active.

A fence with no ``schedule`` is always active. A schedule is a time zone (an IANA name, such as
``Europe/Stockholm``) and at most :data:`MAX_WINDOWS` windows; the fence is active while any
window holds (windows are half-open: active from ``from``/``start``, inactive again at
``to``/``end``). A window is either

- ``absolute``: from one RFC 3339 instant to a later one ("from 2026-11-22 06:00 to
  2026-11-29 18:00"), or
- ``daily``: every day (or on the listed ``days``, by the day a window *starts*) from ``start``
  to ``end`` local time, optionally only on the dates ``valid_from`` .. ``valid_to`` (inclusive,
  again by the day it starts). ``end`` before ``start`` crosses midnight (18:00-06:00 ends the next
  morning); ``end`` equal to ``start`` is a whole day (00:00-00:00).

Local times are turned into instants as RFC 5545 (3.3.5) does, which is Python's ``fold=0``: a
local time that does not exist (the hour skipped when clocks go forward, 02:30 in Stockholm on
the last Sunday of March) is read with the UTC offset before the gap (so 02:30 is 03:30 summer
time); one that exists twice (the hour repeated when clocks go back) is its first occurrence
(summer time). A daily window whose end, so read, is not after its start is empty that day.

:func:`active_at` and :func:`next_change` are the rules; :class:`FarmSchedules` answers them for
all the scheduled fences of a farm at once, from a table per day asked about (a bisection a fix).
"""

from __future__ import annotations

import bisect
import heapq
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

MAX_WINDOWS = 50
_DAY_MS = 86_400_000
_DAYS_KEPT = 12  # days of a farm's activity tables kept (then all dropped: rebuilt as asked)
MAX_SPANS = 2000  # spans next_change looks at, at most, in one call (a few milliseconds)
EARLIEST, LATEST = date(2000, 1, 1), date(2200, 12, 31)  # a schedule's dates and instants lie between
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_DAY = timedelta(days=1)
_MS = timedelta(milliseconds=1)
_WEEK_MS = 8 * 86_400_000  # a daily pattern repeats weekly: a week (and a day of slack) without a change is for good


def _text(pattern: str, what: str, parse: Callable[[str], Any]) -> BeforeValidator:
    """Read only a string of this form (not the numbers pydantic would take as times)."""
    form = re.compile(pattern)

    def read(value: Any) -> Any:
        if isinstance(value, str) and form.match(value):
            return parse(value.upper())
        if isinstance(value, (datetime, date, time)):
            return value  # built in Python
        raise ValueError(f"{what}, got {value!r}"[:200])

    return BeforeValidator(read)


TIME = r"^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?$"
Instant = Annotated[
    AwareDatetime,
    _text(
        r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})$",
        "an RFC 3339 instant with its offset, such as 2026-11-22T06:00:00+01:00",
        datetime.fromisoformat,
    ),
]
LocalTime = Annotated[
    time,
    _text(TIME, "a local time HH:MM or HH:MM:SS, without an offset", time.fromisoformat),
    WithJsonSchema({"type": "string", "pattern": TIME, "examples": ["06:00"]}),
]
Day = Annotated[date, _text(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", "a date YYYY-MM-DD", date.fromisoformat)]


def ms(dt: datetime) -> int:
    """An aware datetime as epoch milliseconds (exact: no float)."""
    return (dt - EPOCH) // _MS


def _within(*days: date) -> None:
    for d in days:
        if not EARLIEST <= d <= LATEST:
            raise ValueError(f"{d} is outside the years {EARLIEST.year} to {LATEST.year}")


class AbsoluteWindow(BaseModel):
    """Active from one instant to a later one."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        serialize_by_alias=True,
        json_schema_extra={
            "example": {"kind": "absolute", "from": "2026-11-22T06:00:00+01:00", "to": "2026-11-29T18:00:00+01:00"}
        },
    )

    kind: Literal["absolute"]
    from_: Instant = Field(alias="from", description="RFC 3339 instant: active from here")
    to: Instant = Field(description="RFC 3339 instant, after from: inactive again from here")

    @model_validator(mode="after")
    def _ordered(self) -> AbsoluteWindow:
        if ms(self.to) <= ms(self.from_):  # in the milliseconds fixes and transitions are counted in
            raise ValueError("to must be after from (by a millisecond at least)")
        _within(self.from_.date(), self.to.date())
        return self


class DailyWindow(BaseModel):
    """Active every day (or on ``days``) from ``start`` to ``end``, local time of the schedule's zone."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"example": {"kind": "daily", "start": "06:00", "end": "18:00", "days": ["mon", "tue"]}},
    )

    kind: Literal["daily"]
    start: LocalTime = Field(description="local time (HH:MM[:SS]) the window opens")
    end: LocalTime = Field(description="local time it closes; before start: the next day; equal to start: 24 hours")
    days: tuple[Weekday, ...] | None = Field(
        None, min_length=1, max_length=7, description="the days it opens on (by the day it opens); null: every day"
    )
    valid_from: Day | None = Field(None, description="the first date it opens on (inclusive)")
    valid_to: Day | None = Field(None, description="the last date it opens on (inclusive)")

    @model_validator(mode="after")
    def _dates(self) -> DailyWindow:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("a local time without an offset: the schedule's timezone applies")
        if self.valid_from is not None and self.valid_to is not None and self.valid_to < self.valid_from:
            raise ValueError("valid_to must not be before valid_from")
        _within(*(d for d in (self.valid_from, self.valid_to) if d is not None))
        return self

    def opens_on(self, day: date) -> bool:
        if self.valid_from is not None and day < self.valid_from:
            return False
        if self.valid_to is not None and day > self.valid_to:
            return False
        return self.days is None or WEEKDAYS[day.weekday()] in self.days

    def span(self, day: date, zone: ZoneInfo) -> tuple[int, int]:
        """The window opening on ``day`` as (start, end) epoch ms (end <= start: empty that day)."""
        end_day = day if self.start < self.end else day + _DAY
        return ms(datetime.combine(day, self.start, zone)), ms(datetime.combine(end_day, self.end, zone))


Window = Annotated[AbsoluteWindow | DailyWindow, Field(discriminator="kind")]


class Schedule(BaseModel):
    """When a fence is active: any of its windows, read in its time zone."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "example": {
                "timezone": "Europe/Stockholm",
                "windows": [{"kind": "daily", "start": "06:00", "end": "18:00"}],
            }
        },
    )

    timezone: str = Field(
        "UTC",
        min_length=1,
        max_length=64,
        description="IANA time zone of the daily windows",
        examples=["Europe/Stockholm"],
    )
    windows: tuple[Window, ...] = Field(min_length=1, max_length=MAX_WINDOWS)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Stockholm)") from None
        return value

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)  # cached by zoneinfo


def _spans(schedule: Schedule, after_ms: int) -> Iterator[tuple[int, int]]:
    """The non-empty spans of the schedule's windows that end after ``after_ms``, by start
    (a daily window's spans never end: the caller stops)."""
    zone = schedule.zone()
    first = datetime.fromtimestamp(after_ms / 1000, zone).date() - _DAY  # a span opening the day before may hold it
    streams: list[Iterator[tuple[int, int]]] = []
    for w in schedule.windows:
        if isinstance(w, AbsoluteWindow):
            streams.append(iter([(ms(w.from_), ms(w.to))]))
        else:
            streams.append(_daily(w, zone, first))
    for s, e in heapq.merge(*streams):
        if e > after_ms:
            yield s, e


def _daily(w: DailyWindow, zone: ZoneInfo, first: date) -> Iterator[tuple[int, int]]:
    day = max(first, w.valid_from) if w.valid_from is not None else first
    while w.valid_to is None or day <= w.valid_to:
        if w.opens_on(day):
            s, e = w.span(day, zone)
            if e > s:
                yield s, e
        day += _DAY


def _horizon(schedule: Schedule, after_ms: int) -> int:
    """An instant past which the schedule changes no more, or repeats weekly what it did before it."""
    last = after_ms
    for w in schedule.windows:
        if isinstance(w, AbsoluteWindow):
            last = max(last, ms(w.to))
        else:
            for d in (w.valid_from, w.valid_to):
                if d is not None:
                    last = max(last, ms(datetime.combine(d + 2 * _DAY, time(), UTC)))
    return last + _WEEK_MS


def active_at(schedule: Schedule | None, ts_ms: int) -> bool:
    """Whether the fence is active at ``ts_ms`` (no schedule: always)."""
    if schedule is None:
        return True
    # the first span (by start) that ends after ts_ms holds it, unless it starts later (then none does)
    first = next(_spans(schedule, ts_ms), None)
    return first is not None and first[0] <= ts_ms


def next_change(schedule: Schedule | None, after_ms: int) -> int | None:
    """The first instant after ``after_ms`` at which the fence's activity flips (None: never), or,
    for a fence that stays active longer than its next :data:`MAX_SPANS` spans, the start of the last
    one looked at: an instant to ask again from, where it does not flip (so one farm's schedule of
    whole days for centuries costs milliseconds, not minutes, and asking again is harmless)."""
    if schedule is None:
        return None
    horizon = _horizon(schedule, after_ms)
    run: tuple[int, int] | None = None  # the union of the spans so far that overlap
    for n, (s, e) in enumerate(_spans(schedule, after_ms)):
        if run is not None and s <= run[1]:
            run = (run[0], max(run[1], e))
            if run[1] > horizon:
                return None  # active from here on (the pattern repeats)
            if n >= MAX_SPANS and s > after_ms:
                return s  # still active: ask again from here
            continue
        if run is not None:
            return run[0] if run[0] > after_ms else run[1]
        if s > horizon:
            return None
        run = (s, e)
    if run is None:
        return None
    return run[0] if run[0] > after_ms else run[1]


def changes(schedule: Schedule | None, after_ms: int, until_ms: int, limit: int = 10_000) -> list[int]:
    """The instants in ``(after_ms, until_ms]`` at which the activity flips, in order (at most ``limit``)."""
    out: list[int] = []
    t = after_ms
    while len(out) < limit and (nxt := next_change(schedule, t)) is not None and nxt <= until_ms:
        out.append(nxt)
        t = nxt
    return out


class FarmSchedules:
    """A farm's scheduled fences: which are inactive at an instant (a table per UTC day asked), and when next."""

    __slots__ = ("_days", "schedules")

    def __init__(self, schedules: dict[str, Schedule]) -> None:
        self.schedules = schedules
        self._days: dict[int, tuple[list[int], list[frozenset[str]]]] = {}  # day -> (starts, inactive ids)

    def inactive_at(self, ts_ms: int) -> frozenset[str]:
        starts, offs = self._table(ts_ms // _DAY_MS)
        return offs[bisect.bisect_right(starts, ts_ms) - 1]

    def _table(self, day: int) -> tuple[list[int], list[frozenset[str]]]:
        if (table := self._days.get(day)) is None:
            if len(self._days) >= _DAYS_KEPT:
                self._days.clear()
            table = self._days[day] = self._day(day * _DAY_MS)
        return table

    def _day(self, lo: int) -> tuple[list[int], list[frozenset[str]]]:
        """The day's table from each fence's spans over it (its windows once each, not once per flip)."""
        hi = lo + _DAY_MS
        off: set[str] = set()
        flips: dict[int, list[tuple[str, bool]]] = {}
        for fid, s in self.schedules.items():
            off.add(fid)
            for a, b in _union(s, lo, hi):
                if a <= lo:
                    off.discard(fid)
                else:
                    flips.setdefault(a, []).append((fid, True))
                if b < hi:
                    flips.setdefault(b, []).append((fid, False))
        starts, offs = [lo], [frozenset(off)]
        for t in sorted(flips):
            for fid, on in flips[t]:  # a fence's spans are merged: it opens and closes at distinct instants
                (off.discard if on else off.add)(fid)
            starts.append(t)
            offs.append(frozenset(off))
        return starts, offs

    def next_change(self, after_ms: int) -> int | None:
        """The first instant after ``after_ms`` its inactive set changes (else the rule's instant to ask again)."""
        day, last = after_ms // _DAY_MS, frozenset[str]()
        for d in range(day, day + 3):  # the day's table and the next two's; past them, the fences' own rule
            starts, offs = self._table(d)
            for j in range(bisect.bisect_right(starts, after_ms) if d == day else 0, len(starts)):
                if offs[j] != (offs[j - 1] if j else last):
                    return starts[j]
            last = offs[-1]
        end = (day + 3) * _DAY_MS - 1  # nothing changes in them: from their last instant on
        found = [t for s in self.schedules.values() if (t := next_change(s, max(after_ms, end))) is not None]
        return min(found) if found else None

    def latest_change(self, after_ms: int, until_ms: int) -> int | None:
        """The last instant in ``(after_ms, until_ms]`` the farm's inactive set changes (the days' tables, back)."""
        day = until_ms // _DAY_MS
        while (lo := day * _DAY_MS) + _DAY_MS > after_ms:
            starts, offs = self._table(day)
            for j in range(bisect.bisect_right(starts, until_ms) - 1, 0, -1):
                if starts[j] <= after_ms:
                    return None
                if offs[j] != offs[j - 1]:
                    return starts[j]
            if lo <= after_ms or offs[0] != self._table(day - 1)[1][-1]:  # none; or a change at midnight (UTC)
                return lo if lo > after_ms else None
            day -= 1
        return None

    def changes(self, after_ms: int, until_ms: int, limit: int = 1000) -> list[int]:
        """The instants in ``(after_ms, until_ms]`` at which any of the farm's fences flips, in order."""
        out: list[int] = []
        t = after_ms
        while len(out) < limit and (nxt := self.next_change(t)) is not None and nxt <= until_ms:
            out.append(nxt)
            t = nxt
        return out


def _union(schedule: Schedule, lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """The schedule's spans that overlap ``[lo, hi)``, those that touch or overlap merged, by start."""
    run: tuple[int, int] | None = None
    for s, e in _spans(schedule, lo):
        if run is not None and s <= run[1]:
            run = (run[0], max(run[1], e))
        else:
            if run is not None:
                yield run
                run = None
            if s >= hi:
                return
            if e > s:
                run = (s, e)
        if run is not None and run[1] >= hi:
            yield run  # on past the day's end: nothing more flips in it (a run of whole days stops here)
            return
    if run is not None:
        yield run


def farm_schedules(
    fences: Iterable[tuple[str, str, Schedule | None]], previous: dict[str, FarmSchedules] | None = None
) -> dict[str, FarmSchedules]:
    """(tenant, fence id, schedule) -> tenant -> its scheduled fences; ``previous``'s kept (tables and all) if equal."""
    by_farm: dict[str, dict[str, Schedule]] = {}
    for tenant, fid, schedule in fences:
        if schedule is not None:
            by_farm.setdefault(tenant, {})[fid] = schedule
    old = previous or {}
    return {t: old[t] if t in old and old[t].schedules == s else FarmSchedules(s) for t, s in by_farm.items()}

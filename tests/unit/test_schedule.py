"""Rotation schedules as tables: active_at and next_change, DST in Europe/Stockholm, midnight, limits."""

from __future__ import annotations

import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from fencex.fence import Fence
from fencex.schedule import MAX_WINDOWS, FarmSchedules, Schedule, active_at, changes, ms, next_change
from tests.unit.factory import fence

STHLM = ZoneInfo("Europe/Stockholm")


def at(text: str, zone: ZoneInfo = STHLM) -> int:
    """Local wall time in Stockholm (fold 0) as epoch ms."""
    return ms(datetime.fromisoformat(text).replace(tzinfo=zone))


def utc(text: str) -> int:
    return ms(datetime.fromisoformat(text))


def daily(start: str, end: str, **extra: object) -> Schedule:
    return Schedule.model_validate(
        {"timezone": "Europe/Stockholm", "windows": [{"kind": "daily", "start": start, "end": end, **extra}]}
    )


DAY = daily("06:00", "18:00")
NIGHT = daily("18:00", "06:00")  # across midnight
WEEKDAYS = daily("06:00", "18:00", days=["mon", "tue", "wed", "thu", "fri"])
WHOLE_DAY = daily("00:00", "00:00", days=["sun"])
NOVEMBER = daily("06:00", "18:00", valid_from="2026-11-22", valid_to="2026-11-23")
ABSOLUTE = Schedule.model_validate(
    {"windows": [{"kind": "absolute", "from": "2026-11-22T06:00:00+01:00", "to": "2026-11-29T18:00:00+01:00"}]}
)
# 2026: clocks go forward on Sun 29 March (02:00 -> 03:00), back on Sun 25 October (03:00 -> 02:00)
IN_GAP = daily("02:30", "04:00")  # 02:30 does not exist on 29 March
IN_FOLD = daily("02:30", "04:00")  # 02:30 exists twice on 25 October
GAP_ONLY = daily("02:15", "02:45")  # wholly inside the skipped hour: shifted an hour later with it
GAP_EMPTY = daily("02:30", "03:00")  # 02:30 read as 03:30 summer time: after the end, so empty that day

ACTIVE = [
    # (id, schedule, instant, active)
    ("no schedule: always active", None, at("2026-11-22T03:00"), True),
    ("daily: before start", DAY, at("2026-11-22T05:59:59.999"), False),
    ("daily: at start (half-open: active)", DAY, at("2026-11-22T06:00"), True),
    ("daily: just before end", DAY, at("2026-11-22T17:59:59.999"), True),
    ("daily: at end (inactive)", DAY, at("2026-11-22T18:00"), False),
    ("across midnight: evening", NIGHT, at("2026-11-22T23:00"), True),
    ("across midnight: after midnight, opened the day before", NIGHT, at("2026-11-23T05:00"), True),
    ("across midnight: daytime", NIGHT, at("2026-11-23T12:00"), False),
    ("days: a Saturday is not listed", WEEKDAYS, at("2026-11-21T12:00"), False),
    ("days: a Monday is", WEEKDAYS, at("2026-11-23T12:00"), True),
    ("00:00-00:00 is a whole day: Sunday morning", WHOLE_DAY, at("2026-11-22T00:00"), True),
    ("00:00-00:00 is a whole day: Sunday night", WHOLE_DAY, at("2026-11-22T23:59:59.999"), True),
    ("00:00-00:00 is a whole day: Monday", WHOLE_DAY, at("2026-11-23T00:00"), False),
    ("valid dates: the day before", NOVEMBER, at("2026-11-21T12:00"), False),
    ("valid dates: the first", NOVEMBER, at("2026-11-22T12:00"), True),
    ("valid dates: the last", NOVEMBER, at("2026-11-23T12:00"), True),
    ("valid dates: the day after", NOVEMBER, at("2026-11-24T12:00"), False),
    ("absolute: before", ABSOLUTE, utc("2026-11-22T04:59:59.999+00:00"), False),
    ("absolute: from (inclusive)", ABSOLUTE, utc("2026-11-22T05:00:00+00:00"), True),
    ("absolute: to (exclusive)", ABSOLUTE, utc("2026-11-29T17:00:00+00:00"), False),
    # spring forward: 02:30 is read with the offset before the gap (+01:00) = 03:30 CEST = 01:30 UTC
    ("DST gap: the skipped 02:30 opens at 01:30 UTC, not before", IN_GAP, utc("2026-03-29T01:29:59+00:00"), False),
    ("DST gap: open from 01:30 UTC (03:30 summer time)", IN_GAP, utc("2026-03-29T01:30:00+00:00"), True),
    ("DST gap: a window inside the skipped hour moves with it", GAP_ONLY, utc("2026-03-29T01:15:00+00:00"), True),
    ("DST gap: ... to 03:15-03:45 summer time", GAP_ONLY, at("2026-03-29T03:45"), False),
    ("DST gap: a window ending before its start so read is empty", GAP_EMPTY, utc("2026-03-29T01:00:00+00:00"), False),
    ("DST gap: the same window the day after is open", GAP_EMPTY, at("2026-03-30T02:30"), True),
    # fall back: 02:30 exists twice; the first (summer time, +02:00 = 00:30 UTC) is the start
    ("DST fold: opens at the first 02:30 (00:30 UTC)", IN_FOLD, utc("2026-10-25T00:30:00+00:00"), True),
    ("DST fold: not before it", IN_FOLD, utc("2026-10-25T00:29:59+00:00"), False),
    ("DST fold: the window is 2.5 hours that day", IN_FOLD, utc("2026-10-25T02:59:59+00:00"), True),
    ("DST fold: closed at 04:00 winter time (03:00 UTC)", IN_FOLD, utc("2026-10-25T03:00:00+00:00"), False),
]


@pytest.mark.parametrize("schedule,ts,expected", [c[1:] for c in ACTIVE], ids=[c[0] for c in ACTIVE])
def test_active_at_table(schedule, ts, expected):
    assert active_at(schedule, ts) is expected


NEXT = [
    # (id, schedule, after, the next flip)
    ("no schedule: never changes", None, at("2026-11-22T03:00"), None),
    ("daily: before start, it opens", DAY, at("2026-11-22T03:00"), at("2026-11-22T06:00")),
    ("daily: at start, it closes next", DAY, at("2026-11-22T06:00"), at("2026-11-22T18:00")),
    ("daily: after end, tomorrow's start", DAY, at("2026-11-22T18:00"), at("2026-11-23T06:00")),
    ("across midnight: open, closes next morning", NIGHT, at("2026-11-22T23:00"), at("2026-11-23T06:00")),
    ("across midnight: closed, opens at 18:00", NIGHT, at("2026-11-23T06:00"), at("2026-11-23T18:00")),
    ("days: Friday evening, opens Monday", WEEKDAYS, at("2026-11-20T18:00"), at("2026-11-23T06:00")),
    ("valid dates: none after the last", NOVEMBER, at("2026-11-23T18:00"), None),
    ("valid dates: from long before, the first", NOVEMBER, at("2026-01-01T00:00"), at("2026-11-22T06:00")),
    ("absolute: opens", ABSOLUTE, utc("2026-11-01T00:00:00+00:00"), utc("2026-11-22T05:00:00+00:00")),
    ("absolute: closes", ABSOLUTE, utc("2026-11-22T05:00:00+00:00"), utc("2026-11-29T17:00:00+00:00")),
    ("absolute: nothing after", ABSOLUTE, utc("2026-11-29T17:00:00+00:00"), None),
    ("whole days every day: always active, never changes", daily("00:00", "00:00"), at("2026-11-22T03:00"), None),
    ("DST gap: opens at 01:30 UTC", IN_GAP, utc("2026-03-29T00:00:00+00:00"), utc("2026-03-29T01:30:00+00:00")),
    ("DST gap: the empty window is skipped", GAP_EMPTY, at("2026-03-28T03:00"), at("2026-03-30T02:30")),
    ("DST gap: the shifted window", GAP_ONLY, at("2026-03-28T03:00"), utc("2026-03-29T01:15:00+00:00")),
    ("DST fold: closes at 03:00 UTC", IN_FOLD, utc("2026-10-25T01:00:00+00:00"), utc("2026-10-25T03:00:00+00:00")),
]


@pytest.mark.parametrize("schedule,after,expected", [c[1:] for c in NEXT], ids=[c[0] for c in NEXT])
def test_next_change_table(schedule, after, expected):
    assert next_change(schedule, after) == expected
    if expected is not None:  # it really flips there, and not before
        assert active_at(schedule, expected) is not active_at(schedule, expected - 1)
        assert active_at(schedule, after) is active_at(schedule, expected - 1)


def test_overlapping_windows_flip_once_at_the_ends_of_their_union():
    s = Schedule.model_validate(
        {
            "timezone": "Europe/Stockholm",
            "windows": [
                {"kind": "daily", "start": "06:00", "end": "12:00"},
                {"kind": "daily", "start": "10:00", "end": "18:00"},
                {"kind": "daily", "start": "18:00", "end": "20:00"},  # touches: no flip at 18:00
            ],
        }
    )
    assert changes(s, at("2026-11-22T00:00"), at("2026-11-23T00:00")) == [
        at("2026-11-22T06:00"),
        at("2026-11-22T20:00"),
    ]


def test_a_stockholm_day_of_windows_across_the_spring_gap_stays_in_local_time():
    # 06:00-18:00 local: 05:00-17:00 UTC in winter, 04:00-16:00 UTC from the 29 March switch on
    flips = changes(DAY, utc("2026-03-28T00:00:00+00:00"), utc("2026-03-30T00:00:00+00:00"))
    assert flips == [
        utc("2026-03-28T05:00:00+00:00"),
        utc("2026-03-28T17:00:00+00:00"),
        utc("2026-03-29T04:00:00+00:00"),
        utc("2026-03-29T16:00:00+00:00"),
    ]


def test_a_night_window_across_the_autumn_fold_lasts_an_hour_longer():
    flips = changes(NIGHT, at("2026-10-24T12:00"), at("2026-10-25T12:00"))
    assert flips == [utc("2026-10-24T16:00:00+00:00"), utc("2026-10-25T05:00:00+00:00")]  # 13 hours


DAILY = {"kind": "daily", "start": "06:00", "end": "18:00"}


def one(**window: object) -> dict:
    return {"timezone": "Europe/Stockholm", "windows": [window]}


INVALID = [
    ("unknown zone", {"timezone": "Mars/Olympus", "windows": [DAILY]}),
    ("a path, not a zone", {"timezone": "../../etc/passwd", "windows": [DAILY]}),
    ("no window", {"timezone": "UTC", "windows": []}),
    ("too many windows", {"windows": [DAILY] * (MAX_WINDOWS + 1)}),
    ("absolute: to before from", one(kind="absolute", **{"from": "2026-11-22T06:00Z"}, to="2026-11-22T05:00Z")),
    ("absolute: no offset", one(kind="absolute", **{"from": "2026-11-22T06:00"}, to="2026-11-23T06:00")),
    ("daily: an offset on a local time", one(**{**DAILY, "start": "06:00+01:00"})),
    ("daily: valid_to before valid_from", one(**DAILY, valid_from="2026-11-22", valid_to="2026-11-21")),
    ("daily: an unknown day", one(**DAILY, days=["someday"])),
    ("daily: no day", one(**DAILY, days=[])),
    ("daily: a date out of range", one(**DAILY, valid_to="9999-12-31")),
    ("daily: seconds since midnight, not a time", one(**{**DAILY, "start": 21600})),
    ("daily: a time with a fraction", one(**{**DAILY, "start": "06:00:00.5"})),
    ("absolute: epoch seconds, not an instant", one(kind="absolute", **{"from": 1780000000}, to="2026-11-23T06:00Z")),
    ("daily: a date as a number", one(**DAILY, valid_from=20261122)),
    ("unknown kind", one(**{**DAILY, "kind": "weekly"})),
    ("unknown member", one(**DAILY, every=2)),
    # review 12: to after from by less than the millisecond the worker counts in: a span of no time, never
    # active, whose start next_change gave as a flip (a transition re-evaluating the farm for nothing)
    (
        "absolute: within one millisecond",
        one(kind="absolute", **{"from": "2026-11-22T06:00:00.0001Z"}, to="2026-11-22T06:00:00.0009Z"),
    ),
]


@pytest.mark.parametrize("body", [c[1] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_schedules_are_refused(body):
    with pytest.raises(ValidationError):
        Schedule.model_validate(body)


def test_a_fence_carries_its_schedule_through_storage_and_its_feature():
    f = fence("north", schedule=ABSOLUTE)
    back = Fence.from_json(f.to_json())
    assert back.schedule == ABSOLUTE
    assert b'"from"' in f.to_json()  # stored as the API spells it
    assert f.feature()["properties"]["schedule"]["windows"][0]["from"] == "2026-11-22T06:00:00+01:00"
    assert fence("south").feature()["properties"]["schedule"] is None


def test_a_farms_schedules_answer_from_their_cache_and_agree_with_the_rule():
    farm = FarmSchedules({"day": DAY, "night": NIGHT, "plain": WEEKDAYS})
    t = at("2026-11-20T00:00")
    for step in range(0, 4 * 24 * 60, 7):  # every 7 minutes for four days, forwards then a step back
        for ts in (t + step * 60_000, t + step * 60_000 - 3_600_000):
            expected = {fid for fid, s in farm.schedules.items() if not active_at(s, ts)}
            assert farm.inactive_at(ts) == expected, ts
    assert farm.next_change(at("2026-11-20T07:00")) == at("2026-11-20T18:00")
    assert farm.changes(at("2026-11-20T07:00"), at("2026-11-21T07:00")) == [
        at("2026-11-20T18:00"),
        at("2026-11-21T06:00"),
    ]


def test_a_schedule_active_for_centuries_costs_little_to_ask():
    """50 whole-day windows, every day until 2200: the fence is active for 174 years. Walking that
    run window by window would hold the worker for minutes (one farm's schedule slowing everyone):
    next_change stops after MAX_SPANS spans with an instant to ask again from, where nothing flips."""
    s = Schedule.model_validate(
        {"windows": [{"kind": "daily", "start": "00:00", "end": "00:00", "valid_to": "2200-12-31"}] * MAX_WINDOWS}
    )
    after = at("2026-11-22T12:00")
    started = time.perf_counter()
    again = next_change(s, after)
    assert time.perf_counter() - started < 0.5
    assert again is not None and again > after
    assert active_at(s, again) and active_at(s, again - 1)  # a point to ask again from, not a flip
    assert FarmSchedules({"f": s}).inactive_at(after) == frozenset()


def test_fixes_out_of_time_order_across_devices_do_not_recompute_the_farms_schedules(monkeypatch):
    """A batch holds many devices' fixes, not in time order: asking at 10:00:01, then 10:00:00, ...
    must not recompute every fence's schedule each time (a millisecond a fix for a farm of 20)."""
    import fencex.schedule as module

    calls = 0
    real = module.next_change

    def counted(schedule, after_ms):
        nonlocal calls
        calls += 1
        return real(schedule, after_ms)

    monkeypatch.setattr(module, "next_change", counted)
    farm = FarmSchedules({f"f{i}": daily(f"{6 + i % 3:02d}:00", "18:00") for i in range(20)})
    t = at("2026-11-22T10:00")
    for k in range(2000):
        ts = t + (k if k % 2 else -k)  # back and forth in time
        assert farm.inactive_at(ts) == {fid for fid, s in farm.schedules.items() if not active_at(s, ts)}
    assert calls <= 20 * 10, calls  # per fence: its flips over the day or two asked about


def test_a_farm_of_short_windows_costs_its_windows_a_day_not_a_walk_of_them_a_flip(monkeypatch):
    """Review 12: 50 one-second windows a day (the limit), on 20 fences of a farm (of 10,000 it may hold):
    the day's table walked every fence's windows once per flip (100 flips a fence): 1.3 s for the first
    fix of the day of such a farm, 6.6 s for 100 fences, in the worker's loop; a week's catch-up 25 s."""
    from fencex.schedule import DailyWindow

    calls = 0
    real = DailyWindow.span

    def counted(self, day, zone):
        nonlocal calls
        calls += 1
        return real(self, day, zone)

    monkeypatch.setattr(DailyWindow, "span", counted)
    windows = [
        {"kind": "daily", "start": f"{h:02d}:{m:02d}:00", "end": f"{h:02d}:{m:02d}:01"}
        for h in range(24)
        for m in (0, 30)
    ]
    s = Schedule.model_validate({"timezone": "Europe/Stockholm", "windows": windows[:MAX_WINDOWS]})
    farm = FarmSchedules({f"f{i}": s for i in range(20)})
    t = at("2026-11-22T10:00")  # local time
    assert farm.inactive_at(t + 1000) == {f"f{i}" for i in range(20)}
    assert farm.inactive_at(t + 500) == frozenset()  # in the 10:00:00-10:00:01 window
    assert calls <= 20 * MAX_WINDOWS * 4, calls  # a fence's windows, over the day and the day before
    calls = 0
    week = farm.changes(t - 7 * 86_400_000, t)
    assert len(week) == 7 * 2 * 48
    assert all(farm.inactive_at(c) != farm.inactive_at(c - 1) for c in week)
    calls = 0  # a catch-up again (every index swap, while a collar of the farm is silent): from the tables kept
    assert farm.changes(t - 7 * 86_400_000, t) == week
    assert calls == 0, calls
    assert calls <= 8 * 20 * MAX_WINDOWS * 4 + 8 * 20 * 5 * MAX_WINDOWS, calls  # a table a day, a rule a day end
    always = FarmSchedules({"f": daily("02:00", "02:00"), "g": daily("06:00", "18:00", valid_to="2200-12-31")})
    assert always.inactive_at(t) == frozenset() and always.next_change(t) == at("2026-11-22T18:00")
    assert always.inactive_at(at("2026-11-22T19:00")) == {"g"}


def test_an_index_swap_keeps_the_tables_of_a_farm_whose_schedules_did_not_change(monkeypatch):
    """Review 12: every fence change of any farm swaps the index, and a new index built every scheduled
    farm's tables again (rotation.rebuild asks each farm's next change: today's table), so one farm of
    many short windows cost every swap of the worker its tables again (100 fences: 46 ms; 10,000: 4.6 s)."""
    from fencex.index import FenceIndex
    from fencex.schedule import DailyWindow
    from tests.unit.factory import fence

    calls = 0
    real = DailyWindow.span

    def counted(self, day, zone):
        nonlocal calls
        calls += 1
        return real(self, day, zone)

    monkeypatch.setattr(DailyWindow, "span", counted)
    windows = [{"kind": "daily", "start": f"{h:02d}:00", "end": f"{h:02d}:30"} for h in range(24)]
    s = Schedule.model_validate({"timezone": "Europe/Stockholm", "windows": windows})
    fences = [fence(f"f{i}", tenant="busy", schedule=s) for i in range(20)]
    t = at("2026-11-22T10:15")
    first = FenceIndex(fences)
    assert first.schedules["busy"].next_change(t) == at("2026-11-22T10:30")
    assert calls > 0
    calls = 0
    other = fence("elsewhere", tenant="quiet", schedule=daily("06:00", "18:00"))
    second = FenceIndex([*fences, other], previous=first)  # another farm's fence came
    assert second.schedules["busy"].next_change(t) == at("2026-11-22T10:30")
    assert calls == 0, calls
    changed = FenceIndex(
        [*fences[1:], fence("f0", tenant="busy", version=2, schedule=daily("06:00", "18:00"))], 2, second
    )
    assert changed.schedules["busy"].inactive_at(t + 1_800_000) == {f"f{i}" for i in range(1, 20)}  # new tables

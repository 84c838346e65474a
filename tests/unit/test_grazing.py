"""Grazing time per fence, mob and day of the farm (issue 12, part 3): the credit as a table (the farm's
midnights, daylight saving, the cap), the live rule as a table of fixes through the pipeline, schedule
transitions, late merges' deltas, and the property: for any arrival order, the grazing kept (the live
path's plus the merges' deltas) equals the grazing of the fixes in order."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fencex.detector import DeviceState
from fencex.fix import Fix
from fencex.grazing import Cells, Grazing, add, cap_of, credit, days_of, totals
from fencex.herd import NO_HERD, HerdRules, Mob
from fencex.index import FenceIndex
from fencex.late import merge
from fencex.pipeline import process, reevaluate_all
from fencex.track import Track
from tests.unit.factory import fence
from tests.unit.test_late import HERD, PLACES
from tests.unit.test_rotation import CLOSE, IN_A, IN_B, OPEN, placed
from tests.unit.test_rotation import INDEX as SCHEDULED

MIN = 60_000
H = 3_600_000
DEV = "cow-1"


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def by_day(acc: Grazing) -> dict[str, int]:
    return {day: v for (_, _, _, day), v in acc.items()}


# -- the credit: min(t1 - t0, cap) from t0, split at the zone's midnights ---------------------------

CREDITS = [
    # (rule, zone, t0, t1, cap, {day: ms})
    ("within a day: all of it", "UTC", "2026-11-20T10:00:00Z", "2026-11-20T10:01:00Z", H, {"2026-11-20": MIN}),
    ("longer than the cap: the cap", "UTC", "2026-11-20T10:00:00Z", "2026-11-20T13:00:00Z", H, {"2026-11-20": H}),
    ("none when t1 is not after t0", "UTC", "2026-11-20T10:00:00Z", "2026-11-20T10:00:00Z", H, {}),
    (
        "over midnight: split between the two days",
        "UTC",
        "2026-11-20T23:30:00Z",
        "2026-11-21T00:30:00Z",
        2 * H,
        {"2026-11-20": 30 * MIN, "2026-11-21": 30 * MIN},
    ),
    (
        "the farm's midnight, not UTC's (Stockholm is UTC+1 in November)",
        "Europe/Stockholm",
        "2026-11-20T22:30:00Z",
        "2026-11-20T23:30:00Z",
        2 * H,
        {"2026-11-20": 30 * MIN, "2026-11-21": 30 * MIN},
    ),
    (
        "the cap ends the interval before midnight: nothing on the next day",
        "UTC",
        "2026-11-20T23:00:00Z",
        "2026-11-21T01:00:00Z",
        30 * MIN,
        {"2026-11-20": 30 * MIN},
    ),
    (
        "spring forward: a day of 23 hours",
        "Europe/Stockholm",
        "2026-03-29T00:00:00+01:00",
        "2026-03-30T00:00:00+02:00",
        48 * H,
        {"2026-03-29": 23 * H},
    ),
    (
        "fall back: a day of 25 hours",
        "Europe/Stockholm",
        "2026-10-25T00:00:00+02:00",
        "2026-10-26T00:00:00+01:00",
        48 * H,
        {"2026-10-25": 25 * H},
    ),
    (
        "a midnight that daylight saving skips (Santiago: 00:00 -> 01:00): the day starts at the change",
        "America/Santiago",
        "2026-09-05T12:00:00-04:00",
        "2026-09-06T13:00:00-03:00",
        48 * H,
        {"2026-09-05": 12 * H, "2026-09-06": 12 * H},
    ),
    (
        "a day the zone skipped (Samoa, 2011-12-30): the hours go to the days on each side",
        "Pacific/Apia",
        "2011-12-29T12:00:00-10:00",
        "2011-12-31T12:00:00+14:00",
        48 * H,
        {"2011-12-29": 12 * H, "2011-12-31": 12 * H},
    ),
]


@pytest.mark.parametrize("rule,zone,t0,t1,cap,want", CREDITS, ids=[r[0] for r in CREDITS])
def test_the_credit(rule, zone, t0, t1, cap, want):
    acc: Cells = {}
    credit(acc, "farm", ["A", "B"], "ewes", ms(t0), ms(t1), cap, zone)
    assert totals(acc) == {("farm", f, "ewes", day): v for day, v in want.items() for f in ("A", "B")}


ZONES = ["UTC", "Europe/Stockholm", "America/Santiago", "Pacific/Apia", "Australia/Lord_Howe", "Asia/Kathmandu"]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(ZONES),
    st.integers(ms("2005-01-01T00:00:00Z"), ms("2035-01-01T00:00:00Z")),
    st.integers(0, 80 * H),
    st.integers(1, 80 * H),
)
def test_days_partition_time_and_the_credit_keeps_every_millisecond(zone, t0, length, cap):
    days = days_of(zone)
    start, end, day = days.span(t0)
    d = date.fromisoformat(day)
    assert start <= t0 < end
    assert days.date_at(start) == d == days.date_at(end - 1) and days.date_at(start - 1) < d < days.date_at(end)
    assert 22 * H <= end - start <= 26 * H  # DST: 23 or 25 h (Lord Howe: 23.5, 24.5)
    cells: Cells = {}
    credit(cells, "farm", ["A"], "", t0, t0 + length, cap, zone)
    acc = totals(cells)
    assert sum(acc.values()) == min(length, cap)
    for (_, _, _, got), v in acc.items():
        first = days.first_instant(date.fromisoformat(got))
        assert 0 < v <= days.first_instant(date.fromisoformat(got) + timedelta(days=1)) - first


def test_the_cap_is_the_farms_silence_and_none_without_herd_rules():
    assert cap_of(HerdRules(silence_s=600)) == 600_000
    assert cap_of(NO_HERD) is None  # the fence rules alone keep no grazing


def test_add_drops_what_comes_to_nothing():
    acc: Grazing = {("f", "A", "", "d"): 5, ("f", "B", "", "d"): 1}
    assert add(acc, {("f", "A", "", "d"): 5, ("f", "C", "", "d"): 2}, -1) == {
        ("f", "B", "", "d"): 1,
        ("f", "C", "", "d"): -2,
    }


# -- the live rule: fixes through the pipeline ----------------------------------------------------------

T = ms("2026-11-20T10:00:00Z")
A = fence("A")  # 17.60..17.61, 59.80..59.81
B = fence("B", lon=17.605)  # overlaps A's east half
Q = fence("Q", lon=17.62, exit_buffer_m=20)  # 17.62..17.63
INDEX = FenceIndex([A, B, Q])
IN, BOTH, OUT = (17.602, 59.805), (17.607, 59.805), (17.59, 59.79)
IN_Q, NEAR_Q = (17.625, 59.805), (17.6302, 59.805)  # NEAR_Q: about 11 m east of Q, within its buffer
FAST = HerdRules(confirm_fixes=1, max_speed_mps=1000)  # no jump between these places
EWES = Mob(frozenset({"A"}), frozenset(), "ewes")

LIVE = [
    # (rule, rules (None: no herd rules), mob, fixes (offset ms, place[, extra]), {(fence, mob, day): ms})
    ("two fixes inside: the interval between them", FAST, None, [(0, IN), (MIN, IN)], {("A", "", "2026-11-20"): MIN}),
    ("a device's first fix: nothing (no interval yet)", FAST, None, [(0, IN)], {}),
    (
        "an enter: counted from the enter's fix",
        FAST,
        None,
        [(0, OUT), (MIN, IN), (3 * MIN, IN)],
        {("A", "", "2026-11-20"): 2 * MIN},
    ),
    (
        "an exit: counted up to the exit's fix",
        FAST,
        None,
        [(0, IN), (MIN, OUT), (3 * MIN, OUT)],
        {("A", "", "2026-11-20"): MIN},
    ),
    (
        "a gap longer than the farm's silence_s: the silence only",
        HerdRules(confirm_fixes=1, max_speed_mps=1000, silence_s=600),
        None,
        [(0, IN), (H, IN)],
        {("A", "", "2026-11-20"): 600_000},
    ),
    (
        "overlapping fences: each credited the whole time",
        FAST,
        None,
        [(0, BOTH), (MIN, BOTH)],
        {("A", "", "2026-11-20"): MIN, ("B", "", "2026-11-20"): MIN},
    ),
    (
        "within the exit buffer: still a member, still credited",
        FAST,
        None,
        [(0, IN_Q), (MIN, NEAR_Q), (2 * MIN, NEAR_Q)],
        {("Q", "", "2026-11-20"): 2 * MIN},
    ),
    (
        "a fix too inaccurate to move fences: the device stays a member, credited on",
        FAST,
        None,
        [(0, IN), (MIN, OUT, {"accuracy_m": 40.0}), (2 * MIN, IN)],
        {("A", "", "2026-11-20"): 2 * MIN},
    ),
    (
        "a jump held back: the device stays a member, credited on",
        HerdRules(confirm_fixes=1, max_speed_mps=5),
        None,
        [(0, IN), (MIN, OUT), (2 * MIN, IN)],
        {("A", "", "2026-11-20"): 2 * MIN},
    ),
    (
        "a stale fix (not newer than the last): nothing",
        FAST,
        None,
        [(0, IN), (2 * MIN, IN), (MIN, IN)],
        {("A", "", "2026-11-20"): 2 * MIN},
    ),
    (
        "over the farm's midnight: split between its days",
        HerdRules(confirm_fixes=1, max_speed_mps=1000, timezone="Pacific/Auckland"),  # UTC+13 in November
        None,
        [(ms("2026-11-20T10:59:00Z") - T, IN), (ms("2026-11-20T11:01:00Z") - T, IN)],
        {("A", "", "2026-11-20"): MIN, ("A", "", "2026-11-21"): MIN},
    ),
    ("the device's mob: kept per mob", FAST, EWES, [(0, IN), (MIN, IN)], {("A", "ewes", "2026-11-20"): MIN}),
    ("without the herd rules (the fence rules alone): no grazing", None, None, [(0, IN), (MIN, IN)], {}),
]


def fixes_of(rows: list[tuple]) -> list[Fix]:
    return [Fix(DEV, T + r[0], r[1][0], r[1][1], r[2] if len(r) > 2 else None) for r in rows]


def rules_and_mob(rules: HerdRules | None, mob: Mob | None) -> tuple[Callable | None, Callable | None]:
    if rules is None:
        return None, None
    return (lambda t: rules), (lambda d: mob)


@pytest.mark.parametrize("rule,rules,mob,fixes,want", LIVE, ids=[r[0] for r in LIVE])
def test_the_live_rule(rule, rules, mob, fixes, want):
    rules_of, mob_of = rules_and_mob(rules, mob)
    expected = {("farm", f, m, d): v for (f, m, d), v in want.items()}
    # a fix a batch, and all in one batch: the same grazing
    states: dict[str, DeviceState] = {}
    got: Grazing = {}
    for f in fixes_of(fixes):
        add(got, process([f], INDEX, states, lambda d: "farm", rules_of, mob_of).grazing)
    assert got == expected
    assert process(fixes_of(fixes), INDEX, {}, lambda d: "farm", rules_of, mob_of).grazing == expected


def test_a_device_moved_to_another_farm_credits_neither_farm():
    states: dict[str, DeviceState] = {}
    process([Fix(DEV, T, *IN)], INDEX, states, lambda d: "farm", lambda t: FAST)
    assert set(states[DEV].members) == {"A"}
    out = process([Fix(DEV, T + MIN, *IN)], INDEX, states, lambda d: "other", lambda t: FAST)
    assert out.grazing == {} and [e.type for e in out.events] == ["exit", "transferred"]


def test_the_fast_path_and_the_detector_credit_alike():
    """The credit comes before the pipeline chooses its path: a steady device (fast path) and one whose
    battery crosses the threshold (the detector) are credited the same."""
    fixes = [Fix(DEV, T, *IN), Fix(DEV, T + MIN, *IN, {"battery": 90.0}), Fix(DEV, T + 2 * MIN, *IN, {"battery": 5.0})]
    states: dict[str, DeviceState] = {}
    outs = [process([f], INDEX, states, lambda d: "farm", lambda t: FAST) for f in fixes]
    assert [o.grazing for o in outs[1:]] == [{("farm", "A", "", "2026-11-20"): MIN}] * 2
    assert [e.type for e in outs[2].events] == ["battery_low"]


# -- schedule transitions: fences credited up to the transition, the next interval from it ---------------

SCHED_RULES = HerdRules(confirm_fixes=1, max_speed_mps=1e9)
SCHEDULE_ROWS = [
    # (rule, state before, transition, next fix (ts, place) or None, {fence: ms} of the transition + the fix)
    (
        "closes: the members credited up to the transition, nothing after",
        placed(IN_A, OPEN + 1, "A", "Z"),
        CLOSE,
        (CLOSE + 5_000, IN_A),
        {"A": CLOSE - OPEN - 1, "Z": CLOSE - OPEN - 1},
    ),
    (
        "opens: those inside credited from the transition, not from their fix before it",
        placed(IN_A, OPEN - 7_000),
        OPEN,
        (OPEN + 3_000, IN_A),
        {"A": 3_000, "Z": 3_000},
    ),
    (
        "a fix older than the transition it saw (the worker's clock ran ahead): no interval twice",
        placed(IN_A, OPEN + 1, "A", "Z"),
        CLOSE,
        (CLOSE - 500, IN_A),
        {"A": CLOSE - OPEN - 1, "Z": CLOSE - OPEN - 1},
    ),
    (
        "a transition that changes nothing for the device: nothing then, the fix credits the whole interval",
        placed(IN_B, OPEN - 1_000, "B"),
        OPEN,
        (OPEN + 2_000, IN_B),
        {"B": 3_000},
    ),
]


@pytest.mark.parametrize("rule,before,at,nxt,want", SCHEDULE_ROWS, ids=[r[0] for r in SCHEDULE_ROWS])
def test_schedule_transitions(rule, before, at, nxt, want):
    states = {"cow": before}
    day = datetime.fromtimestamp(at / 1000, UTC).date().isoformat()
    got = reevaluate_all(SCHEDULED, states, herd=True, at_ms=at, rules_of=lambda t: SCHED_RULES).grazing
    add(got, process([Fix("cow", nxt[0], *nxt[1])], SCHEDULED, states, lambda d: "farm", lambda t: SCHED_RULES).grazing)
    assert got == {("farm", f, "", day): v for f, v in want.items()}


def test_a_fence_change_credits_nothing_its_events_are_at_the_last_fix():
    states = {"cow": placed(IN_A, OPEN + 1, "A", "Z")}
    out = reevaluate_all(FenceIndex([fence("B", lon=1.0, lat=0.0, size=1.0)]), states, rules_of=lambda t: SCHED_RULES)
    assert [e.type for e in out.events] == ["exit", "exit"] and out.grazing == {}


# -- late merges: the delta, and the property -------------------------------------------------------------

MERGES = [
    # (rule, live fixes, late fixes, the merge's delta {fence: ms})
    (
        "a late fix moves the exit earlier: the time inside shrinks",
        [(0, IN), (MIN, OUT)],
        [(MIN // 2, OUT)],
        {"A": -MIN // 2},
    ),
    (
        "a late fix inside between two outside: an enter and an exit, credited",
        [(0, OUT), (MIN, OUT)],
        [(MIN // 2, IN)],
        {"A": MIN // 2},
    ),
    (
        "a late enter before the first live one: the time inside grows",
        [(0, OUT), (MIN, IN), (2 * MIN, IN)],
        [(MIN // 2, IN)],
        {"A": MIN // 2},
    ),
    ("a late fix that changes no membership: nothing", [(0, IN), (MIN, IN)], [(MIN // 2, IN)], {}),
    ("a duplicate (the time of a fix held): nothing", [(0, IN), (MIN, OUT)], [(MIN, IN)], {}),
    ("older than the window: dropped, nothing", [(0, IN), (25 * H, IN)], [(H - 1, OUT)], {}),
]


@pytest.mark.parametrize("rule,live_fixes,late_fixes,want", MERGES, ids=[r[0] for r in MERGES])
def test_the_merge_delta(rule, live_fixes, late_fixes, want):
    rules = HerdRules(confirm_fixes=1, max_speed_mps=1000, silence_s=30 * 3600)
    states: dict[str, DeviceState] = {}
    track = Track()
    fixes = fixes_of(live_fixes)
    out = process(fixes, INDEX, states, lambda d: "farm", lambda t: rules)
    track.extend(fixes, out.events, states[DEV])
    m = merge(DEV, states[DEV], track, fixes_of(late_fixes), INDEX, rules)
    assert {f: v for (_, f, _, _), v in m.grazing.items()} == want
    if m.too_old == m.duplicates == 0:  # merged: the live grazing plus the delta is that of the fixes in order
        in_order = sorted(fixes + fixes_of(late_fixes), key=lambda f: f.ts_ms)
        assert (
            add(dict(out.grazing), m.grazing) == process(in_order, INDEX, {}, lambda d: "farm", lambda t: rules).grazing
        )


MIDNIGHT = ms("2026-11-20T23:00:00Z")  # an hour before UTC's midnight, and past Auckland's and Stockholm's
fix_st = st.tuples(
    st.sampled_from([5_000, 30_000, 20 * MIN, H + 1, 3 * H]),  # ms after the previous fix: some past the cap
    st.sampled_from(PLACES),
    st.sampled_from([None, 5.0, 40.0]),  # accuracy_m (40: worse than the farm's limit)
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(fix_st, min_size=1, max_size=30),
    st.randoms(use_true_random=False),
    st.integers(1, 6),
    st.sampled_from([1, 2]),
    st.integers(1, 5),
    st.sampled_from(["UTC", "Pacific/Auckland", "Europe/Stockholm"]),
    st.sampled_from([600.0, 3600.0, 7200.0]),
)
def test_any_arrival_order_gives_the_grazing_of_the_fixes_in_order(steps, rnd, batch, confirm, snap_every, tz, silence):
    fixes, ts = [], MIDNIGHT
    for dt, (lon, lat), accuracy in steps:
        ts += dt
        fixes.append(Fix(DEV, ts, lon, lat, {"accuracy_m": accuracy} if accuracy is not None else None))
    rules = HerdRules(confirm_fixes=confirm, timezone=tz, silence_s=silence, max_speed_mps=50)
    mob = Mob(HERD.mob("farm").pastures, HERD.mob("farm").exclusions, "ewes")
    rules_of, mob_of = (lambda t: rules), (lambda d: mob)
    arrival = list(fixes)
    rnd.shuffle(arrival)
    states: dict[str, DeviceState] = {}
    track = Track()
    kept: Grazing = {}
    for i in range(0, len(arrival), batch):
        newest = states[DEV].last_ts if DEV in states else -1
        fresh, late = [], []
        for f in arrival[i : i + batch]:  # the worker: newer fixes through the pipeline, the older merged
            if f.ts_ms > newest:
                fresh.append(f)
                newest = f.ts_ms
            else:
                late.append(f)
        if fresh:
            out = process(fresh, HERD, states, lambda d: "farm", rules_of, mob_of)
            track.extend(fresh, out.events, states[DEV], snap_every)
            add(kept, out.grazing)
        if late:
            m = merge(DEV, states[DEV], track, late, HERD, rules, mob, window_ms=10**12, snap_every=snap_every)
            assert m.too_old == m.duplicates == 0 and not m.newer
            add(kept, m.grazing)
            states[DEV], track = m.state, m.track
    in_order = process(sorted(fixes, key=lambda f: f.ts_ms), HERD, {}, lambda d: "farm", rules_of, mob_of).grazing
    assert kept == in_order
    assert all(v > 0 and k[0] == "farm" and k[2] == "ewes" for k, v in kept.items())

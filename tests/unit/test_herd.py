"""The herd rules as a table: (before, fix, fences inside/near, mob, expected events, state after).

Defaults of the issue: confirm_fixes 2, battery low below 20 % and ok above 25 %, accuracy
limit 25 m, max speed 20 m/s. P and Q are pastures (Q with an exit buffer), X an exclusion
zone, Z a plain zone; the mob has P and Q as pastures and X as exclusion zone.
"""

from __future__ import annotations

import math

import pytest

from fencex.detector import DeviceState, Membership, detect, reevaluate, silence_due, silent_event, unchanged
from fencex.event import event_id
from fencex.fix import Fix
from fencex.herd import DEFAULT_RULES, NO_FIX, NO_MOB, HerdRules, Mob, steady
from tests.unit.factory import fence

P = fence("P")
Q = fence("Q", exit_buffer_m=20)
X = fence("X", kind="exclusion", version=2)
Z = fence("Z", kind="zone")
FENCES = {f.id: f for f in (P, Q, X, Z)}
MOB = Mob(frozenset({"P", "Q"}), frozenset({"X"}))
NO_PASTURE = Mob(frozenset(), frozenset())

T = 1_780_000_000_000
L0, A0 = 17.605, 59.805  # where the device was last accepted
FAR = 17.625  # about 1.1 km east of L0: from L0 in 1 s, a jump; in 2 min, a walk


def dev(*members: str, ts: int = T, lon: float = L0, lat: float = A0, **herd) -> DeviceState:
    inside = {fid: Membership(T - 10_000, FENCES[fid].version) for fid in members}
    return DeviceState("farm", ts, lon, lat, inside, **herd)


def fx(dt_ms: int = 1000, lon: float = L0, lat: float = A0, **extra: float) -> Fix:
    return Fix("cow-1", T + dt_ms, lon, lat, extra or None)


CASES = [
    # (id, before, fix, inside, near, mob, expected [(type, fence)], state after (attributes))
    # -- escape and return: confirm_fixes consecutive fixes
    (
        "one fix outside every pasture: exit, but no escape yet (1 of 2)",
        dev("P"),
        fx(),
        [],
        [],
        MOB,
        [("exit", "P")],
        {"out": False, "streak": 1, "pasture": "P"},
    ),
    (
        "the second consecutive fix outside: escape, naming the pasture left",
        dev(streak=1, pasture="P"),
        fx(),
        [],
        [],
        MOB,
        [("escape", "P")],
        {"out": True, "streak": 0},
    ),
    (
        "back inside before the second fix: the count starts again, no alarm",
        dev(streak=1, pasture="P"),
        fx(),
        ["P"],
        [],
        MOB,
        [("enter", "P")],
        {"out": False, "streak": 0},
    ),
    (
        "in a plain zone only: a zone is no pasture, so out",
        dev("Z", streak=1, pasture="P"),
        fx(),
        ["Z"],
        [],
        MOB,
        [("escape", "P")],
        {"out": True},
    ),
    ("escape once: still out, no second escape", dev(out=True, pasture="P"), fx(), [], [], MOB, [], {"out": True}),
    (
        "the first fix back: enter, but no return yet (1 of 2)",
        dev(out=True, pasture="P"),
        fx(),
        ["P"],
        [],
        MOB,
        [("enter", "P")],
        {"out": True, "streak": 1},
    ),
    (
        "the second fix back: return, naming the pasture it is back in",
        dev("Q", out=True, streak=1, pasture="P"),
        fx(),
        ["Q"],
        [],
        MOB,
        [("return", "Q")],
        {"out": False, "streak": 0},
    ),
    (
        "jitter: within a pasture's exit buffer it is still a member, so not out",
        dev("Q"),
        fx(),
        [],
        ["Q"],
        MOB,
        [],
        {"out": False, "streak": 0},
    ),
    # -- exclusion zones
    (
        "into an exclusion zone inside the pasture: enter, out 1 of 2",
        dev("P"),
        fx(),
        ["P", "X"],
        [],
        MOB,
        [("enter", "X")],
        {"out": False, "streak": 1},
    ),
    (
        "still in the exclusion zone: escape, naming the zone entered",
        dev("P", "X", streak=1, pasture="P"),
        fx(),
        ["P", "X"],
        [],
        MOB,
        [("escape", "X")],
        {"out": True},
    ),
    # -- no pasture: never out
    ("a mob (farm) with no pasture: never out", dev(), fx(), [], [], NO_PASTURE, [], {"out": False, "streak": 0}),
    ("no mob given: the fence detector alone", dev(streak=0), fx(), [], [], NO_MOB, [], {"out": False}),
    # -- battery: once per crossing, with a margin
    ("battery falls below 20 %: battery_low", dev("P"), fx(battery=19.0), ["P"], [], MOB, [("battery_low", "")], {}),
    ("battery at exactly 20 %: not below, no alarm", dev("P"), fx(battery=20.0), ["P"], [], MOB, [], {"low": False}),
    (
        "battery hovering around the threshold while low: no flapping",
        dev("P", low=True),
        fx(battery=24.0),
        ["P"],
        [],
        MOB,
        [],
        {"low": True, "battery": 24.0},
    ),
    (
        "battery at the threshold plus the margin (25 %): still low",
        dev("P", low=True),
        fx(battery=25.0),
        ["P"],
        [],
        MOB,
        [],
        {"low": True},
    ),
    (
        "battery above threshold plus margin (recharged): battery_ok",
        dev("P", low=True),
        fx(battery=80.0),
        ["P"],
        [],
        MOB,
        [("battery_ok", "")],
        {"low": False},
    ),
    (
        "escape and battery in one fix: fence events, then herd, then battery",
        dev(streak=1, pasture="P"),
        fx(battery=10.0),
        [],
        [],
        MOB,
        [("escape", "P"), ("battery_low", "")],
        {"out": True, "low": True},
    ),
    # -- fixes not to trust: accuracy
    (
        "inaccurate fix (30 m) just outside the border: no exit, no count; it moves the device",
        dev("P"),
        fx(lon=L0 + 0.0002, accuracy_m=30.0),
        [],
        [],
        MOB,
        [],
        {"out": False, "streak": 0, "lon": L0 + 0.0002, "acc": (T, L0, A0)},
    ),
    (
        "inaccurate fix inside while out: no enter, no return",
        dev(out=True, pasture="P"),
        fx(accuracy_m=80.0),
        ["P"],
        [],
        MOB,
        [],
        {"out": True, "streak": 0},
    ),
    (
        "inaccurate fix still reports its battery",
        dev("P"),
        fx(accuracy_m=80.0, battery=5.0),
        ["P"],
        [],
        MOB,
        [("battery_low", "")],
        {"low": True},
    ),
    ("accuracy at the limit (25 m) is trusted: exit", dev("P"), fx(accuracy_m=25.0), [], [], MOB, [("exit", "P")], {}),
    (
        "the first fix after an inaccurate one is judged from the last accepted fix",
        dev("P", ts=T + 500, lon=FAR, acc=(T, L0, A0)),
        fx(),
        ["P"],
        [],
        MOB,
        [],
        {"acc": None, "lon": L0},
    ),
    # -- fixes not to trust: jumps, then a confirming fix
    (
        "a jump (1.1 km in 1 s): held back, no exit",
        dev("P"),
        fx(lon=FAR),
        [],
        [],
        MOB,
        [],
        {"pending": (T + 1000, FAR, A0), "acc": (T, L0, A0), "lon": L0, "last_ts": T + 1000},
    ),
    (
        "a second fix agreeing with the jump: the collar really moved (on a truck), exit",
        dev("P", ts=T + 1000, acc=(T, L0, A0), pending=(T + 1000, FAR, A0)),
        fx(2000, lon=FAR + 0.0001),
        [],
        [],
        MOB,
        [("exit", "P")],
        {"pending": None, "acc": None, "streak": 1},
    ),
    (
        "a fix back where the device was after a jump: accepted, the jump forgotten",
        dev("P", ts=T + 1000, acc=(T, L0, A0), pending=(T + 1000, FAR, A0)),
        fx(2000),
        ["P"],
        [],
        MOB,
        [],
        {"pending": None, "acc": None},
    ),
    (
        "a walk of 1.1 km in 2 minutes is no jump: exit",
        dev("P"),
        fx(120_000, lon=FAR),
        [],
        [],
        MOB,
        [("exit", "P")],
        {"pending": None},
    ),
    # -- silence: resumed with the next fix
    (
        "a silent collar's next fix: resumed at that fix's time, before the fix's own events",
        dev("P", silent=True),
        fx(),
        [],
        [],
        MOB,
        [("resumed", ""), ("exit", "P")],
        {"silent": False, "streak": 1},
    ),
    (
        "a silent collar's fix not to trust still resumes it (a fix arrived), and moves no fence",
        dev("P", silent=True),
        fx(accuracy_m=80.0),
        [],
        [],
        MOB,
        [("resumed", "")],
        {"silent": False, "acc": (T, L0, A0)},
    ),
]


@pytest.mark.parametrize(
    "before,fix_,inside,near,mob,expected,after", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_herd_table(before, fix_, inside, near, mob, expected, after):
    out = detect(before, fix_, "farm", inside, near, FENCES, DEFAULT_RULES, mob)
    assert [(e.type, e.fence_id) for e in out.events] == expected
    for name, value in after.items():
        assert getattr(out.state, name) == value, name


def _herd_fields(s: DeviceState) -> tuple:
    members = {k: (m.since_ms, m.version, m.dwelled) for k, m in s.members.items()}
    return members, s.acc, s.pending, s.out, s.streak, s.pasture, s.low, s.silent


@pytest.mark.parametrize(
    "before,fix_,inside,near,mob", [c[1:6] for c in CASES if c[1] is not None], ids=[c[0] for c in CASES]
)
def test_fast_path_predicates_never_skip_a_change(before, fix_, inside, near, mob):
    # The pipeline moves a device without detect() when steady() and unchanged() say so:
    # then detect() must give no event and change nothing but position, time and battery.
    out = detect(before, fix_, "farm", inside, near, FENCES, DEFAULT_RULES, mob)
    if steady(before, fix_, DEFAULT_RULES) and unchanged(before, fix_.ts_ms, inside, near, FENCES, mob):
        assert out.events == [] and _herd_fields(out.state) == _herd_fields(before)
    else:
        assert out.events or _herd_fields(out.state) != _herd_fields(before) or out.untrusted


def test_the_common_fix_stays_on_the_fast_path():
    # inside its pasture, a battery reading that crosses nothing, good accuracy, a walking pace
    before = dev("P", battery=80.0)
    f = fx(10_000, lon=L0 + 0.0005, battery=79.0, accuracy_m=4.0)
    assert steady(before, f, DEFAULT_RULES) and unchanged(before, f.ts_ms, ["P"], [], FENCES, MOB)


def test_confirm_fixes_is_the_farms():
    one = HerdRules(confirm_fixes=1)
    out = detect(dev("P"), fx(), "farm", [], [], FENCES, one, MOB)
    assert [(e.type, e.fence_id) for e in out.events] == [("exit", "P"), ("escape", "P")]
    three = HerdRules(confirm_fixes=3)
    s = dev("P")
    for k in range(3):
        out = detect(s, fx(1000 * (k + 1)), "farm", [], [], FENCES, three, MOB)
        s = out.state
    assert [e.type for e in out.events] == ["escape"] and s.out


def test_escape_carries_the_distance_and_the_fix():
    out = detect(dev(streak=1, pasture="P"), fx(), "farm", [], [], FENCES, DEFAULT_RULES, MOB, lambda ids, x, y: 40.5)
    (e,) = out.events
    assert (e.type, e.fence_id, e.fence_version, e.ts_ms, e.distance_m) == ("escape", "P", 1, T + 1000, 40.5)
    low = detect(dev(), fx(battery=3.0), "farm", [], [], FENCES, DEFAULT_RULES, NO_MOB).events[0]
    assert (low.type, low.fence_id, low.fence_version, low.battery) == ("battery_low", "", 0, 3.0)


def test_a_first_fix_too_inaccurate_places_nothing():
    out = detect(None, fx(accuracy_m=100.0), "farm", ["P"], [], FENCES, DEFAULT_RULES, MOB)
    assert out.events == [] and out.state.members == {} and out.state.acc == NO_FIX and out.untrusted
    nxt = detect(out.state, fx(2000, lon=FAR), "farm", ["P"], [], FENCES, DEFAULT_RULES, MOB)  # no jump reference
    assert [(e.type, e.fence_id) for e in nxt.events] == [("enter", "P")]


# -- fence changes: escapes and returns at once, with no new fix

REEVALUATE = [
    # (id, before, fences after the change, inside, mob, expected [(type, fence)], state after)
    (
        "its pasture deleted while another stays: exit and escape at once",
        dev("P", pasture="P"),
        {"Q": Q, "X": X},
        [],
        MOB,
        [("exit", "P"), ("escape", "P")],
        {"out": True},
    ),
    (
        "a pasture grown over an escaped animal: enter and return at once",
        dev(out=True, pasture="P"),
        FENCES,
        ["Q"],
        MOB,
        [("enter", "Q"), ("return", "Q")],
        {"out": False},
    ),
    (
        "a change elsewhere does not hurry an escape under way (1 of 2)",
        dev(streak=1, pasture="P"),
        FENCES,
        [],
        MOB,
        [],
        {"out": False, "streak": 1},
    ),
    (
        "a fence change that undoes the outside verdict cancels the count",
        dev(streak=1, pasture="P"),
        FENCES,
        ["P"],
        MOB,
        [("enter", "P")],
        {"out": False, "streak": 0},
    ),
    (
        "the farm's last pasture deleted: no pasture, never out: return",
        dev(out=True, pasture="P"),
        {"X": X},
        [],
        MOB,
        [("return", "")],
        {"out": False},
    ),
]


@pytest.mark.parametrize(
    "before,fences,inside,mob,expected,after", [c[1:] for c in REEVALUATE], ids=[c[0] for c in REEVALUATE]
)
def test_reevaluate_table(before, fences, inside, mob, expected, after):
    out = reevaluate(before, "cow-1", inside, [], fences, mob)
    assert [(e.type, e.fence_id) for e in out.events] == expected
    assert all(e.ts_ms == T for e in out.events)  # at the accepted fix's time
    for name, value in after.items():
        assert getattr(out.state, name) == value, name
    changed = out.events or _herd_fields(out.state) != _herd_fields(before)
    assert unchanged(before, T, inside, [], fences, mob, fresh=False) is (not changed)


def test_reevaluate_uses_the_last_accepted_fix_not_an_inaccurate_one():
    before = dev("P", ts=T + 5000, lon=FAR, acc=(T, L0, A0))
    out = reevaluate(before, "cow-1", [], [], {"Q": Q}, MOB)  # P deleted
    assert [(e.type, e.ts_ms, e.lon) for e in out.events] == [("exit", T, L0), ("escape", T, L0)]
    assert reevaluate(DeviceState("farm", T, L0, A0, acc=NO_FIX), "cow-1", ["P"], [], FENCES, MOB).events == []


# -- saved states


def test_a_state_saved_before_the_herd_rules_reads_with_defaults():
    old = {"tenant": "farm", "ts": T, "lon": L0, "lat": A0, "in": {"P": [T - 5, 1, 0]}}
    s = DeviceState.from_obj(old)
    assert s == DeviceState("farm", T, L0, A0, {"P": Membership(T - 5, 1, False)})
    assert (s.acc, s.pending, s.out, s.streak, s.pasture, s.low, s.battery) == (None, None, False, 0, "", False, None)
    assert s.to_obj() == old  # and a state with no herd news saves as before


def test_state_roundtrip_with_herd_fields():
    s = dev("P", "X", acc=(T - 9, 1.5, 2.5), pending=(T - 1, 3.5, 4.5), out=True, streak=1, pasture="P")
    s.low, s.battery = True, 12.5
    assert DeviceState.from_obj(s.to_obj()) == s
    assert math.isfinite(DeviceState.from_obj(s.to_obj()).battery)


def test_without_herd_rules_a_state_saves_as_before():
    # the pipeline without rules_of: no herd fields creep into saved states (a fence deleted, a battery low)
    out = reevaluate(dev("P"), "cow-1", [], [], {"Q": Q}, NO_MOB)
    assert [e.type for e in out.events] == ["exit"]
    assert set(out.state.to_obj()) == {"tenant", "ts", "lon", "lat", "in"}
    plain = detect(dev(), fx(battery=3.0, accuracy_m=500.0), "farm", ["P"], [], FENCES)
    assert [e.type for e in plain.events] == ["enter"] and not plain.untrusted
    assert set(plain.state.to_obj()) == {"tenant", "ts", "lon", "lat", "in", "bat"}  # the reading is kept


# -- silence: judged on the worker's clock, from when the last fix arrived (seen_ms)

NOW = T + 86_400_000  # the worker's clock, a day after the fixes' own times
HOUR = 3_600_000


def saved(state: DeviceState) -> DeviceState:
    """The state as the next worker loads it (a restart, or its partition moved)."""
    return DeviceState.from_obj(state.to_obj())


SILENCE = [
    # (id, state, now_ms, rules, due)
    ("no fix arrived for the silence time (1 h): due", dev(seen_ms=NOW - HOUR), NOW, DEFAULT_RULES, True),
    (
        "the last fix arrived just under the silence time ago: not due",
        dev(seen_ms=NOW - HOUR + 1),
        NOW,
        DEFAULT_RULES,
        False,
    ),
    (
        "an old fix (a backlog, a replay) that arrived just now: judged by arrival, not due",
        dev(ts=NOW - 10 * HOUR, seen_ms=NOW),
        NOW,
        DEFAULT_RULES,
        False,
    ),
    (
        "silent already: not due again (one silent per silence)",
        dev(seen_ms=NOW - 2 * HOUR, silent=True),
        NOW,
        DEFAULT_RULES,
        False,
    ),
    ("arrival unknown (saved before silence was kept): never due", dev(seen_ms=0), NOW, DEFAULT_RULES, False),
    ("the farm's own silence time (60 s)", dev(seen_ms=NOW - 60_000), NOW, HerdRules(silence_s=60), True),
    (
        "silence across a restart: the next worker judges the saved arrival time",
        saved(dev(seen_ms=NOW - HOUR)),
        NOW,
        DEFAULT_RULES,
        True,
    ),
    (
        "the silent mark across a restart: the next worker does not send it again",
        saved(dev(seen_ms=NOW - 2 * HOUR, silent=True)),
        NOW,
        DEFAULT_RULES,
        False,
    ),
]


@pytest.mark.parametrize("state,now_ms,rules,due", [c[1:] for c in SILENCE], ids=[c[0] for c in SILENCE])
def test_silence_table(state, now_ms, rules, due):
    assert silence_due(state, now_ms, rules) is due


def test_silent_ids_are_a_function_of_the_device_and_its_last_fix():
    s = dev("P", ts=T + 7000, lon=L0 + 0.0001, seen_ms=NOW - HOUR)
    e = silent_event("cow-1", s)
    assert (e.type, e.fence_id, e.fence_version, e.ts_ms, e.lon) == ("silent", "", 0, T + 7000, L0 + 0.0001)
    assert e.event_id == event_id("cow-1", "", 0, "silent", T + 7000) == silent_event("cow-1", saved(s)).event_id
    resumed = detect(dev(silent=True), fx(2000), "farm", [], [], FENCES, DEFAULT_RULES, MOB).events[0]
    assert resumed.event_id == event_id("cow-1", "", 0, "resumed", T + 2000)


@pytest.mark.parametrize(
    "before,fix_",
    [(dev("P"), fx()), (dev("P"), fx(accuracy_m=80.0)), (dev("P"), fx(lon=FAR)), (None, fx())],
    ids=["accepted", "inaccurate", "jump", "first fix"],
)
def test_every_fresh_fix_sets_the_arrival_time(before, fix_):
    out = detect(before, fix_, "farm", ["P"], [], FENCES, DEFAULT_RULES, MOB, None, NOW)
    assert out.state.seen_ms == NOW


def test_a_stale_fix_neither_sets_the_arrival_time_nor_resumes():
    before = dev("P", ts=T + 5000, seen_ms=NOW - 2 * HOUR, silent=True)
    out = detect(before, fx(), "farm", ["P"], [], FENCES, DEFAULT_RULES, MOB, None, NOW)
    assert out.stale and out.events == [] and out.state.seen_ms == NOW - 2 * HOUR and out.state.silent


# --- the farm's time: its zone (its days, for grazing) and its track window (late fixes) ---


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"timezone": "Europe/Stockholm"}, None),  # an IANA name
        ({"timezone": "UTC"}, None),  # the default
        ({"timezone": "Europe/Atlantis"}, ValueError),  # no such zone (zoneinfo's KeyError made a ValueError)
        ({"timezone": "../../etc/passwd"}, ValueError),  # not a zone's name
        ({"timezone": ""}, ValueError),
        ({"timezone": "x" * 300}, ValueError),  # zoneinfo's OSError (name too long) made a ValueError
        ({"timezone": None}, TypeError),  # a stored record's null
        ({"timezone": 1}, TypeError),
        ({"track_window_s": 3600.0}, None),
        ({"track_window_s": 0.0}, ValueError),  # no window at all
        ({"track_window_s": -1.0}, ValueError),
        ({"track_window_s": "86400"}, TypeError),  # a stored record's string
        ({"track_window_s": math.nan}, TypeError),
    ],
)
def test_time_zone_and_track_window_are_checked(fields, error):
    if error is None:
        rules = HerdRules(**fields)
        assert all(getattr(rules, k) == v for k, v in fields.items())
    else:
        with pytest.raises(error):
            HerdRules(**fields)


def test_the_farms_time_defaults_and_reads_back_from_the_store():
    from fencex.store.herd import rules_from_json, rules_to_json

    assert (DEFAULT_RULES.timezone, DEFAULT_RULES.track_window_s) == ("UTC", 86_400.0)
    rules = HerdRules(silence_s=120.0, timezone="Pacific/Auckland", track_window_s=7200.0)
    assert rules_from_json("farm", rules_to_json(rules)) == rules
    # a record written before these fields: their defaults
    assert rules_from_json("farm", b'{"silence_s": 120.0}') == HerdRules(silence_s=120.0)
    # a record naming a zone this machine does not know: the defaults, logged (it stops no farm)
    assert rules_from_json("farm", b'{"timezone": "Mars/Olympus"}') is DEFAULT_RULES

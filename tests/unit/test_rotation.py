"""Rotation schedules in the detector's pipeline, as tables: an inactive fence counts as absent at
the fix's time; a transition re-evaluates the devices at its instant (issue 12 part 4)."""

from __future__ import annotations

from datetime import UTC, datetime
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fencex.detector import DeviceState, Membership
from fencex.fix import Fix
from fencex.herd import HerdRules, Mob
from fencex.index import FenceIndex
from fencex.pipeline import process, reevaluate_all
from fencex.schedule import Schedule
from tests.unit.factory import fence

T = 1_780_000_000_000
OPEN, CLOSE = T + 10_000, T + 20_000  # the scheduled fences are active from OPEN to CLOSE


def window(start: int, end: int) -> Schedule:
    iso = [datetime.fromtimestamp(x / 1000, UTC).isoformat() for x in (start, end)]
    return Schedule.model_validate({"windows": [{"kind": "absolute", "from": iso[0], "to": iso[1]}]})


SCHED = window(OPEN, CLOSE)
# A and B are pastures side by side; A is scheduled, B always active. Z: a scheduled zone over A.
# X: a scheduled exclusion zone over B's east half.
INDEX = FenceIndex(
    [
        fence("A", lon=0.0, lat=0.0, size=1.0, schedule=SCHED),
        fence("B", lon=1.0, lat=0.0, size=1.0),
        fence("Z", lon=0.0, lat=0.0, size=1.0, kind="zone", schedule=SCHED),
        fence("X", lon=1.5, lat=0.0, size=0.5, kind="exclusion", schedule=SCHED),
    ]
)
IN_A, IN_B, IN_X = (0.5, 0.5), (1.2, 0.5), (1.7, 0.5)
RULES = HerdRules(confirm_fixes=1, max_speed_mps=1e9)


def rules_of(tenant: str) -> HerdRules:
    return RULES


def farm(device: str) -> str:
    return "farm"


def placed(where: tuple[float, float], ts: int, *members: str, out: bool = False, sched: int = 0) -> DeviceState:
    s = DeviceState("farm", ts, *where, {m: Membership(ts, 1) for m in members}, out=out)
    s.sched_ms = sched
    return s


FIXES = [
    # (id, state before, fix (ts, place), expected [(type, fence)])
    ("an inactive zone and pasture: no enter; out of the active pasture B: escape", None, (T, IN_A), [("escape", "")]),
    ("an active zone: enter", None, (OPEN, IN_A), [("enter", "A"), ("enter", "Z")]),
    (
        "a member of a zone that closed meanwhile: exit",
        placed(IN_A, OPEN, "A", "Z"),
        (CLOSE, IN_A),
        [("exit", "A"), ("exit", "Z"), ("escape", "A")],
    ),
    (
        "an inactive pasture does not count: in it, with B active, is out",
        placed(IN_B, T, "B"),
        (T + 1000, IN_A),
        [("exit", "B"), ("escape", "B")],
    ),
    (
        "the pasture opens: in it is back in",
        placed(IN_A, T, out=True),
        (OPEN, IN_A),
        [("enter", "A"), ("enter", "Z"), ("return", "A")],
    ),
    ("an inactive exclusion zone: entering it is no escape", placed(IN_B, T, "B"), (T + 1000, IN_X), []),
    (
        "an active exclusion zone: entering it is an escape",
        placed(IN_B, OPEN, "B"),
        (OPEN + 1000, IN_X),
        [("enter", "X"), ("escape", "X")],
    ),
    (
        "a fix before the transition the device saw is judged at that transition",
        placed(IN_B, T, "B", sched=OPEN),
        (OPEN - 500, IN_A),
        [("exit", "B"), ("enter", "A"), ("enter", "Z")],
    ),
]


@pytest.mark.parametrize("before,fix,expected", [c[1:] for c in FIXES], ids=[c[0] for c in FIXES])
def test_fixes_see_only_the_fences_active_at_their_time(before, fix, expected):
    states = {} if before is None else {"cow": before}
    ts, (lon, lat) = fix
    out = process([Fix("cow", ts, lon, lat)], INDEX, states, farm, rules_of)
    assert [(e.type, e.fence_id) for e in out.events] == expected
    assert all(e.ts_ms == ts for e in out.events)


TRANSITIONS = [
    # (id, state before, transition instant, expected [(type, fence)])
    (
        "opens: those inside enter, and are back in their pasture",
        placed(IN_A, T, out=True),
        OPEN,
        [("enter", "A"), ("enter", "Z"), ("return", "A")],
    ),
    (
        "closes: those inside exit, and are out of their pasture",
        placed(IN_A, OPEN + 1, "A", "Z"),
        CLOSE,
        [("exit", "A"), ("exit", "Z"), ("escape", "A")],
    ),
    ("an exclusion zone opens over a device: escape", placed(IN_X, T, "B"), OPEN, [("enter", "X"), ("escape", "X")]),
    (
        "an exclusion zone closes: return",
        placed(IN_X, OPEN + 1, "B", "X", out=True),
        CLOSE,
        [("exit", "X"), ("return", "B")],
    ),
    ("a device elsewhere: nothing", placed(IN_B, T, "B"), OPEN, []),
    ("a device whose fix is after the transition has seen it: nothing", placed(IN_A, OPEN + 5, out=True), OPEN, []),
    ("a device re-evaluated at it already: nothing", placed(IN_A, T, out=True, sched=OPEN), OPEN, []),
]


@pytest.mark.parametrize("before,at,expected", [c[1:] for c in TRANSITIONS], ids=[c[0] for c in TRANSITIONS])
def test_a_transition_re_evaluates_the_devices_at_its_instant(before, at, expected):
    states = {"cow": before}
    out = reevaluate_all(INDEX, states, None, None, herd=True, at_ms=at)
    assert [(e.type, e.fence_id) for e in out.events] == expected
    assert all(e.ts_ms == at for e in out.events)  # at the transition: a replay gives the same ids
    if expected:
        assert states["cow"].sched_ms == at and out.dirty == {"cow": states["cow"]}
        enters = [e.fence_id for e in out.events if e.type == "enter"]
        assert all(states["cow"].members[f].since_ms == at for f in enters)
        again = reevaluate_all(INDEX, states, None, None, herd=True, at_ms=at)
        assert again.events == [] and again.dirty == {}  # once


def test_the_same_transition_from_the_same_saved_state_gives_the_same_ids():
    def ids() -> list[str]:
        saved = placed(IN_A, T, out=True)
        states = {"cow": DeviceState.from_obj(saved.to_obj())}
        return [e.event_id for e in reevaluate_all(INDEX, states, None, None, herd=True, at_ms=OPEN).events]

    first = ids()
    assert len(first) == 3 and ids() == first


def test_sched_ms_is_saved_with_the_state():
    s = placed(IN_A, T, "A", sched=OPEN)
    assert DeviceState.from_obj(s.to_obj()) == s and s.to_obj()["sched"] == OPEN
    assert "sched" not in placed(IN_A, T).to_obj()  # states of farms without schedules read as before


def test_a_fence_change_judges_activity_at_the_devices_own_time():
    # a fence change (no at_ms) at a device whose last fix was before the fence opened: no enter
    states = {"cow": placed(IN_A, T, out=True)}
    assert reevaluate_all(INDEX, states, None, None, herd=True).events == []
    states = {"cow": placed(IN_A, OPEN + 1, out=True)}
    out = reevaluate_all(INDEX, states, None, None, herd=True)
    assert [(e.type, e.fence_id, e.ts_ms) for e in out.events] == [
        ("enter", "A", OPEN + 1),
        ("enter", "Z", OPEN + 1),
        ("return", "A", OPEN + 1),
    ]


def test_farms_without_schedules_are_not_in_the_index_schedules():
    index = FenceIndex([fence("A", schedule=SCHED), fence("B", lon=5.0, tenant="other")])
    assert set(index.schedules) == {"farm"} and set(index.schedules["farm"].schedules) == {"A"}
    assert FenceIndex([fence("B")]).schedules == {}


def test_a_mob_sees_only_its_active_pastures():
    # cow's mob: pasture A only; while A is inactive, the mob has no pasture: never out for want of one
    states = {"cow": placed(IN_B, T, "B")}
    mob_of = {"cow": Mob(frozenset({"A"}))}.get
    out = process([Fix("cow", T + 1000, *IN_B)], INDEX, states, farm, rules_of, mob_of)
    assert out.events == []
    out = process([Fix("cow", OPEN, *IN_B)], INDEX, states, farm, rules_of, mob_of)
    assert [(e.type, e.fence_id) for e in out.events] == [("escape", "")]  # it left no pasture of its mob


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]), st.integers(T, CLOSE + 10_000), st.sampled_from([IN_A, IN_B, IN_X, (5.0, 5.0)])
        ),
        max_size=40,
    )
)
def test_the_fast_path_skips_no_change_a_schedule_makes(moves):
    """Fixes across the openings and closings: the pipeline gives what it gives with its fast path off."""
    fixes = [Fix(d, ts, *where) for d, ts, where in moves]
    fast = process(fixes, INDEX, {}, farm, rules_of)
    with patch("fencex.pipeline.unchanged", lambda *args, **kw: False):
        slow = process(fixes, INDEX, {}, farm, rules_of)
    assert [e.event_id for e in fast.events] == [e.event_id for e in slow.events]

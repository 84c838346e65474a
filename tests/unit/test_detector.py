"""The detector as a table: (before, fix, fences inside/near, expected events)."""

from __future__ import annotations

import orjson
import pytest

from fencex.detector import DeviceState, Membership, detect, reevaluate, unchanged
from tests.unit.factory import fence, fix

A = fence("A", dwell_s=60)
B = fence("B", version=3)
C = fence("C", exit_buffer_m=20)
FENCES = {f.id: f for f in (A, B, C)}


def state(ts: int, *members: tuple[str, int, bool]) -> DeviceState:
    return DeviceState(
        "farm",
        ts,
        17.6,
        59.8,
        {fid: Membership(since, FENCES[fid].version, dwelled) for fid, since, dwelled in members},
    )


T = 1_700_000_000_000

CASES = [
    # (id, before, fix ts, inside, near, expected [(type, fence)], stale)
    ("first fix outside: nothing", None, T, [], [], [], False),
    ("first fix inside: enter", None, T, ["A"], [], [("enter", "A")], False),
    ("on the border counts as inside: the index reports it, so enter", None, T, ["B"], [], [("enter", "B")], False),
    ("still inside: no event", state(T, ("B", T, False)), T + 1000, ["B"], [], [], False),
    ("leaves: exit", state(T, ("B", T, False)), T + 1000, [], [], [("exit", "B")], False),
    ("overlapping fences: enter both, sorted", None, T, ["B", "A"], [], [("enter", "A"), ("enter", "B")], False),
    (
        "from one overlapping fence into the other only: exit then enter",
        state(T, ("A", T, False)),
        T + 1000,
        ["B"],
        [],
        [("exit", "A"), ("enter", "B")],
        False,
    ),
    ("out of order: older fix is stale, no event", state(T, ("B", T, False)), T - 1, [], [], [], True),
    ("same timestamp again (a duplicate): stale", state(T, ("B", T, False)), T, [], [], [], True),
    (
        "jitter: just outside but within the exit buffer, still a member",
        state(T, ("C", T, False)),
        T + 1000,
        [],
        ["C"],
        [],
        False,
    ),
    ("jitter: beyond the exit buffer, exit", state(T, ("C", T, False)), T + 1000, [], [], [("exit", "C")], False),
    ("buffer zone does not make a newcomer enter", None, T, [], ["C"], [], False),
    ("dwell not yet due (59 s)", state(T, ("A", T, False)), T + 59_000, ["A"], [], [], False),
    ("dwell due at exactly dwell_s", state(T, ("A", T, False)), T + 60_000, ["A"], [], [("dwell", "A")], False),
    ("dwell only once", state(T + 60_000, ("A", T, True)), T + 120_000, ["A"], [], [], False),
    ("exit after dwell", state(T + 60_000, ("A", T, True)), T + 120_000, [], [], [("exit", "A")], False),
    (
        "fence reshaped meanwhile, still inside: no event, the membership takes the new version",
        DeviceState("farm", T, 17.6, 59.8, {"B": Membership(T, 2)}),
        T + 1000,
        ["B"],
        [],
        [],
        False,
    ),
    (
        "fence deleted meanwhile: exit with its last version",
        DeviceState("farm", T, 17.6, 59.8, {"gone": Membership(T, 7)}),
        T + 1000,
        [],
        [],
        [("exit", "gone")],
        False,
    ),
]


@pytest.mark.parametrize("before,ts,inside,near,expected,stale", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_detect_table(before, ts, inside, near, expected, stale):
    out = detect(before, fix(ts, 17.605, 59.805), "farm", inside, near, FENCES)
    assert [(e.type, e.fence_id) for e in out.events] == expected
    assert out.stale is stale
    if stale:
        assert out.state is before
    else:
        assert out.state.last_ts == ts
        assert set(out.state.members) == (set(inside) | ({n for n in near if before and n in before.members}))


def _members(s: DeviceState) -> dict:
    return {k: (m.since_ms, m.version, m.dwelled) for k, m in s.members.items()}


@pytest.mark.parametrize(
    "before,ts,inside,near",
    [c[1:5] for c in CASES if c[1] is not None and not c[6]],
    ids=[c[0] for c in CASES if c[1] is not None and not c[6]],
)
def test_unchanged_is_true_exactly_when_detect_changes_nothing(before, ts, inside, near):
    # The pipeline's fast path asks unchanged(); it must never skip a row that changes something.
    out = detect(before, fix(ts, 17.605, 59.805), "farm", inside, near, FENCES)
    nothing = not out.events and _members(out.state) == _members(before)
    assert unchanged(before, ts, inside, near, FENCES) is nothing


def test_event_fields_and_versions():
    out = detect(None, fix(T, 17.605, 59.805), "farm", ["B"], [], FENCES)
    (e,) = out.events
    assert (e.tenant, e.device_id, e.fence_id, e.fence_version, e.ts_ms) == ("farm", "cow-1", "B", 3, T)
    again = detect(None, fix(T, 17.605, 59.805), "farm", ["B"], [], FENCES)
    assert again.events[0].event_id == e.event_id  # same fix twice: same id
    later = detect(None, fix(T + 1, 17.605, 59.805), "farm", ["B"], [], FENCES)
    assert later.events[0].event_id != e.event_id


def test_dwell_event_carries_dwell_s():
    out = detect(state(T, ("A", T, False)), fix(T + 61_000, 17.605, 59.805), "farm", ["A"], [], FENCES)
    assert [(e.type, e.dwell_s) for e in out.events] == [("dwell", 60)]


def test_since_is_kept_while_inside():
    out = detect(state(T, ("A", T - 5000, False)), fix(T + 1000, 17.605, 59.805), "farm", ["A"], [], FENCES)
    assert out.state.members["A"].since_ms == T - 5000


def test_reevaluate_after_fence_deleted_and_reshaped():
    before = state(T, ("A", T, False), ("B", T, False))
    reshaped_b = fence("B", version=4)
    fences = {"B": reshaped_b}  # A deleted, B reshaped so the device is now outside
    out = reevaluate(before, "cow-1", [], [], fences)
    assert [(e.type, e.fence_id, e.fence_version, e.ts_ms) for e in out.events] == [
        ("exit", "A", 1, T),
        ("exit", "B", 4, T),
    ]
    grown = reevaluate(DeviceState("farm", T, 1.0, 2.0), "cow-1", ["B"], [], fences)
    assert [(e.type, e.fence_id, e.lon, e.lat) for e in grown.events] == [("enter", "B", 1.0, 2.0)]


def test_state_roundtrip():
    s = state(T, ("A", T - 5, True), ("B", T, False))
    assert DeviceState.from_obj(s.to_obj()) == s


def test_states_read_back_share_one_string_a_farm():
    """Issue 15 #3: a worker caches up to a million states; each read from Redis held its own farm string."""
    raw = orjson.dumps({**state(T, ("A", T - 5, True)).to_obj(), "tenant": "farm-7"})
    a, b = DeviceState.from_obj(orjson.loads(raw)), DeviceState.from_obj(orjson.loads(raw))
    assert a.tenant == "farm-7" and a.tenant is b.tenant

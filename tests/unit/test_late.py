"""Late fixes merged into a device's track: the merge rule as a table, and the in-order equivalence
as a property over arrival orders (issue 12, part 2)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fencex.detector import DeviceState, detect
from fencex.event import Event
from fencex.fix import Fix
from fencex.herd import NO_HERD, NO_MOB, HerdRules, Mob
from fencex.index import FenceIndex
from fencex.late import merge
from fencex.pipeline import process
from fencex.track import Track
from tests.unit.factory import fence

DEV = "cow-1"
T = 1_700_000_000_000
H = 3_600_000

A = fence("A")  # 17.60..17.61, 59.80..59.81
PLAIN = FenceIndex([A])
IN, OUT = (17.605, 59.805), (17.59, 59.79)


def live(index: FenceIndex, fixes: list[Fix], states: dict[str, DeviceState], track: Track, **herd) -> list[Event]:
    """The live path: the pipeline on fixes newer than the device's, then the track extended."""
    rules: HerdRules = herd.get("rules", NO_HERD)
    mob: Mob = herd.get("mob", NO_MOB)
    herd_on = "rules" in herd
    out = process(
        fixes,
        index,
        states,
        lambda d: "farm",
        (lambda t: rules) if herd_on else None,
        (lambda d: mob) if herd_on else None,
    )
    track.extend(fixes, out.events, states[DEV], herd.get("snap_every", 100))
    return out.events


def at(ts: int, place: tuple[float, float]) -> Fix:
    return Fix(DEV, ts, place[0], place[1])


def key(e: Event) -> tuple:
    return (e.type, e.fence_id, e.ts_ms - T, e.late)


ROWS = [
    # (rule, live fixes (ts offset, place), late fixes, late events published, events retracted, (too_old, dups, newer))
    (
        "a late exit and enter between two live fixes: both published, late, at their fixes' times",
        [(0, IN), (60_000, IN)],
        [(30_000, OUT)],
        [("exit", "A", 30_000, True), ("enter", "A", 60_000, True)],
        [],
        (0, 0, 0),
    ),
    (
        "a late fix moves an exit earlier: the exit published is retracted, the earlier one published",
        [(0, IN), (60_000, OUT)],
        [(30_000, OUT)],
        [("exit", "A", 30_000, True)],
        [("exit", "A", 60_000, False)],
        (0, 0, 0),
    ),
    (
        "a late enter before the first: the earlier enter published, the later retracted",
        [(0, OUT), (60_000, IN)],
        [(30_000, IN)],
        [("enter", "A", 30_000, True)],
        [("enter", "A", 60_000, False)],
        (0, 0, 0),
    ),
    (
        "a late fix that changes nothing in order: nothing published, nothing retracted",
        [(0, IN), (60_000, IN)],
        [(30_000, IN)],
        [],
        [],
        (0, 0, 0),
    ),
    (
        "a fix at the time of one held (another place): a duplicate, changes nothing",
        [(0, IN), (60_000, IN)],
        [(0, OUT), (60_000, OUT)],
        [],
        [],
        (0, 2, 0),
    ),
    (
        "older than the window (24 h before the newest fix): dropped and counted",
        [(0, IN), (25 * H, IN)],
        [(H - 1, OUT)],
        [],
        [],
        (1, 0, 0),
    ),
    (
        "just inside the window: merged",
        [(0, IN), (25 * H, IN)],
        [(H, OUT)],
        [("exit", "A", H, True), ("enter", "A", 25 * H, True)],
        [],
        (0, 0, 0),
    ),
    (
        "a fix newer than the newest is not late: handed back for the live path, nothing else",
        [(0, IN), (60_000, IN)],
        [(90_000, OUT)],
        [],
        [],
        (0, 0, 1),
    ),
]


@pytest.mark.parametrize("rule,live_fixes,late_fixes,published,retracted,counts", ROWS, ids=[r[0] for r in ROWS])
def test_the_merge_rule(rule, live_fixes, late_fixes, published, retracted, counts):
    states: dict[str, DeviceState] = {}
    track = Track()
    sent = live(PLAIN, [at(T + dt, p) for dt, p in live_fixes], states, track)
    before = states[DEV].to_obj()
    m = merge(DEV, states[DEV], track, [at(T + dt, p) for dt, p in late_fixes], PLAIN)
    retracts = [e for e in m.events if e.type == "retract"]
    by_id = {e.event_id: e for e in sent}
    assert [key(by_id[e.retracts]) for e in retracts] == [(t, f, dt, late) for t, f, dt, late in retracted]
    assert [key(e) for e in m.events if e.type != "retract"] == published
    assert (m.too_old, m.duplicates, len(m.newer)) == counts
    assert states[DEV].to_obj() == before  # the current state is not changed in place
    if not published and not retracted:
        assert m.state.to_obj() == before  # nothing merged: the state as it was
    # the state now: with the plain fence rules, the memberships of the newest fix
    assert set(m.state.members) == set(states[DEV].members)
    # merged again from the same saved state and track (a replay after a crash): the same events and ids
    again = merge(DEV, states[DEV], track, [at(T + dt, p) for dt, p in late_fixes], PLAIN)
    assert [(e.event_id, e.late, e.retracts) for e in again.events] == [
        (e.event_id, e.late, e.retracts) for e in m.events
    ]
    # and the same batch once more into the merged track: a duplicate each, no second retract
    once_more = merge(DEV, m.state, m.track, [at(T + dt, p) for dt, p in late_fixes], PLAIN)
    assert once_more.events == []


def test_a_retracted_event_brought_back_and_retracted_again_gets_a_new_retract_id():
    states: dict[str, DeviceState] = {}
    track = Track()
    sent = live(PLAIN, [at(T, IN), at(T + 60_000, OUT)], states, track)
    exit_60 = sent[-1]
    m1 = merge(DEV, states[DEV], track, [at(T + 30_000, OUT)], PLAIN)  # the exit moves to 30 s
    r1 = [e for e in m1.events if e.type == "retract"]
    assert [e.retracts for e in r1] == [exit_60.event_id]
    m2 = merge(DEV, m1.state, m1.track, [at(T + 45_000, IN)], PLAIN)  # back in at 45 s: the exit at 60 s again
    assert exit_60.event_id in [e.event_id for e in m2.events if e.late]
    m3 = merge(DEV, m2.state, m2.track, [at(T + 50_000, OUT)], PLAIN)  # out at 50 s: that exit withdrawn again
    r3 = [e for e in m3.events if e.type == "retract" and e.retracts == exit_60.event_id]
    assert len(r3) == 1 and r3[0].event_id != r1[0].event_id


def test_the_track_survives_its_bytes_after_a_merge():
    states: dict[str, DeviceState] = {}
    track = Track()
    live(PLAIN, [at(T + i * 60_000, IN if i % 3 else OUT) for i in range(0, 30, 2)], states, track, snap_every=4)
    m = merge(DEV, states[DEV], track, [at(T + i * 60_000, OUT) for i in range(1, 30, 4)], PLAIN, snap_every=4)
    assert m.replayed < 30 - 1  # from a snapshot, not from the start
    assert Track.from_bytes(m.track.to_bytes()) == m.track


# -- the property: any arrival order gives, after retractions, the in-order events and state -----------

P = fence("P", kind="pasture")
Q = fence("Q", lon=17.61, kind="pasture", exit_buffer_m=20)
Z = fence("Z", lon=17.602, lat=59.802, size=0.004, dwell_s=120)
E = fence("E", lon=17.605, lat=59.806, size=0.002, kind="exclusion")
HERD = FenceIndex([P, Q, Z, E])
PLACES = [
    (17.601, 59.801),  # P
    (17.603, 59.803),  # P and Z
    (17.6055, 59.8065),  # P and the exclusion zone E
    (17.615, 59.805),  # Q
    (17.6202, 59.805),  # just outside Q, within its exit buffer
    (17.59, 59.79),  # outside all, a jump from most
    (17.7, 59.9),  # far away: a jump
]
fix_st = st.tuples(
    st.integers(5_000, 60_000),  # seconds after the previous fix
    st.sampled_from(PLACES),
    st.sampled_from([None, 5.0, 40.0]),  # accuracy_m (40: worse than the farm's limit)
    st.sampled_from([None, None, 10.0, 22.0, 30.0]),  # battery
)


def reference(fixes: list[Fix], rules: HerdRules, mob: Mob) -> tuple[list[Event], DeviceState | None]:
    state = None
    events: list[Event] = []
    for f in fixes:
        inside = [r.id for r in HERD.containing("farm", f.lon, f.lat)]
        near = list(HERD.lookup([f.lon], [f.lat], "farm", near=True)[0])
        out = detect(state, f, "farm", inside, near, HERD.farm("farm").by_id, rules, mob, HERD.farm("farm").distance_m)
        state = out.state
        events.extend(out.events)
    return events, state


@settings(max_examples=300, deadline=None)
@given(
    st.lists(fix_st, min_size=1, max_size=40),
    st.randoms(use_true_random=False),
    st.integers(1, 8),
    st.sampled_from([1, 2, 3]),
    st.integers(1, 6),
    st.sets(st.integers(0, 40)),
)
def test_any_arrival_order_gives_the_in_order_events_and_state(steps, rnd, batch, confirm, snap_every, sweeps):
    """The herd rules all take part (confirmation, jumps, accuracy, battery) but silence, which is judged on
    the worker's clock, not on the fixes' times: no order of fixes says when a collar was silent. The sweep
    (``sweeps``: before which batches it finds the collar silent) and the next live fix's ``resumed`` are the
    live path's alone: a merge neither gives nor withdraws them, keeps ``silent`` and ``seen_ms`` as they are,
    and the rest is as in order."""
    fixes, ts = [], T
    for dt, (lon, lat), accuracy, battery in steps:
        ts += dt
        extra = {k: v for k, v in (("accuracy_m", accuracy), ("battery", battery)) if v is not None}
        fixes.append(Fix(DEV, ts, lon, lat, extra or None))
    rules = HerdRules(confirm_fixes=confirm)
    mob = HERD.mob("farm")
    arrival = list(fixes)
    rnd.shuffle(arrival)
    states: dict[str, DeviceState] = {}
    track = Track()
    published: dict[str, Event] = {}
    for i in range(0, len(arrival), batch):
        if i // batch in sweeps and DEV in states and not states[DEV].silent:
            states[DEV].silent = True  # the sweep: no fix for the farm's silence time (the silent event aside)
        newest = states[DEV].last_ts if DEV in states else -1
        fresh, late = [], []
        for f in arrival[i : i + batch]:  # the worker: newer fixes through the pipeline, the older merged
            if f.ts_ms > newest:
                fresh.append(f)
                newest = f.ts_ms
            else:
                late.append(f)
        sent = live(HERD, fresh, states, track, rules=rules, mob=mob, snap_every=snap_every) if fresh else []
        if late:
            m = merge(DEV, states[DEV], track, late, HERD, rules, mob, snap_every=snap_every)
            assert m.too_old == m.duplicates == 0 and not m.newer
            assert m.state.silent == states[DEV].silent and "resumed" not in {e.type for e in m.events}
            sent += m.events
            states[DEV], track = m.state, m.track
            assert Track.from_bytes(track.to_bytes()) == track
        for e in sent:
            if e.type == "resumed":
                continue  # the live path's, of the worker's clock
            if e.type == "retract":
                assert e.retracts in published  # never a retract of what is not (or no longer) published
                del published[e.retracts]
            else:
                assert e.event_id not in published
                published[e.event_id] = e
    expected, state = reference(sorted(fixes, key=lambda f: f.ts_ms), rules, mob)
    got = sorted(published.values(), key=lambda e: (e.ts_ms, e.event_id))
    assert [(e.event_id, key(e)[:3]) for e in got] == sorted(
        ((e.event_id, key(e)[:3]) for e in expected), key=lambda p: (p[1][2], p[0])
    )
    assert state is not None
    clockless = {k: v for k, v in states[DEV].to_obj().items() if k not in ("sil", "seen")}
    assert clockless == state.to_obj()


def test_a_late_fix_beyond_the_exit_buffer_ends_a_membership_now():
    """The issue's "membership now changes only with the newest fix" holds for the plain fence rules; the
    exit buffer reads history: a late fix beyond it ends a membership the near fixes after it do not renew.
    The state follows in-order arrival (as the property holds), and the late exit says so."""
    c = fence("C", exit_buffer_m=20)
    index = FenceIndex([c])
    near = (17.6102, 59.805)  # about 11 m east of C: within its exit buffer
    states: dict[str, DeviceState] = {}
    track = Track()
    live(index, [at(T, IN), at(T + 60_000, near)], states, track)
    assert set(states[DEV].members) == {"C"}
    m = merge(DEV, states[DEV], track, [at(T + 30_000, OUT)], index)
    assert [key(e) for e in m.events] == [("exit", "C", 30_000, True)]
    assert m.state.members == {}

"""The batch pipeline (with its fast path) must give exactly what the detector gives fix by fix."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fencex.detector import DeviceState, detect
from fencex.fix import Fix
from fencex.index import FenceIndex
from fencex.pipeline import process, reevaluate_all
from tests.unit.factory import fence

FENCES = [
    fence("A", lon=0.0, lat=0.0, size=1.0, dwell_s=5),
    fence("B", lon=0.5, lat=0.5, size=1.0),
    fence("C", lon=2.0, lat=0.0, size=1.0, exit_buffer_m=5000),
    fence("D", lon=0.0, lat=0.0, size=3.0, tenant="other"),
]
INDEX = FenceIndex(FENCES)


def reference(fixes: list[Fix], tenant_of) -> tuple[list[tuple], tuple[int, int, int]]:
    """Fix by fix through the detector alone: the events, and (applied, stale, inside) counts."""
    states: dict[str, DeviceState] = {}
    events = []
    applied = stale = inside_count = 0
    for f in fixes:
        t = tenant_of(f.device_id)
        inside = [x.id for x in INDEX.containing(t, f.lon, f.lat)]
        near = [INDEX.fences[r].id for r in INDEX.lookup([f.lon], [f.lat], t, near=True)[0]]
        out = detect(states.get(f.device_id), f, t, inside, near, INDEX.by_id)
        if out.stale:
            stale += 1
        else:
            states[f.device_id] = out.state
            applied += 1
            inside_count += bool(inside)
        events.extend(out.events)
    return [(e.type, e.device_id, e.fence_id, e.ts_ms) for e in events], (applied, stale, inside_count)


fix_st = st.builds(
    lambda d, ts, x, y: Fix(d, ts, x, y),
    st.sampled_from(["a", "b", "c"]),
    st.integers(0, 30_000),
    st.floats(-0.5, 3.5),
    st.floats(-0.5, 1.6),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(fix_st, max_size=60), st.integers(1, 7))
def test_batches_match_fix_by_fix_detection(fixes, batch):
    tenant_of = {"a": "farm", "b": "farm", "c": "other"}.get
    states: dict[str, DeviceState] = {}
    got = []
    counts = [0, 0, 0]
    for i in range(0, len(fixes), batch):
        out = process(fixes[i : i + batch], INDEX, states, tenant_of)
        got.extend((e.type, e.device_id, e.fence_id, e.ts_ms) for e in out.events)
        counts = [counts[0] + out.fixes, counts[1] + out.stale, counts[2] + out.inside]
    events, expected_counts = reference(fixes, tenant_of)
    assert got == events
    assert tuple(counts) == expected_counts  # the metrics count what the detector did, once each


def test_fast_path_still_fires_dwell():
    states: dict[str, DeviceState] = {}
    tenant = lambda d: "farm"  # noqa: E731
    seq = [Fix("a", 0, 0.1, 0.1), Fix("a", 3000, 0.2, 0.1), Fix("a", 5000, 0.2, 0.2), Fix("a", 9000, 0.2, 0.2)]
    types = [[(e.type, e.fence_id) for e in process([f], INDEX, states, tenant).events] for f in seq]
    assert types == [[("enter", "A")], [], [("dwell", "A")], []]


def test_stale_and_counts():
    states: dict[str, DeviceState] = {}
    out = process(
        [Fix("a", 10, 0.1, 0.1), Fix("a", 5, 0.1, 0.1), Fix("a", 20, 9.0, 9.0)], INDEX, states, lambda d: "farm"
    )
    assert (out.fixes, out.stale, out.inside) == (2, 1, 1)
    assert set(out.dirty) == {"a"}


def test_a_fix_entering_a_second_fence_counts_one_intersection():
    # Regression: a known device's fix that took the slow path was counted inside twice.
    states: dict[str, DeviceState] = {}
    farm = lambda d: "farm"  # noqa: E731
    process([Fix("a", 10, 0.1, 0.1)], INDEX, states, farm)  # inside A only
    out = process([Fix("a", 20, 0.7, 0.7)], INDEX, states, farm)  # inside A and B: enter B
    assert [(e.type, e.fence_id) for e in out.events] == [("enter", "B")]
    assert (out.fixes, out.inside) == (1, 1)


def test_reevaluate_all_after_index_change():
    states: dict[str, DeviceState] = {}
    process([Fix("a", 10, 0.1, 0.1)], INDEX, states, lambda d: "farm")
    smaller = FenceIndex([f for f in FENCES if f.id != "A"])
    out = reevaluate_all(smaller, states)
    assert [(e.type, e.fence_id, e.ts_ms) for e in out.events] == [("exit", "A", 10)]
    assert reevaluate_all(smaller, states).events == []  # applied once

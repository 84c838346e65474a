"""The batch pipeline (with its fast path) must give exactly what the detector gives fix by fix."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fencex.detector import DeviceState, detect, reevaluate
from fencex.fix import Fix
from fencex.herd import HerdRules, Mob
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
        near = list(INDEX.lookup([f.lon], [f.lat], t, near=True)[0])
        out = detect(states.get(f.device_id), f, t, inside, near, INDEX.farm(t).by_id)
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


# ---------------------------------------------------------------- with the herd rules

HERD_FENCES = [
    fence("A", lon=0.0, lat=0.0, size=1.0, dwell_s=5),
    fence("B", lon=0.5, lat=0.5, size=1.0),
    fence("C", lon=2.0, lat=0.0, size=1.0, exit_buffer_m=5000),
    fence("E", lon=0.8, lat=0.2, size=0.4, kind="exclusion"),
    fence("Z", lon=1.2, lat=0.9, size=0.6, kind="zone"),
    fence("D", lon=0.0, lat=0.0, size=3.0, tenant="other"),
    fence("F", lon=1.0, lat=1.0, size=0.5, tenant="other", kind="exclusion"),
]
HERD_INDEX = FenceIndex(HERD_FENCES)
SMALLER = FenceIndex([f for f in HERD_FENCES if f.id not in ("A", "D")])  # two pastures deleted
RULES = {
    "farm": HerdRules(confirm_fixes=2, max_speed_mps=60_000),
    "other": HerdRules(confirm_fixes=1, max_speed_mps=5_000),
}
MOBS = {"b": Mob(frozenset({"B"}), frozenset({"E"})), "d": Mob(frozenset(), frozenset())}  # the rest: the farm's
TENANT = {"a": "farm", "b": "farm", "c": "other", "d": "farm"}.get
# inside A (twice, close), in the exclusion zone E, in B and the zone Z, in C, in C's buffer, outside all, in B
POINTS = [(0.2, 0.2), (0.21, 0.2), (0.9, 0.3), (1.3, 1.0), (2.5, 0.5), (3.04, 0.5), (3.2, 1.4), (1.1, 1.1)]


def _key(e) -> tuple:
    return (e.type, e.device_id, e.fence_id, e.ts_ms, e.lon, e.distance_m, e.battery)


def _lookup(index: FenceIndex, tenant: str, lon: float, lat: float) -> tuple[list[str], list[str]]:
    inside = [x.id for x in index.containing(tenant, lon, lat)]
    near = list(index.lookup([lon], [lat], tenant, near=True)[0])
    return inside, near


def silent_states(devices: set[str]) -> dict[str, DeviceState]:
    """Devices a sweep marked silent before these fixes (never placed in a fence)."""
    return {d: DeviceState(TENANT(d), -1, 0.0, 0.0, seen_ms=5, silent=True) for d in sorted(devices)}


def arrival(k: int, batch: int) -> int:
    """The worker's clock when fix ``k`` arrived: one time per batch."""
    return 1_000_000 + k // batch


def herd_reference(
    fixes: list[Fix], batch: int = 1, silent: set[str] = frozenset()
) -> tuple[list[tuple], tuple, dict[str, DeviceState]]:
    states: dict[str, DeviceState] = silent_states(set(silent))
    events = []
    applied = stale = inside_count = 0
    untrusted: dict[str, int] = {}
    for k, f in enumerate(fixes):
        t = TENANT(f.device_id)
        inside, near = _lookup(HERD_INDEX, t, f.lon, f.lat)
        mob = MOBS.get(f.device_id) or HERD_INDEX.mob(t)
        now = arrival(k, batch)
        out = detect(
            states.get(f.device_id),
            f,
            t,
            inside,
            near,
            HERD_INDEX.farm(t).by_id,
            RULES[t],
            mob,
            HERD_INDEX.farm(t).distance_m,
            now,
        )
        if out.stale:
            stale += 1
        else:
            states[f.device_id] = out.state
            applied += 1
            inside_count += bool(inside)
            if out.untrusted:
                untrusted[out.untrusted] = untrusted.get(out.untrusted, 0) + 1
        events.extend(_key(e) for e in out.events)
    return events, (applied, stale, inside_count, untrusted), states


extra_st = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {}, optional={"accuracy_m": st.floats(0.0, 60.0), "battery": st.floats(0.0, 40.0), "speed_mps": st.just(1.0)}
    ),
)
place_st = st.one_of(
    st.sampled_from(POINTS), st.sampled_from(POINTS), st.tuples(st.floats(-0.5, 3.5), st.floats(-0.5, 1.6))
)
herd_fix_st = st.builds(
    lambda d, ts, p, extra: Fix(d, ts, p[0], p[1], extra or None),
    st.sampled_from(["a", "b", "c", "d"]),
    st.integers(0, 120_000),
    place_st,
    extra_st,
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(herd_fix_st, max_size=60), st.integers(1, 7), st.booleans(), st.sets(st.sampled_from(["a", "b", "c", "d"]))
)
def test_batches_match_fix_by_fix_detection_with_the_herd_rules(fixes, batch, in_order, silent):
    if in_order:  # mostly in time order, as collars send: escapes and returns get confirmed
        fixes = sorted(fixes, key=lambda f: f.ts_ms)
    states: dict[str, DeviceState] = silent_states(silent)  # silent collars: resumed with their next fix
    got = []
    counts = [0, 0, 0]
    untrusted: dict[str, int] = {}
    for i in range(0, len(fixes), batch):
        now = arrival(i, batch)
        out = process(fixes[i : i + batch], HERD_INDEX, states, TENANT, RULES.__getitem__, MOBS.get, now)
        got.extend(_key(e) for e in out.events)
        counts = [counts[0] + out.fixes, counts[1] + out.stale, counts[2] + out.inside]
        for reason, n in out.untrusted.items():
            untrusted[reason] = untrusted.get(reason, 0) + n
    events, (applied, stale, inside, expected_untrusted), ref_states = herd_reference(fixes, batch, silent)
    assert got == events
    assert (counts[0], counts[1], counts[2], untrusted) == (applied, stale, inside, expected_untrusted)
    assert {d: s.to_obj() for d, s in states.items()} == {d: s.to_obj() for d, s in ref_states.items()}  # seen, sil
    assert [e[0] for e in got].count("resumed") == len({f.device_id for f in fixes} & silent)
    # then pastures are deleted: the batch re-evaluation equals the detector device by device
    expected = []
    for d in sorted(ref_states):
        s = ref_states[d]
        if s.accepted[0] < 0:
            continue
        inside_ids, near_ids = _lookup(SMALLER, s.tenant, s.accepted[1], s.accepted[2])
        mob = MOBS.get(d) or SMALLER.mob(s.tenant)
        expected.extend(
            _key(e)
            for e in reevaluate(
                s, d, inside_ids, near_ids, SMALLER.farm(s.tenant).by_id, mob, SMALLER.farm(s.tenant).distance_m
            ).events
        )
    again = reevaluate_all(SMALLER, states, sorted(states), MOBS.get, herd=True)
    assert [_key(e) for e in again.events] == expected
    assert reevaluate_all(SMALLER, states, sorted(states), MOBS.get, herd=True).events == []  # applied once


def test_herd_events_through_the_pipeline_in_the_farms_words():
    states: dict[str, DeviceState] = {}
    farm = lambda d: "farm"  # noqa: E731
    rules = lambda t: HerdRules(max_speed_mps=1e6)  # noqa: E731
    seq = [Fix("a", 0, 0.5, 0.1), Fix("a", 1000, 0.5, -0.1), Fix("a", 2000, 0.5, -0.2, {"battery": 12.0})]
    got = [[_key(e)[:3] + _key(e)[5:] for e in process([f], HERD_INDEX, states, farm, rules).events] for f in seq]
    assert got[0] == [("enter", "a", "A", None, None)]
    assert got[1] == [("exit", "a", "A", None, None)]  # one fix out: no alarm yet
    assert got[2] == [("escape", "a", "A", 22114.8, None), ("battery_low", "a", "", None, 12.0)]  # 0.2 degrees south
    out = process([Fix("a", 3000, 0.5, -0.2, {"accuracy_m": 90.0}), Fix("a", 4000, 0.9, 0.1)], HERD_INDEX, states, farm)
    assert out.untrusted == {}  # without rules_of: the fence rules alone, as before

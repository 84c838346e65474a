"""The fence index sharded by farm (issue 15, item 2): a change builds its farm's shard only."""

from __future__ import annotations

from unittest import mock

import numpy as np
import orjson
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

import fencex.index as index_module
import fencex.indexlaid as laid_module
import fencex.indexshard as shard_module
from fencex.fence import Fence
from fencex.herd import NO_MOB
from fencex.index import FenceIndex
from fencex.indexshard import grow
from tests.unit.factory import LAT0, LON0, fence, square

FARMS = ["a", "b", "c", "d"]
IN_A = (LON0 + 0.005, LAT0 + 0.005)


def brute(fences: list[Fence], x: float, y: float, tenant: str, near: bool = False) -> tuple[str, ...]:
    """The ids of ``tenant``'s fences (or outer geometries) containing the point, by shapely alone."""
    found = []
    for f in fences:
        if f.tenant != tenant or (near and not f.exit_buffer_m):
            continue
        geom = grow(f.shape(), f.exit_buffer_m) if near else f.shape()
        if shapely.intersects(geom, shapely.Point(x, y)):
            found.append(f.id)
    return tuple(sorted(found))


def made(spec: list[tuple[int, float, float, float, bool]], prefix: str, version: int = 1) -> list[Fence]:
    return [
        Fence(
            id=f"{prefix}{i}",
            tenant=FARMS[farm],
            version=version,
            geometry=square(x, y, s),
            exit_buffer_m=500.0 if buffered else None,
        )
        for i, (farm, x, y, s, buffered) in enumerate(spec)
    ]


FENCE = st.tuples(
    st.integers(0, len(FARMS) - 1), st.floats(0, 0.2), st.floats(0, 0.2), st.floats(0.001, 0.05), st.booleans()
)
POINT = st.tuples(st.floats(-0.01, 0.25), st.floats(-0.01, 0.25), st.integers(0, len(FARMS)))  # the last: no farm's


@settings(max_examples=60, deadline=None)
@given(
    st.lists(FENCE, min_size=1, max_size=30),
    st.lists(st.tuples(st.integers(0, len(FARMS) - 1), st.lists(FENCE, max_size=8)), max_size=5),
    st.lists(POINT, min_size=1, max_size=50),
    st.sampled_from([2, 128]),
    st.sampled_from([1, 256]),
    st.sampled_from([1, 64]),
)
def test_lookups_after_changes_equal_a_brute_force_check(start, changes, points, small, relay_after, max_cells):
    """Built whole, then farm by farm (each change replacing one farm's fences): every kind of lookup
    answers what shapely says point by point. ``small``: farms above it use their own grid;
    ``relay_after``: the base is laid again after every change, or the changed farms answer from shards;
    ``max_cells``: the laid farms' fences over more cells of their grid than this are kept aside."""
    with (
        mock.patch.object(shard_module, "SMALL", small),
        mock.patch.object(index_module, "RELAY_AFTER", relay_after),
        mock.patch.object(laid_module, "MAX_CELLS", max_cells),
    ):
        fences = made(start, "s")
        index = FenceIndex(fences)
        for k, (farm, spec) in enumerate(changes):
            new = [f for f in made(spec, f"c{k}-") if f.tenant == FARMS[farm]]
            fences = [f for f in fences if f.tenant != FARMS[farm]] + new
            index = index.with_farms({FARMS[farm]: new}, k + 1)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        tenants = [FARMS[t] if t < len(FARMS) else "nobody" for _, _, t in points]
        assert index.lookup(xs, ys, tenants) == [brute(fences, x, y, t) for x, y, t in zip(xs, ys, tenants)]
        near = [brute(fences, x, y, t, near=True) for x, y, t in zip(xs, ys, tenants)]
        assert index.lookup(xs, ys, tenants, near=True) == near
        assert index.has_buffers() == any(f.exit_buffer_m for f in fences)
        for t in {*tenants}:
            assert index.lookup(xs, ys, t) == [brute(fences, x, y, t) for x, y in zip(xs, ys)]
            pt, ids = index.pairs(np.asarray(xs), np.asarray(ys), t)
            assert list(zip(pt.tolist(), ids.tolist())) == [
                (i, fid) for i, (x, y) in enumerate(zip(xs, ys)) for fid in brute(fences, x, y, t)
            ]
        for x, y, t in zip(xs, ys, tenants):
            assert tuple(f.id for f in index.containing(t, x, y)) == brute(fences, x, y, t)
        assert len(index) == len(fences)
        assert sorted(f.id for f in index.fences) == sorted(f.id for f in fences)


def test_a_change_to_one_farm_leaves_every_other_farms_shard_the_same_object():
    old = FenceIndex([fence("a1", tenant="a"), fence("b1", tenant="b"), fence("c1", tenant="c")])
    new = old.with_farms({"a": [fence("a1", tenant="a", version=2, lon=LON0 + 0.1)]}, 1)
    assert new is not old and new.changed == frozenset({"a"}) and old.changed is None
    assert new.farm("b") is old.farm("b") and new.farm("c") is old.farm("c")
    assert new.farm("a") is not old.farm("a")
    # the old snapshot still answers as it did: readers holding it see no change
    assert old.lookup(*[[v] for v in IN_A], "a") == [("a1",)] and new.lookup(*[[v] for v in IN_A], "a") == [()]
    assert new.lookup([LON0 + 0.105], [LAT0 + 0.005], ["a"]) == [("a1",)]
    assert new.version == 1 and old.version == 0


def test_unchanged_geometries_of_a_changed_farm_are_reused():
    old = FenceIndex([fence("a1", tenant="a"), fence("a2", tenant="a", lon=LON0 + 0.1)])
    new = old.with_farms({"a": [fence("a1", tenant="a"), fence("a2", tenant="a", lon=LON0 + 0.2, version=2)]}, 1)
    assert new.farm("a").geometry("a1") is old.farm("a").geometry("a1")
    assert new.farm("a").geometry("a2") is not old.farm("a").geometry("a2")


def test_a_farm_deleted_entirely_disappears():
    scheduled = {"windows": [{"kind": "absolute", "from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"}]}
    old = FenceIndex([fence("a1", tenant="a", schedule=scheduled), fence("b1", tenant="b", exit_buffer_m=50)])
    assert set(old.farms) == {"a", "b"} and set(old.schedules) == {"a"} and old.has_buffers()
    new = old.with_farms({"a": [], "b": []}, 1)
    assert dict(new.farms) == {} and len(new) == 0 and new.schedules == {} and not new.has_buffers()
    assert new.lookup(*[[v] for v in IN_A], ["a"]) == [()] and new.containing("a", *IN_A) == []
    assert new.mob("a") is NO_MOB and new.farm("a").by_id == {}
    assert set(old.farms) == {"a", "b"}  # the old snapshot is untouched


def test_quarantined_fences_stay_with_their_farm():
    broken = Fence.from_json(
        orjson.dumps({"id": "bad", "tenant": "a", "geometry": {"type": "Point", "coordinates": [0, 0]}})
    )
    old = FenceIndex([fence("a1", tenant="a"), broken, fence("b1", tenant="b")])
    assert set(old.quarantined) == {"bad"} and set(old.quarantined_of("a")) == {"bad"} and old.quarantined_of("b") == {}
    other = old.with_farms({"b": [fence("b1", tenant="b", version=2)]}, 1)  # another farm changes: still there
    assert set(other.quarantined) == {"bad"} and other.farm("a") is old.farm("a")
    worse = other.with_farms({"b": [broken.model_copy(update={"id": "bad-b", "tenant": "b"})]}, 2)
    assert set(worse.quarantined) == {"bad", "bad-b"} and set(worse.quarantined_of("b")) == {"bad-b"}
    assert "b" in worse.farms and len(worse.farm("b")) == 0  # a farm of quarantined fences only: kept, for them
    fixed = worse.with_farms({"a": [fence("a1", tenant="a"), fence("bad", tenant="a", version=2)]}, 3)
    assert set(fixed.quarantined) == {"bad-b"} and fixed.quarantined_of("a") == {}
    assert fixed.lookup(*[[v] for v in IN_A], "a") == [("a1", "bad")]


def test_geometries_are_prepared_when_a_lookup_first_tests_them():
    index = FenceIndex([fence("a1", tenant="a"), fence("a2", tenant="a", lon=LON0 + 0.1), fence("b1", tenant="b")])
    geoms = {fid: index.farm(fid[0]).geometry(fid) for fid in ("a1", "a2", "b1")}
    assert not any(shapely.is_prepared(g) for g in geoms.values())  # the build prepares nothing
    assert index.lookup(*[[v] for v in IN_A], ["a"]) == [("a1",)]
    assert shapely.is_prepared(geoms["a1"])
    assert not shapely.is_prepared(geoms["a2"]) and not shapely.is_prepared(geoms["b1"])  # their boxes said no
    assert index.containing("b", *IN_A)[0].id == "b1" and shapely.is_prepared(geoms["b1"])


def test_a_change_costs_its_farm_not_the_country():
    """Issue 15 #2: a change to one farm of 2,000 builds that farm's fences, not the others' (it was a
    rebuild of all: 0.48 s at 100,000 fences)."""
    fences = [
        Fence.model_construct(
            id=f"f{i:05d}",
            tenant=f"farm-{i // 10:04d}",
            version=1,
            geometry=square(LON0 + (i % 100) * 0.02, LAT0 + (i // 100) * 0.02),
            name="",
            tags=[],
            dwell_s=None,
            exit_buffer_m=None,
            kind="pasture",
            schedule=None,
            updated_at=0.0,
        )
        for i in range(20_000)
    ]
    index = FenceIndex(fences)
    calls = []
    real = shard_module.shape

    def counted(f):
        calls.append(f.id)
        return real(f)

    farm = [f.model_copy(update={"version": 2}) if f.id == "f00005" else f for f in index.farm("farm-0000").fences]
    with mock.patch.object(shard_module, "shape", counted):
        new = index.with_farms({"farm-0000": farm}, 1)
    assert calls == ["f00005"]  # one geometry converted; the farm's other nine reused
    assert sum(new.farm(t) is not index.farm(t) for t in index.farms) == 1


def test_the_base_is_laid_again_after_many_changed_farms(monkeypatch):
    monkeypatch.setattr(index_module, "RELAY_AFTER", 2)
    index = FenceIndex([fence(f"{t}1", tenant=t, lon=LON0 + i * 0.1) for i, t in enumerate(FARMS)])
    base = index._base
    for k, t in enumerate(FARMS[:2]):
        index = index.with_farms({t: [fence(f"{t}1", tenant=t, version=2, lon=LON0 + k * 0.1)]}, k + 1)
        assert index._base is base and index._shadow.sum() == k + 1  # answered from their shards meanwhile
    index = index.with_farms({"c": [fence("c1", tenant="c", version=2, lon=LON0 + 0.2)]}, 3)
    assert index._base is not base and not index._shadow.any()
    xs = [LON0 + i * 0.1 + 0.005 for i in range(4)]
    assert index.lookup(xs, [LAT0 + 0.005] * 4, FARMS) == [("a1",), ("b1",), ("c1",), ("d1",)]


def test_a_base_mostly_of_farms_laid_again_is_laid_anew(monkeypatch):
    monkeypatch.setattr(index_module, "RELAY_AFTER", 0)  # every change lays the changed farm again
    index = FenceIndex([fence(f"{t}1", tenant=t, lon=LON0 + i * 0.1) for i, t in enumerate(FARMS)])
    for k in range(100):
        index = index.with_farms({"a": [fence("a1", tenant="a", version=k + 2, lon=LON0 + (k % 2) * 0.05)]}, k + 1)
        assert index._base.places <= 2 * len(FARMS) + 65  # laid anew when over half are dead
        xs = [LON0 + (k % 2) * 0.05 + 0.005] + [LON0 + i * 0.1 + 0.005 for i in range(1, 4)]
        assert index.lookup(xs, [LAT0 + 0.005] * 4, FARMS) == [("a1",), ("b1",), ("c1",), ("d1",)]


def test_a_plain_ring_is_read_as_shapely_reads_it():
    for f in [fence("a"), fence("b", size=0.3), *[fence(f"r{i}", lon=i * 10.0) for i in range(5)]]:
        assert shapely.equals_exact(shard_module.shape(f), f.shape(), 0)
    holed = Fence(
        id="h",
        tenant="farm",
        geometry={
            "type": "Polygon",
            "coordinates": [square(0, 0, 1)["coordinates"][0], square(0.4, 0.4, 0.2)["coordinates"][0]],
        },
    )
    assert shapely.equals_exact(shard_module.shape(holed), holed.shape(), 0)

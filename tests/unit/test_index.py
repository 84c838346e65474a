from __future__ import annotations

import math

import numpy as np
import orjson
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from fencex.fence import Fence
from fencex.index import FenceIndex
from tests.unit.factory import LAT0, LON0, fence, square


def ids(index, found):
    return sorted(found)


def test_longitude_first():
    """GeoJSON is [lon, lat]: a point given as (lat, lon) must not match."""
    index = FenceIndex([fence("north")])
    assert ids(index, index.lookup([LON0 + 0.005], [LAT0 + 0.005], "farm")[0]) == ["north"]
    assert index.lookup([LAT0 + 0.005], [LON0 + 0.005], "farm")[0] == ()


def test_boundary_and_vertex_are_inside():
    index = FenceIndex([fence("north")])
    got = index.lookup([LON0, LON0 + 0.005, LON0 + 0.01, LON0 + 0.0100001], [LAT0, LAT0, LAT0 + 0.01, LAT0], "farm")
    assert [ids(index, r) for r in got] == [["north"], ["north"], ["north"], []]


def test_hole_is_outside():
    outer = [[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]
    hole = [[0.4, 0.4], [0.6, 0.4], [0.6, 0.6], [0.4, 0.6], [0.4, 0.4]]
    index = FenceIndex([Fence(id="ring", tenant="farm", geometry={"type": "Polygon", "coordinates": [outer, hole]})])
    got = index.lookup([0.5, 0.2, 0.4], [0.5, 0.2, 0.5], "farm")
    assert [ids(index, r) for r in got] == [[], ["ring"], ["ring"]]  # the hole's edge is the fence's boundary


def test_tenants_only_see_their_own_fences():
    index = FenceIndex([fence("mine", tenant="a"), fence("theirs", tenant="b")])
    p = ([LON0 + 0.005], [LAT0 + 0.005])
    assert ids(index, index.lookup(*p, ["a"])[0]) == ["mine"]
    assert ids(index, index.lookup(*p, ["b"])[0]) == ["theirs"]
    assert index.lookup(*p, ["nobody"])[0] == ()


def test_exit_buffer_outer_geometry():
    index = FenceIndex([fence("c", exit_buffer_m=50)])
    # 0.0005 deg of longitude at lat 59.8 is about 28 m; 0.0012 deg is about 67 m.
    near = index.lookup([LON0 - 0.0005, LON0 - 0.0012], [LAT0 + 0.005] * 2, "farm", near=True)
    assert [ids(index, r) for r in near] == [["c"], []]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 0.2), st.floats(0, 0.2), st.floats(0.001, 0.05)), min_size=1, max_size=40),
    st.lists(st.tuples(st.floats(-0.01, 0.25), st.floats(-0.01, 0.25)), min_size=1, max_size=60),
)
def test_lookup_matches_brute_force(boxes, points):
    fences = [Fence(id=f"f{i}", tenant="farm", geometry=square(x, y, s)) for i, (x, y, s) in enumerate(boxes)]
    index = FenceIndex(fences)
    got = index.lookup([p[0] for p in points], [p[1] for p in points], "farm")
    for (x, y), rows in zip(points, got):
        expected = sorted(f.id for f in fences if shapely.intersects(f.shape(), shapely.Point(x, y)))
        assert ids(index, rows) == expected


def test_many_fences_stay_correct():
    rng = np.random.default_rng(7)
    xs, ys = rng.uniform(-10, 10, 100_000), rng.uniform(40, 60, 100_000)
    fences = [
        Fence.model_construct(
            id=f"f{i}",
            tenant="farm",
            version=1,
            geometry=square(x, y, 0.01),
            name="",
            tags=[],
            dwell_s=None,
            exit_buffer_m=None,
            updated_at=0.0,
        )
        for i, (x, y) in enumerate(zip(xs, ys))
    ]
    index = FenceIndex(fences)
    assert len(index) == 100_000
    # Points at the centre of fences 0..999 are inside those fences (and maybe a neighbour).
    got = index.lookup(xs[:1000] + 0.005, ys[:1000] + 0.005, "farm")
    for i, rows in enumerate(got):
        assert f"f{i}" in ids(index, rows)
    assert index.lookup([100.0], [0.0], "farm")[0] == ()


def test_large_and_small_fences_mixed():
    """A farm-sized fence beside many small ones goes to the R-tree path; both answer."""
    small = [fence(f"s{i}", lon=17.60 + i * 0.02, lat=59.80, size=0.01) for i in range(30)]
    big = Fence(id="whole-farm", tenant="farm", geometry=square(17.0, 59.0, 2.0))
    index = FenceIndex([*small, big])
    got = index.lookup([17.605, 17.625, 18.5, 16.0], [59.805, 59.805, 60.5, 59.5], "farm")
    assert [ids(index, r) for r in got] == [["s0", "whole-farm"], ["s1", "whole-farm"], ["whole-farm"], []]


def test_fences_across_the_antimeridian_side_and_negative_coordinates():
    west = Fence(id="w", tenant="farm", geometry=square(-179.99, -45.0, 0.01))
    east = Fence(id="e", tenant="farm", geometry=square(179.98, -45.0, 0.01))
    index = FenceIndex([west, east])
    got = index.lookup([-179.985, 179.985, 0.0], [-44.995, -44.995, 0.0], "farm")
    assert [ids(index, r) for r in got] == [["w"], ["e"], []]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 0.2), st.floats(0, 0.2), st.floats(0.001, 0.3)), min_size=1, max_size=40),
    st.lists(st.tuples(st.floats(-0.01, 0.25), st.floats(-0.01, 0.25)), min_size=1, max_size=30),
)
def test_scalar_lookup_matches_batch_lookup(boxes, points):
    fences = [Fence(id=f"f{i}", tenant="farm", geometry=square(x, y, s)) for i, (x, y, s) in enumerate(boxes)]
    index = FenceIndex(fences)
    batch = index.lookup([p[0] for p in points], [p[1] for p in points], "farm")
    for (x, y), rows in zip(points, batch):
        assert sorted(f.id for f in index.containing("farm", x, y)) == ids(index, rows)
    assert index.containing("nobody", points[0][0], points[0][1]) == []


def test_rebuild_reuses_unchanged_geometries_and_takes_changes():
    old = FenceIndex([fence("a"), fence("b", lon=LON0 + 0.1)])
    moved = fence("b", lon=LON0 + 0.2, version=2)
    new = FenceIndex([fence("a"), moved], previous=old)
    assert new.farm("farm").geometry("a") is old.farm("farm").geometry("a")  # reused, not converted again
    assert ids(new, new.lookup([LON0 + 0.205], [LAT0 + 0.005], "farm")[0]) == ["b"]
    assert new.lookup([LON0 + 0.105], [LAT0 + 0.005], "farm")[0] == ()


def stored(fid: str, coordinates, kind: str = "Polygon", tenant: str = "farm", **extra) -> Fence:
    """A fence as an older fencex could have stored it: read back without the geometry check."""
    record = {"id": fid, "tenant": tenant, "geometry": {"type": kind, "coordinates": coordinates}, **extra}
    return Fence.from_json(orjson.dumps(record))


RING = [[LON0, LAT0], [LON0 + 0.01, LAT0], [LON0 + 0.01, LAT0 + 0.01], [LON0, LAT0 + 0.01], [LON0, LAT0]]
UNBUILDABLE = [
    stored("mixed-3d", [[RING[0], [*RING[1], 5.0], *RING[2:]]]),  # issue 9 #1: [lon, lat] beside [lon, lat, alt]
    stored("text-alt", [[RING[0], [*RING[1], "x"], *RING[2:]]]),
    stored("null-alt", [[RING[0], [*RING[1], None], *RING[2:]]]),
    stored("bool-alt", [[RING[0], [*RING[1], True], *RING[2:]]]),
    stored("no-rings", []),
    stored("a-point", [LON0, LAT0], kind="Point"),
    stored("unknown", [[RING]], kind="Blob"),
    stored("buffered-bad", [[RING[0], [*RING[1], "x"], *RING[2:]]], exit_buffer_m=10),
    Fence.model_construct(  # a non-finite coordinate (JSON cannot carry one, a Python caller can)
        id="nan", tenant="other", version=3, geometry={"type": "Polygon", "coordinates": [[[float("nan"), 0], *RING]]}
    ),
]


def test_unbuildable_fences_are_quarantined_and_the_others_work(caplog):
    """Issue 9 #1: one fence that does not build never stops the index for the other fences and farms."""
    good = [fence("north"), fence("theirs", tenant="other"), fence("buffered", lon=LON0 + 0.1, exit_buffer_m=50)]
    with caplog.at_level("ERROR", logger="fencex.index"):
        index = FenceIndex([*UNBUILDABLE, *good])
    assert sorted(f.id for f in index.fences) == ["buffered", "north", "theirs"]
    assert sorted(index.quarantined) == sorted(f.id for f in UNBUILDABLE)
    assert index.quarantined["nan"].tenant == "other" and index.quarantined["nan"].version == 3
    assert set(index.quarantined_of("other")) == {"nan"}
    assert "mixed-3d" in index.quarantined_of("farm") and "a-point" in index.quarantined_of("farm")
    assert all(q.reason for q in index.quarantined.values())
    assert len([r for r in caplog.records if "quarantined" in r.message]) == len(UNBUILDABLE)
    # the good fences answer, by batch, near and scalar lookups
    p = ([LON0 + 0.005], [LAT0 + 0.005])
    assert ids(index, index.lookup(*p, "farm")[0]) == ["north"]
    assert ids(index, index.lookup(*p, "other")[0]) == ["theirs"]
    assert ids(index, index.lookup([LON0 + 0.0995], [LAT0 + 0.005], "farm", near=True)[0]) == ["buffered"]
    assert [f.id for f in index.containing("farm", *p[0], *p[1])] == ["north"]
    # a rebuild keeps them out without logging them again
    caplog.clear()
    with caplog.at_level("ERROR", logger="fencex.index"):
        again = FenceIndex([*UNBUILDABLE, *good], previous=index)
    assert again.quarantined == index.quarantined and len(again) == 3
    assert not [r for r in caplog.records if "quarantined" in r.message]


def test_only_unbuildable_fences_give_an_empty_index():
    index = FenceIndex(UNBUILDABLE)
    assert len(index) == 0 and len(index.quarantined) == len(UNBUILDABLE)
    assert index.lookup([LON0], [LAT0], "farm")[0] == () and index.containing("farm", LON0, LAT0) == []


def test_scalar_lookup_tables_are_derived_on_first_use_only():
    """Issue 10 #5: the index is immutable; the scalar path's tables are computed once, when first used."""
    index = FenceIndex([fence("north")])
    layer = index.farm("farm").inside
    assert layer._bounds_list is None  # the build does not pay for it
    index.containing("farm", LON0 + 0.005, LAT0 + 0.005)
    table = layer._bounds_list
    assert table is not None
    index.containing("farm", LON0 + 0.005, LAT0 + 0.005)
    assert layer._bounds_list is table


def test_default_mob_is_the_farms_pastures_and_exclusion_zones_and_distances_are_metres():
    from fencex.herd import NO_MOB, Mob

    idx = FenceIndex(
        [
            fence("P1", lon=0.0, lat=0.0, size=1.0),
            fence("P2", lon=2.0, lat=0.0, size=1.0),
            fence("X", lon=0.2, lat=0.2, size=0.1, kind="exclusion"),
            fence("W", lon=0.5, lat=0.5, size=0.1, kind="zone"),
            fence("O", lon=0.0, lat=0.0, size=1.0, tenant="other", kind="zone"),
        ]
    )
    assert idx.mob("farm") == Mob(frozenset({"P1", "P2"}), frozenset({"X"}))
    assert idx.mob("other") is NO_MOB and idx.mob("nobody") is NO_MOB  # zones only, or no fence: no herd
    # 0.1 degree east of P1 (at latitude 0.5), 0.9 degrees west of P2: the nearer, in metres
    assert idx.farm("farm").distance_m(["P1", "P2"], 1.1, 0.5) == round(0.1 * 111320.0 * math.cos(math.radians(0.5)), 1)
    assert idx.farm("farm").distance_m(["P1"], 0.5, 0.5) == round(
        0.5 * 110574.0, 1
    )  # inside: to the nearest side (north/south)
    assert idx.farm("farm").distance_m(["gone"], 0.5, 0.5) is None

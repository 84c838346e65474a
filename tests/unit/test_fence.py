from __future__ import annotations

import orjson
import pytest

from fencex.errors import InvalidFence
from fencex.fence import Fence, parse_geometry
from tests.unit.factory import square

SQUARE = square(17.0, 59.0, 0.01)


def poly(*rings):
    return {"type": "Polygon", "coordinates": [list(r) for r in rings]}


OUTER = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
HOLE = [[2, 2], [4, 2], [4, 4], [2, 4], [2, 2]]


@pytest.mark.parametrize(
    "geometry,message",
    [
        (poly([[0, 0], [1, 0], [1, 1], [0, 1]]), "not closed"),
        (poly([[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]), "Self-intersection"),
        (poly([[0, 0], [181, 0], [181, 1], [0, 1], [0, 0]]), "longitude 181"),
        (poly([[0, 0], [1, 0], [1, 95], [0, 95], [0, 0]]), "latitude 95"),
        ({"type": "Polygon", "coordinates": []}, "empty polygon"),
        ({"type": "MultiPolygon", "coordinates": []}, "empty"),
        (poly([[0, 0], [1, 0], [0, 0]]), "at least 4 positions"),
        (poly([[0, 0], [1, 0], [2, 0], [0, 0]]), "invalid geometry"),  # collinear: no area
        ({"type": "Point", "coordinates": [0, 0]}, "Polygon or MultiPolygon"),
        (poly([[0, 0], [1, 0], ["x", 1], [0, 0]]), "finite number"),
        (poly([[0, 0], [1, 0], [float("nan"), 1], [0, 0]]), "finite number"),
        (poly(OUTER, [[5, 5], [15, 5], [15, 6], [5, 6], [5, 5]]), "invalid geometry"),  # hole crosses the shell
        # issue 9 #1: a third value is an altitude, a finite number; there is no fourth
        (poly([[0, 0], [1, 0, "x"], [1, 1], [0, 1], [0, 0]]), "altitude must be a finite number"),
        (poly([[0, 0], [1, 0, float("nan")], [1, 1], [0, 1], [0, 0]]), "altitude must be a finite number"),
        (poly([[0, 0], [1, 0, float("inf")], [1, 1], [0, 1], [0, 0]]), "altitude must be a finite number"),
        (poly([[0, 0], [1, 0, True], [1, 1], [0, 1], [0, 0]]), "altitude must be a finite number"),
        (poly([[0, 0], [1, 0, None], [1, 1], [0, 1], [0, 0]]), "altitude must be a finite number"),
        (poly([[0, 0], [1, 0, 1, 1], [1, 1], [0, 1], [0, 0]]), "a position is"),
        (poly([[0, 0], [1, 0], [True, 1], [0, 1], [0, 0]]), "longitude must be a finite number"),
        # issue 9 #16: floating-point noise is clamped (below); a real excess is still refused
        (poly([[0, 0], [180.000001, 0], [180.000001, 1], [0, 1], [0, 0]]), "longitude 180.000001 is outside"),
        (poly([[0, 0], [1, 0], [1, -90.000001], [0, -90.000001], [0, 0]]), "latitude -90.000001 is outside"),
        # a ring meant across the 180th meridian would be read the long way round: cut it there
        (poly([[179, 0], [-179, 0], [-179, 1], [179, 1], [179, 0]]), "spans 358 degrees of longitude"),
    ],
)
def test_bad_geometry_is_refused_with_reason(geometry, message):
    with pytest.raises(InvalidFence, match=message):
        parse_geometry(geometry)


def test_vertex_limit():
    ring = [[i * 1e-4, 0] for i in range(50)] + [[0.01, 0.01], [0, 0.01], [0, 0]]
    with pytest.raises(InvalidFence, match="more than the limit of 20"):
        parse_geometry(poly(ring), max_vertices=20)


def test_polygon_with_hole_and_multipolygon():
    g = parse_geometry(poly(OUTER, HOLE))
    assert g.area == pytest.approx(100 - 4)
    m = parse_geometry(
        {"type": "MultiPolygon", "coordinates": [[OUTER], [[[20, 20], [21, 20], [21, 21], [20, 21], [20, 20]]]]}
    )
    assert m.area == pytest.approx(101)


def test_fence_json_roundtrip_and_feature():
    f = Fence(id="north", tenant="farm", name="North", tags=["sheep"], dwell_s=60, geometry=square(17.6, 59.8))
    again = Fence.from_json(f.to_json())
    assert again == f
    feat = f.feature()
    assert feat["id"] == "north" and feat["properties"]["version"] == 1 and feat["geometry"]["type"] == "Polygon"


def test_fence_model_refuses_bad_geometry():
    with pytest.raises(ValueError, match="not closed"):
        Fence(id="x", geometry=poly([[0, 0], [1, 0], [1, 1], [0, 1]]))


def test_fence_stores_2d_float_positions_whatever_the_altitudes():
    """Issue 9 #1: a ring mixing [lon, lat] and [lon, lat, alt] is stored as 2-D floats, so it builds."""
    f = Fence(id="x", geometry=poly([[0, 0], [1, 0, 12.5], [1, 1, 3], [0, 1], [0, 0, 0]]))
    assert f.geometry == {
        "type": "Polygon",
        "coordinates": [[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]],
    }
    assert all(type(v) is float for ring in f.geometry["coordinates"] for pos in ring for v in pos)
    assert f.shape().area == pytest.approx(1.0)


def test_fence_keeps_only_what_fencex_understands():
    """Issue 9 #6: unknown members of the geometry (a 5 MB junk field, a bbox) are not stored."""
    geometry = {"type": "MultiPolygon", "coordinates": [[OUTER]], "bbox": [0, 0, 10, 10], "junk": "x" * 5_000_000}
    f = Fence(id="x", geometry=geometry)
    assert set(f.geometry) == {"type", "coordinates"}
    assert f.geometry["coordinates"] == [[[[float(x), float(y)] for x, y in OUTER]]]
    assert len(f.to_json()) < 1000


@pytest.mark.parametrize(
    "lon,lat,expected",
    [
        (180.00000000000006, 10, (180.0, 10.0)),
        (-180.0000000001, 10, (-180.0, 10.0)),
        (170, 90.00000000000001, (170.0, 90.0)),
        (170, -90.0000000005, (170.0, -90.0)),
    ],
)
def test_coordinates_over_the_range_by_noise_are_clamped(lon, lat, expected):
    """Issue 9 #16: real exports carry 180.00000000000006; within 1e-9 degrees it is clamped, and imported."""
    x, y = (-1 if lon < 0 else 1), (-1 if lat < 0 else 1)
    ring = [[lon, lat], [lon - x, lat], [lon - x, lat - y], [lon, lat - y], [lon, lat]]
    f = Fence(id="edge", geometry=poly(ring))
    assert f.geometry["coordinates"][0][0] == list(expected)
    assert f.geometry["coordinates"][0][-1] == list(expected)


def test_stored_fence_is_read_back_without_a_geometry_check():
    """What was stored is loaded as stored (the index quarantines what does not build)."""
    raw = b'{"id": "old", "tenant": "farm", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0, "x"]]]}}'
    assert Fence.from_json(raw).geometry["coordinates"] == [[[0, 0], [1, 0, "x"]]]


@pytest.mark.parametrize(
    "raw,message",
    [
        (b"{not json", "Invalid JSON"),
        (b"[1, 2]", "object"),
        (b'{"id": "x", "tenant": "farm"}', "geometry: Field required"),
        (b'{"id": "x", "tenant": 5, "geometry": {}}', "tenant"),
    ],
)
def test_unreadable_stored_fence_raises_invalid_fence(raw, message):
    with pytest.raises(InvalidFence, match=message):
        Fence.from_json(raw)


def test_fence_kinds_existing_fences_stay_pastures():
    stored = b'{"id":"north","tenant":"farm","version":2,"geometry":' + orjson.dumps(square(17.6, 59.8)) + b"}"
    assert Fence.from_json(stored).kind == "pasture"  # a fence saved before kinds existed
    pond = Fence(id="pond", kind="exclusion", geometry=square(17.6, 59.8))
    assert Fence.from_json(pond.to_json()).kind == "exclusion"
    assert pond.feature()["properties"]["kind"] == "exclusion"
    with pytest.raises(ValueError):
        Fence(id="x", kind="moat", geometry=square(17.6, 59.8))


def test_a_light_record_is_the_stored_fence_without_its_coordinates():
    """Issue 15: what a worker keeps of a fence: every field but the coordinates, the geometry built."""
    full = Fence(id="north", tenant="farm", geometry=SQUARE, name="North", tags=["a"], dwell_s=30.0, version=3)
    raw = full.to_json()
    for light in (Fence.from_json(raw, light=True), full.light()):
        assert light.light_record and set(light.geometry) == {"type", "digest"}
        assert light.model_dump(exclude={"geometry"}) == full.model_dump(exclude={"geometry"})
        assert light.shape().equals(full.shape())
        assert light.light() is light
        with pytest.raises(InvalidFence):
            light.to_json()  # never stored: it would lose the fence's shape
        with pytest.raises(InvalidFence):
            light.feature()
    other = full.model_copy(update={"name": "South"}).to_json()
    assert Fence.from_json(other, light=True).geometry != Fence.from_json(raw, light=True).geometry
    assert Fence.from_json(raw, light=True).geometry == Fence.from_json(raw, light=True).geometry


def test_a_stored_fence_that_does_not_build_is_read_in_full_and_a_broken_record_still_refused():
    """A geometry that does not build stays as stored (the index quarantines it, saying why); a record
    that cannot be read is refused as before."""
    raw = orjson.dumps({"id": "x", "tenant": "farm", "geometry": {"type": "Polygon", "coordinates": [[[0, 0]]]}})
    kept = Fence.from_json(raw, light=True)
    assert not kept.light_record and kept.geometry["coordinates"] == [[[0, 0]]]
    for bad in (b"{", b"[]", orjson.dumps({"id": "x", "geometry": SQUARE, "version": 0})):
        with pytest.raises(InvalidFence):
            Fence.from_json(bad, light=True)

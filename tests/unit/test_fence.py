from __future__ import annotations

import pytest

from fencex.errors import InvalidFence
from fencex.fence import Fence, parse_geometry
from tests.unit.factory import square


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

"""One point at a time (FarmShard.containing, the point query's path) and many at once (the batch
query's Layer.match) answer as shapely alone, for farms under, across and over the sizes where each path
switches from every box to a grid (indexshard.SCALAR_SMALL and BOX_PAIRS) and where the shard builds its
grid (SMALL)."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from fencex.indexshard import BOX_PAIRS, SCALAR_SMALL, SMALL, FarmShard
from tests.unit.factory import fence


@pytest.mark.parametrize("n", [3, SCALAR_SMALL, SCALAR_SMALL + 1, 60, SMALL + 1])
@pytest.mark.parametrize("points", [400, BOX_PAIRS // SCALAR_SMALL + 1])  # few pairs; more than BOX_PAIRS
def test_one_point_and_many_points_are_shapelys_answer(n, points):
    rng = np.random.default_rng(n)
    lons, lats = rng.uniform(17.0, 17.2, n), rng.uniform(59.0, 59.2, n)
    sizes = rng.uniform(0.005, 0.05, n)  # overlapping squares of several sizes
    fences = [fence(f"f{i:03d}", lon, lat, size) for i, (lon, lat, size) in enumerate(zip(lons, lats, sizes))]
    shard = FarmShard("farm-a", fences)
    xs, ys = rng.uniform(16.99, 17.26, points), rng.uniform(58.99, 59.26, points)
    xs[:n], ys[:n] = lons, lats  # on a corner: boundary-inclusive
    geoms = np.array([f.shape() for f in fences], dtype=object)
    inside = shapely.intersects_xy(geoms[None, :], xs[:, None], ys[:, None])  # points x fences
    want_pt, want_f = np.nonzero(inside)
    pt, rows, _ = shard.inside.match(xs, ys)
    assert pt.tolist() == want_pt.tolist()
    assert [shard.inside.ids[r] for r in rows] == [fences[f].id for f in want_f]
    for k in range(min(points, 300)):
        got = [f.id for f in shard.containing(float(xs[k]), float(ys[k]))]
        assert got == [fences[f].id for f in np.nonzero(inside[k])[0]], k

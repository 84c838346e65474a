"""One point at a time (FarmShard.containing, the point query's path) answers as the batch path and
as shapely alone, for farms under, across and over the sizes where the scalar path switches from a walk
over the boxes to a grid (indexshard.SCALAR_SMALL) and where the shard builds its grid (SMALL)."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from fencex.indexshard import SCALAR_SMALL, SMALL, FarmShard
from tests.unit.factory import fence


@pytest.mark.parametrize("n", [3, SCALAR_SMALL, SCALAR_SMALL + 1, 60, SMALL + 1])
def test_one_point_at_a_time_is_the_batch_answer_and_shapelys(n):
    rng = np.random.default_rng(n)
    lons, lats = rng.uniform(17.0, 17.2, n), rng.uniform(59.0, 59.2, n)
    sizes = rng.uniform(0.005, 0.05, n)  # overlapping squares of several sizes
    fences = [fence(f"f{i:03d}", lon, lat, size) for i, (lon, lat, size) in enumerate(zip(lons, lats, sizes))]
    shard = FarmShard("farm-a", fences)
    xs, ys = rng.uniform(16.99, 17.26, 400), rng.uniform(58.99, 59.26, 400)
    xs[:n], ys[:n] = lons[:400], lats[:400]  # on a corner: boundary-inclusive
    pt, rows, _ = shard.inside.match(xs, ys)
    for k, (x, y) in enumerate(zip(xs, ys)):
        got = [f.id for f in shard.containing(float(x), float(y))]
        truth = sorted(f.id for f in fences if shapely.intersects_xy(f.shape(), x, y))
        assert got == truth, (k, x, y)
        assert got == [shard.inside.ids[r] for r in rows[pt == k]]

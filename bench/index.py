"""python -m bench.index: the fence index alone, at 10,000 and 100,000 fences.

Build time (what a fence change costs before workers apply it), batch lookups (the
processor's path) and one-point lookups (the API's path), on the seeded pastures.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from fencex.index import FenceIndex
from services.simulator.herd import CELL_LAT, CELL_LON, ORIGIN_LAT, ORIGIN_LON, pastures


def main() -> int:
    rng = np.random.default_rng(1)
    print(f"{'fences':>8} {'build s':>8} {'rebuild s':>9} {'batch points/s':>15} {'one-point lookups/s':>20}")
    for n in (10_000, 100_000):
        fences = pastures(n, 1)
        started = time.perf_counter()
        index = FenceIndex(fences)
        build = time.perf_counter() - started
        changed = list(fences)
        changed[0] = changed[0].model_copy(update={"version": 2})
        started = time.perf_counter()
        FenceIndex(changed, 1, previous=index)  # what a worker does when one fence changes
        rebuild = time.perf_counter() - started
        side = int(np.ceil(np.sqrt(n)))
        lons = ORIGIN_LON + rng.uniform(0, side * CELL_LON, 200_000)
        lats = ORIGIN_LAT + rng.uniform(0, side * CELL_LAT, 200_000)
        tenants = [fences[0].tenant] * len(lons)  # one farm's view: most points fall on other farms
        per_row = (side + 9) // 10
        all_tenants = [
            f"farm-{(int((y - ORIGIN_LAT) / CELL_LAT) // 10) * per_row + int((x - ORIGIN_LON) / CELL_LON) // 10:03d}"
            for x, y in zip(lons.tolist(), lats.tolist())
        ]
        started = time.perf_counter()
        hits = index.lookup(lons, lats, all_tenants)
        batch = len(lons) / (time.perf_counter() - started)
        inside = sum(1 for h in hits if h)
        index.containing(tenants[0], float(lons[0]), float(lats[0]))  # build the scalar path's cells
        started = time.perf_counter()
        for x, y, t in zip(lons[:50_000].tolist(), lats[:50_000].tolist(), all_tenants[:50_000]):
            index.containing(t, x, y)
        scalar = 50_000 / (time.perf_counter() - started)
        print(
            f"{n:>8,} {build:>8.2f} {rebuild:>9.2f} {batch:>15,.0f} {scalar:>20,.0f}   "
            f"({inside / len(lons):.0%} of points inside a fence)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

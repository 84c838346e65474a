"""The fence index: an immutable snapshot of all fences, answering batches of points.

Built once per change set and swapped atomically (one reference assignment), so
readers never see half an index. A lookup is two vectorised steps: an STRtree
(R-tree) query for bounding-box candidates, then an exact ``intersects`` on
prepared fence geometries (so a point on the boundary is inside). Points only
match fences of their own tenant.

A fence with ``exit_buffer_m`` also gets an *outer* geometry, the fence grown by
that many metres in a local equirectangular projection; a device that was
inside stays inside until it leaves the outer geometry.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from fencex.fence import Fence

METRES_PER_DEGREE_LAT = 110_574.0
METRES_PER_DEGREE_LON_EQUATOR = 111_320.0
_EMPTY: tuple[int, ...] = ()


def grow(geom: BaseGeometry, metres: float) -> BaseGeometry:
    """``geom`` buffered by ``metres``, computed in a local metric projection."""
    c = geom.centroid
    lon0, lat0 = c.x, c.y
    kx = METRES_PER_DEGREE_LON_EQUATOR * max(math.cos(math.radians(lat0)), 1e-6)
    ky = METRES_PER_DEGREE_LAT

    def to_m(xy: np.ndarray) -> np.ndarray:
        return np.column_stack(((xy[:, 0] - lon0) * kx, (xy[:, 1] - lat0) * ky))

    def to_deg(xy: np.ndarray) -> np.ndarray:
        return np.column_stack((xy[:, 0] / kx + lon0, xy[:, 1] / ky + lat0))

    return shapely.transform(shapely.transform(geom, to_m).buffer(metres, quad_segs=4), to_deg)


class FenceIndex:
    """All fences of all tenants, for batch point lookups. Immutable once built."""

    def __init__(self, fences: Iterable[Fence], version: int = 0) -> None:
        started = time.perf_counter()
        self.version = version
        self.fences: tuple[Fence, ...] = tuple(sorted(fences, key=lambda f: (f.tenant, f.id)))
        self.by_id: dict[str, Fence] = {f.id: f for f in self.fences}
        self._tenant_code: dict[str, int] = {}
        codes = [self._tenant_code.setdefault(f.tenant, len(self._tenant_code)) for f in self.fences]
        self._codes = np.asarray(codes, dtype=np.int32)
        self._geoms = np.asarray([f.shape() for f in self.fences], dtype=object) if self.fences else np.empty(0, dtype=object)
        shapely.prepare(self._geoms)
        self._tree = shapely.STRtree(self._geoms)
        buffered = [i for i, f in enumerate(self.fences) if f.exit_buffer_m]
        self._outer_rows = np.asarray(buffered, dtype=np.intp)
        outer = [grow(self._geoms[i], self.fences[i].exit_buffer_m or 0.0) for i in buffered]
        self._outer = np.asarray(outer, dtype=object) if outer else np.empty(0, dtype=object)
        shapely.prepare(self._outer)
        self._outer_tree = shapely.STRtree(self._outer)
        self.build_seconds = time.perf_counter() - started

    def __len__(self) -> int:
        return len(self.fences)

    def tenant_fences(self, tenant: str) -> list[Fence]:
        return [f for f in self.fences if f.tenant == tenant]

    def _codes_of(self, tenants: Sequence[str] | str, n: int) -> np.ndarray:
        if isinstance(tenants, str):
            return np.full(n, self._tenant_code.get(tenants, -1), dtype=np.int32)
        get = self._tenant_code.get
        return np.fromiter((get(t, -1) for t in tenants), dtype=np.int32, count=n)

    def _match(self, tree: shapely.STRtree, geoms: np.ndarray, rows: np.ndarray | None,
               points: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        if len(geoms) == 0 or len(points) == 0:
            empty = np.empty(0, dtype=np.intp)
            return empty, empty, 0
        pt, cand = tree.query(points)  # bounding-box candidates
        fence_rows = cand if rows is None else rows[cand]
        same_tenant = self._codes[fence_rows] == codes[pt]
        pt, cand, fence_rows = pt[same_tenant], cand[same_tenant], fence_rows[same_tenant]
        hit = shapely.intersects(geoms[cand], points[pt])  # exact, prepared, boundary inclusive
        return pt[hit], fence_rows[hit], len(hit)

    def lookup(self, lons: Sequence[float] | np.ndarray, lats: Sequence[float] | np.ndarray,
               tenants: Sequence[str] | str, near: bool = False) -> list[tuple[int, ...]]:
        """For each point, the rows (into ``self.fences``) of its tenant's fences containing it.

        With ``near=True``: the rows of buffered fences whose *outer* geometry contains it.
        """
        return self.lookup_counted(lons, lats, tenants, near)[0]

    def lookup_counted(self, lons: Sequence[float] | np.ndarray, lats: Sequence[float] | np.ndarray,
                       tenants: Sequence[str] | str, near: bool = False) -> tuple[list[tuple[int, ...]], int]:
        """:meth:`lookup`, and how many exact point-in-fence tests it made."""
        lons = np.asarray(lons, dtype=np.float64)
        lats = np.asarray(lats, dtype=np.float64)
        n = len(lons)
        result: list[tuple[int, ...]] = [_EMPTY] * n
        if n == 0:
            return result, 0
        points = shapely.points(lons, lats)
        codes = self._codes_of(tenants, n)
        if near:
            pt, rows, tested = self._match(self._outer_tree, self._outer, self._outer_rows, points, codes)
        else:
            pt, rows, tested = self._match(self._tree, self._geoms, None, points, codes)
        if len(pt):
            order = np.lexsort((rows, pt))
            pt, rows = pt[order].tolist(), rows[order].tolist()
            start = 0
            for k in range(1, len(pt) + 1):
                if k == len(pt) or pt[k] != pt[start]:
                    result[pt[start]] = tuple(rows[start:k])
                    start = k
        return result, tested

    def has_buffers(self) -> bool:
        return len(self._outer) > 0

    def containing(self, tenant: str, lon: float, lat: float) -> list[Fence]:
        """The tenant's fences that contain one point."""
        return [self.fences[r] for r in self.lookup([lon], [lat], tenant)[0]]

    def count_hits(self, lons: np.ndarray, lats: np.ndarray, tenant: str) -> tuple[np.ndarray, np.ndarray]:
        """Raw (point index, fence row) pairs for a batch of one tenant's points."""
        points = shapely.points(np.asarray(lons, dtype=np.float64), np.asarray(lats, dtype=np.float64))
        pt, rows, _ = self._match(self._tree, self._geoms, None, points, self._codes_of(tenant, len(points)))
        return pt, rows

"""The fence index: an immutable snapshot of all fences, answering batches of points.

Built once per change set and swapped atomically (one reference assignment), so
readers never see half an index. A lookup is two vectorised steps: bounding-box
candidates, then an exact ``intersects_xy`` on prepared fence geometries (so a
point on the boundary is inside). Points only match fences of their own tenant.

Candidates come from a uniform grid over the fences' bounding boxes (cells about
the size of a typical fence, stored sparsely as sorted cell keys), searched with
numpy alone: no shapely Point is ever made for a fix, which cost more than the
exact tests. Fences much larger than a cell go to an STRtree (R-tree) instead.

A fence with ``exit_buffer_m`` also gets an *outer* geometry, the fence grown by
that many metres in a local equirectangular projection; a device that was
inside stays inside until it leaves the outer geometry.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from fencex.fence import Fence
from fencex.herd import METRES_PER_DEGREE_LAT, METRES_PER_DEGREE_LON_EQUATOR, NO_MOB, Mob, boundary_distance_m
from fencex.schedule import FarmSchedules, farm_schedules

_EMPTY: tuple[int, ...] = ()
_KEY_OFFSET = 1 << 30
MAX_CELLS_PER_FENCE = 64

_POLYGONAL = (3, 6)  # shapely type ids of Polygon and MultiPolygon

log = logging.getLogger("fencex.index")


class _Grid:
    """Sparse uniform grid: cell key -> fence rows whose bounding box touches the cell."""

    def __init__(self, bounds: np.ndarray, rows: np.ndarray, cell: float) -> None:
        self.cell = cell
        ix0 = np.floor(bounds[:, 0] / cell).astype(np.int64)
        iy0 = np.floor(bounds[:, 1] / cell).astype(np.int64)
        ix1 = np.floor(bounds[:, 2] / cell).astype(np.int64)
        iy1 = np.floor(bounds[:, 3] / cell).astype(np.int64)
        keys, items = [], []
        for r, a, b, c, d in zip(rows.tolist(), ix0.tolist(), iy0.tolist(), ix1.tolist(), iy1.tolist()):
            for ix in range(a, c + 1):
                for iy in range(b, d + 1):
                    keys.append(self._key(ix, iy))
                    items.append(r)
        keys_a = np.asarray(keys, dtype=np.int64)
        order = np.argsort(keys_a, kind="stable")
        keys_a = keys_a[order]
        self.items = np.asarray(items, dtype=np.intp)[order]
        self.keys, self.starts, self.counts = np.unique(keys_a, return_index=True, return_counts=True)

    @staticmethod
    def _key(ix: Any, iy: Any) -> Any:  # ints or int64 arrays alike
        return ((ix + _KEY_OFFSET) << 32) | (iy + _KEY_OFFSET)

    def candidates(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(point index, fence row) for every fence whose cell holds the point."""
        if len(self.keys) == 0:
            empty = np.empty(0, dtype=np.intp)
            return empty, empty
        keys = self._key(np.floor(xs / self.cell).astype(np.int64), np.floor(ys / self.cell).astype(np.int64))
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        found = self.keys[pos] == keys
        pts = np.nonzero(found)[0]
        pos = pos[found]
        counts = self.counts[pos]
        total = int(counts.sum())
        pt = np.repeat(pts, counts)
        ends = np.cumsum(counts)
        within = np.arange(total) - np.repeat(ends - counts, counts)
        return pt, self.items[np.repeat(self.starts[pos], counts) + within]


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


class Quarantined(NamedTuple):
    """A fence the index left out because it does not build (it never stops the others)."""

    tenant: str  # "" when the stored record is too broken to tell
    version: int
    reason: str


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


class FenceIndex:
    """All fences of all tenants, for batch point lookups.

    Immutable once built: what a lookup reads is fixed by the constructor. The scalar path
    (:meth:`containing`) keeps two derived tables (``_cells``, ``_bounds_list``) computed on its
    first call only (the workers never use them; the build is on the path of every fence change);
    computed twice in a race, they are equal, as are the schedules' cached answers.
    A fence that does not build (a geometry stored by an older version, non-finite
    coordinates, a shapely error) is left out and listed in :attr:`quarantined`: one bad
    fence never stops the index for the others.
    """

    def __init__(self, fences: Iterable[Fence], version: int = 0, previous: FenceIndex | None = None) -> None:
        """``previous``: the snapshot this one replaces; its geometries (and grown outer
        geometries) of unchanged fences (same id, tenant and version) are reused instead of
        converted from GeoJSON again, which is most of the cost of a rebuild."""
        started = time.perf_counter()
        self.version = version
        self.quarantined: dict[str, Quarantined] = {}  # fence id -> why it is left out
        known = previous._shapes if previous is not None else {}
        known_outer, plans = (previous._grown, previous.schedules) if previous is not None else ({}, None)
        self._shapes: dict[tuple[str, str, int], BaseGeometry] = {}
        self._grown: dict[tuple[str, str, int], BaseGeometry] = {}
        self._boxes: dict[frozenset[str], tuple[list[BaseGeometry], np.ndarray]] = {}  # see _boxes_of
        ok: list[Fence] = []
        shapes: list[BaseGeometry] = []
        outer: list[BaseGeometry] = []
        buffered: list[int] = []
        for f in sorted(fences, key=lambda f: (f.tenant, f.id)):
            key = (f.id, f.tenant, f.version)
            try:
                geom = self._shapes[key] = known.get(key) or f.shape()
                if f.exit_buffer_m:
                    outer.append(known_outer.get(key) or grow(geom, f.exit_buffer_m))
                    self._grown[key] = outer[-1]
                    buffered.append(len(ok))
            except Exception as exc:  # noqa: BLE001 - whatever a stored fence does, the others go on
                self._shapes.pop(key, None)
                self._quarantine(f, _reason(exc), previous)
                continue
            ok.append(f)
            shapes.append(geom)
        geoms = np.asarray(shapes, dtype=object) if shapes else np.empty(0, dtype=object)
        bounds = shapely.bounds(geoms) if len(geoms) else np.empty((0, 4))
        polygonal = np.isin(shapely.get_type_id(geoms), _POLYGONAL)
        finite = np.asarray(np.isfinite(bounds).all(axis=1) & polygonal, dtype=bool)
        if not finite.all():  # rare: empty or non-finite geometries cannot go on the grid
            keep = np.nonzero(finite)[0]
            for r in np.nonzero(~finite)[0].tolist():
                self._shapes.pop((ok[r].id, ok[r].tenant, ok[r].version), None)
                self._grown.pop((ok[r].id, ok[r].tenant, ok[r].version), None)
                self._quarantine(
                    ok[r], "the geometry is not a polygon, is empty or has non-finite coordinates", previous
                )
            new_row = np.full(len(ok), -1, dtype=np.intp)
            new_row[keep] = np.arange(len(keep))
            outer = [g for r, g in zip(buffered, outer) if finite[r]]
            buffered = [int(new_row[r]) for r in buffered if finite[r]]
            ok, geoms, bounds = [ok[r] for r in keep.tolist()], geoms[keep], bounds[keep]
        self.fences: tuple[Fence, ...] = tuple(ok)
        self.by_id: dict[str, Fence] = {f.id: f for f in self.fences}
        self.schedules: dict[str, FarmSchedules] = farm_schedules([(f.tenant, f.id, f.schedule) for f in ok], plans)
        kinds: dict[tuple[str, str], set[str]] = {}
        for f in self.fences:
            kinds.setdefault((f.tenant, f.kind), set()).add(f.id)
        self._mobs = {
            t: Mob(frozenset(kinds.get((t, "pasture"), ())), frozenset(kinds.get((t, "exclusion"), ())))
            for t, kind in kinds
            if kind != "zone"
        }
        self._tenant_code: dict[str, int] = {}
        codes = [self._tenant_code.setdefault(f.tenant, len(self._tenant_code)) for f in self.fences]
        self._codes = np.asarray(codes, dtype=np.int32)
        self._geoms = geoms
        shapely.prepare(self._geoms)
        self._grid, self._big_rows, self._big_tree = self._partition(self._geoms, bounds)
        self._outer_rows = np.asarray(buffered, dtype=np.intp)
        self._outer = np.asarray(outer, dtype=object) if outer else np.empty(0, dtype=object)
        shapely.prepare(self._outer)
        self._outer_grid, self._outer_big_rows, self._outer_big_tree = self._partition(self._outer)
        self.build_seconds = time.perf_counter() - started

    def _quarantine(self, fence: Fence, reason: str, previous: FenceIndex | None) -> None:
        tenant, version = getattr(fence, "tenant", ""), getattr(fence, "version", 0)
        fid = str(getattr(fence, "id", "?"))
        entry = self.quarantined[fid] = Quarantined(tenant if isinstance(tenant, str) else "", version, reason)
        if previous is None or previous.quarantined.get(fid) != entry:  # once, not on every rebuild
            log.error(
                "fence %r of tenant %r (version %s) quarantined: it does not build: %s", fid, tenant, version, reason
            )

    def quarantined_of(self, tenant: str) -> dict[str, str]:  # fence id -> reason
        return {fid: q.reason for fid, q in self.quarantined.items() if q.tenant == tenant}

    def __len__(self) -> int:
        return len(self.fences)  # self.schedules: farm -> its fences with a schedule (farms with none left out)

    def _codes_of(self, tenants: Sequence[str] | str, n: int) -> np.ndarray:
        if isinstance(tenants, str):
            return np.full(n, self._tenant_code.get(tenants, -1), dtype=np.int32)
        get = self._tenant_code.get
        return np.fromiter((get(t, -1) for t in tenants), dtype=np.int32, count=n)

    @staticmethod
    def _partition(geoms: np.ndarray, bounds: np.ndarray | None = None) -> tuple[_Grid, np.ndarray, shapely.STRtree]:
        """A grid for fences of ordinary size; an STRtree for the few much larger ones."""
        if len(geoms) == 0:
            empty = np.empty(0, dtype=np.intp)
            return _Grid(np.empty((0, 4)), empty, 1.0), empty, shapely.STRtree(np.empty(0, dtype=object))
        if bounds is None:
            bounds = shapely.bounds(geoms)
        size = np.maximum(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1])
        cell = max(float(np.median(size)), 1e-5)
        cells = (np.floor(bounds[:, 2] / cell) - np.floor(bounds[:, 0] / cell) + 1) * (
            np.floor(bounds[:, 3] / cell) - np.floor(bounds[:, 1] / cell) + 1
        )
        big = cells > MAX_CELLS_PER_FENCE
        rows = np.arange(len(geoms), dtype=np.intp)
        big_rows = rows[big]
        return _Grid(bounds[~big], rows[~big], cell), big_rows, shapely.STRtree(geoms[big_rows])

    def _match(
        self,
        grid: _Grid,
        big_rows: np.ndarray,
        big_tree: shapely.STRtree,
        geoms: np.ndarray,
        rows: np.ndarray | None,
        xs: np.ndarray,
        ys: np.ndarray,
        codes: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        pt, cand = grid.candidates(xs, ys)
        if len(big_rows):
            bpt, bcand = big_tree.query(shapely.points(xs, ys))
            pt, cand = np.concatenate((pt, bpt)), np.concatenate((cand, big_rows[bcand]))
        fence_rows = cand if rows is None else rows[cand]
        same_tenant = self._codes[fence_rows] == codes[pt]
        pt, cand, fence_rows = pt[same_tenant], cand[same_tenant], fence_rows[same_tenant]
        hit = shapely.intersects_xy(geoms[cand], xs[pt], ys[pt])  # exact, prepared, boundary inclusive
        return pt[hit], fence_rows[hit], len(hit)

    def lookup(
        self,
        lons: Sequence[float] | np.ndarray,
        lats: Sequence[float] | np.ndarray,
        tenants: Sequence[str] | str,
        near: bool = False,
    ) -> list[tuple[int, ...]]:
        """For each point, the rows (into ``self.fences``) of its tenant's fences containing it.

        With ``near=True``: the rows of buffered fences whose *outer* geometry contains it.
        """
        return self.lookup_counted(lons, lats, tenants, near)[0]

    def lookup_counted(
        self,
        lons: Sequence[float] | np.ndarray,
        lats: Sequence[float] | np.ndarray,
        tenants: Sequence[str] | str,
        near: bool = False,
    ) -> tuple[list[tuple[int, ...]], int]:
        """:meth:`lookup`, and how many exact point-in-fence tests it made."""
        lons = np.asarray(lons, dtype=np.float64)
        lats = np.asarray(lats, dtype=np.float64)
        n = len(lons)
        result: list[tuple[int, ...]] = [_EMPTY] * n
        if n == 0:
            return result, 0
        codes = self._codes_of(tenants, n)
        if near:
            pt, rows, tested = self._match(
                self._outer_grid,
                self._outer_big_rows,
                self._outer_big_tree,
                self._outer,
                self._outer_rows,
                lons,
                lats,
                codes,
            )
        else:
            pt, rows, tested = self._match(
                self._grid, self._big_rows, self._big_tree, self._geoms, None, lons, lats, codes
            )
        if len(pt):
            order = np.lexsort((rows, pt))
            pt, rows = pt[order].tolist(), rows[order].tolist()
            start = 0
            for k in range(1, len(pt) + 1):
                if k == len(pt) or pt[k] != pt[start]:
                    result[pt[start]] = tuple(rows[start:k])
                    start = k
        return result, tested

    def pairs(self, lons: np.ndarray, lats: np.ndarray, tenant: str) -> tuple[np.ndarray, np.ndarray]:
        """(point index, fence row) for every point inside a fence of ``tenant``, by point: a spatial join."""
        lons = np.asarray(lons, dtype=np.float64)
        lats = np.asarray(lats, dtype=np.float64)
        pt, rows, _ = self._match(
            self._grid, self._big_rows, self._big_tree, self._geoms, None, lons, lats, self._codes_of(tenant, len(lons))
        )
        order = np.lexsort((rows, pt))
        return pt[order], rows[order]

    def mob(self, tenant: str) -> Mob:
        """The farm's default mob: all its pastures and exclusion zones."""
        return self._mobs.get(tenant, NO_MOB)

    def distance_m(self, fence_ids: Iterable[str], lon: float, lat: float) -> float | None:
        """Metres (to 0.1 m) from a point to the nearest boundary of the named fences; None if none is here.

        Nearest bounding box first: a fence whose box (in the same local metres) is farther than
        the nearest boundary found so far cannot be nearer, so a farm of many pastures costs one
        or a few exact measures per escape, not one per pasture."""
        geoms, b = self._boxes_of(fence_ids)
        if not geoms:
            return None
        if len(geoms) == 1:
            return round(boundary_distance_m(geoms[0], lon, lat), 1)
        kx = METRES_PER_DEGREE_LON_EQUATOR * max(math.cos(math.radians(lat)), 1e-6)
        dx = np.maximum(np.maximum(b[:, 0] - lon, lon - b[:, 2]), 0.0) * kx
        dy = np.maximum(np.maximum(b[:, 1] - lat, lat - b[:, 3]), 0.0) * METRES_PER_DEGREE_LAT
        low = np.hypot(dx, dy)
        best = math.inf
        for i in np.argsort(low, kind="stable").tolist():
            if low[i] > best * (1 + 1e-9):
                break  # this box, and every one after it, is farther than the nearest boundary found
            best = min(best, boundary_distance_m(geoms[i], lon, lat))
        return round(best, 1)

    def _boxes_of(self, fence_ids: Iterable[str]) -> tuple[list[BaseGeometry], np.ndarray]:
        """The named fences' geometries and bounding boxes; kept per set of ids when given a
        frozenset (a mob's pastures: the same set for every escape of the mob), as this index's
        fences never change."""
        key = fence_ids if isinstance(fence_ids, frozenset) else None
        if key is not None:
            hit = self._boxes.get(key)
            if hit is not None:
                return hit
        geoms: list[BaseGeometry] = []
        for fid in fence_ids:
            f = self.by_id.get(fid)
            geom = self._shapes.get((f.id, f.tenant, f.version)) if f is not None else None
            if geom is not None:
                geoms.append(geom)
        b = shapely.bounds(np.array(geoms, dtype=object)) if len(geoms) > 1 else np.empty((0, 4))
        if key is not None:
            if len(self._boxes) >= 10_000:
                self._boxes.clear()  # bounded: as many sets as mobs are escaping, rebuilt on demand
            self._boxes[key] = (geoms, b)
        return geoms, b

    def has_buffers(self) -> bool:
        return len(self._outer) > 0

    @cached_property
    def _cells(self) -> dict[int, list[int]]:  # the grid as a dict, for the scalar path
        grid = self._grid
        return {int(k): grid.items[s : s + c].tolist() for k, s, c in zip(grid.keys, grid.starts, grid.counts)}

    @cached_property
    def _bounds_list(self) -> list[list[float]]:  # each fence's box as floats, for the scalar path
        return shapely.bounds(self._geoms).tolist()  # type: ignore[no-any-return]

    def containing(self, tenant: str, lon: float, lat: float) -> list[Fence]:
        """The tenant's fences that contain one point (a scalar path: no arrays for one point)."""
        code = self._tenant_code.get(tenant)
        if code is None:
            return []
        grid = self._grid
        cells = self._cells
        key = int(_Grid._key(math.floor(lon / grid.cell), math.floor(lat / grid.cell)))
        bounds = self._bounds_list
        rows = []
        for r in cells.get(key, ()):  # the cell's fences; their boxes first, then the exact test
            b = bounds[r]
            if b[0] <= lon <= b[2] and b[1] <= lat <= b[3] and self._codes[r] == code:
                rows.append(r)
        if len(self._big_rows):
            rows += [
                int(self._big_rows[i])
                for i in self._big_tree.query(shapely.Point(lon, lat))
                if self._codes[self._big_rows[i]] == code
            ]
        return [self.fences[r] for r in sorted(rows) if shapely.intersects_xy(self._geoms[r], lon, lat)]

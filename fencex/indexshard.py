"""One farm's part of the fence index: its fences, geometries, boxes, default mob and schedules.

The fence index (:mod:`fencex.index`) is a map of these shards by farm (tenant). A shard is
built from one farm's fences alone, so a change to a farm costs that farm's fences, and is
immutable once built: a new index shares every unchanged farm's shard with the one it replaces.

A farm's fences are kept sorted by id with their geometries and bounding boxes as arrays. A farm
of a few fences (most: about ten paddocks) needs no spatial structure: a point is tested against
its farm's boxes (:class:`Laid`: for the farms of a whole batch at once). A farm of more than
:data:`SMALL` fences also gets a sparse uniform grid (cells about the size of a typical fence) and
an STRtree for its few much larger fences, built with the shard, off the event loop. A farm of more than
:data:`SCALAR_SMALL` fences and fewer gets the same on the event loop, when a lookup first needs it (one
point, or a batch of more than :data:`BOX_PAIRS` point-box pairs): about 1 ms once.

Geometries are prepared (:func:`shapely.prepare`) lazily, when a lookup first tests a point
against them exactly, not at build: most of a country's fences are not touched between two
changes of their farm. The lookups and their caches run on one thread (the event loop); a shard
is built on another from its fences and its previous shard's geometries, which it only reads.

A fence with ``exit_buffer_m`` also gets an *outer* geometry, the fence grown by that many
metres in a local equirectangular projection; a device that was inside stays inside until it
leaves the outer geometry.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
import shapely
import shapely.errors
from shapely.geometry.base import BaseGeometry

from fencex.fence import Fence
from fencex.herd import METRES_PER_DEGREE_LAT, METRES_PER_DEGREE_LON_EQUATOR, NO_MOB, Mob, boundary_distance_m
from fencex.schedule import FarmSchedules

SMALL = 128  # a farm with more fences than this gets a grid of its own
SCALAR_SMALL = 16  # for one point at a time (Layer.at), a farm with more gets its grid on first use
# ... and for many points (Layer.match) when every point against every box would be more pairs than this: a
# batch of 100,000 points in a farm of 100 fences made 10,000,000 (issue 15's shards gave a farm of 100 fences no
# grid: the batch query fell from about 850,000 to 270,000 points/s)
BOX_PAIRS = 200_000
MAX_CELLS_PER_FENCE = 64
_KEY_OFFSET = 1 << 30
_POLYGONAL = (3, 6)  # shapely type ids of Polygon and MultiPolygon
_BOXES_KEPT = 64  # mobs' (sets of fence ids') boxes kept per farm, for distance_m

log = logging.getLogger("fencex.index")

_NO_ROWS = np.empty(0, dtype=np.intp)
_NO_GEOMS = np.empty(0, dtype=object)
_NO_BOUNDS = np.empty((0, 4))


class Quarantined(NamedTuple):
    """A fence the index left out because it does not build (it never stops the others)."""

    tenant: str  # "" when the stored record is too broken to tell
    version: int
    reason: str


def farm_of(fence: Fence) -> str:
    """The farm a fence belongs to in the index ("" for a record too broken to tell)."""
    tenant = getattr(fence, "tenant", "")
    return tenant if isinstance(tenant, str) else ""


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


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


def shape(fence: Fence) -> BaseGeometry:
    """The fence's geometry: a polygon without holes straight from its ring's coordinates (a third
    faster than shapely's GeoJSON reader, which makes a Python call per vertex), else as the fence says."""
    geometry = fence.geometry
    rings = geometry.get("coordinates") if geometry.get("type") == "Polygon" else None
    if isinstance(rings, list) and len(rings) == 1:
        try:
            return shapely.polygons(np.asarray(rings[0], dtype=np.float64))
        except (TypeError, ValueError, shapely.errors.GEOSException):
            pass  # not a plain ring: the fence's own reader says what is wrong
    return fence.shape()


def cell_key(ix: Any, iy: Any) -> Any:  # ints or int64 arrays alike
    return ((ix + _KEY_OFFSET) << 32) | (iy + _KEY_OFFSET)


class Grid:
    """Sparse uniform grid: cell key -> rows whose bounding box touches the cell."""

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
                    keys.append(cell_key(ix, iy))
                    items.append(r)
        keys_a = np.asarray(keys, dtype=np.int64)
        order = np.argsort(keys_a, kind="stable")
        self.items = np.asarray(items, dtype=np.intp)[order]
        self.keys, self.starts, self.counts = np.unique(keys_a[order], return_index=True, return_counts=True)
        self._cells: dict[int, list[int]] | None = None

    def candidates(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(point index, row) for every row whose cell holds the point."""
        if len(self.keys) == 0:
            return _NO_ROWS, _NO_ROWS
        keys = cell_key(np.floor(xs / self.cell).astype(np.int64), np.floor(ys / self.cell).astype(np.int64))
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        found = self.keys[pos] == keys
        pts = np.nonzero(found)[0]
        pos = pos[found]
        counts = self.counts[pos]
        pt = np.repeat(pts, counts)
        ends = np.cumsum(counts)
        within = np.arange(int(counts.sum())) - np.repeat(ends - counts, counts)
        return pt, self.items[np.repeat(self.starts[pos], counts) + within]

    def at(self, lon: float, lat: float) -> list[int]:
        """The rows of one point's cell (the scalar path: a dict made on first use)."""
        if self._cells is None:
            self._cells = {
                int(k): self.items[s : s + c].tolist() for k, s, c in zip(self.keys, self.starts, self.counts)
            }
        return self._cells.get(int(cell_key(math.floor(lon / self.cell), math.floor(lat / self.cell))), [])


class Spatial:
    """A grid for a large farm's fences of ordinary size; an STRtree for the few much larger ones."""

    def __init__(self, bounds: np.ndarray, geoms: np.ndarray) -> None:
        rows = np.arange(len(bounds), dtype=np.intp)
        size = np.maximum(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1])
        cell = max(float(np.median(size)), 1e-5) if len(bounds) else 1.0
        cells = (np.floor(bounds[:, 2] / cell) - np.floor(bounds[:, 0] / cell) + 1) * (
            np.floor(bounds[:, 3] / cell) - np.floor(bounds[:, 1] / cell) + 1
        )
        big = cells > MAX_CELLS_PER_FENCE
        self.grid = Grid(bounds[~big], rows[~big], cell)
        self.big_rows = rows[big]
        self.big_tree = shapely.STRtree(geoms[self.big_rows])

    def candidates(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pt, rows = self.grid.candidates(xs, ys)
        if len(self.big_rows):
            bpt, brows = self.big_tree.query(shapely.points(xs, ys))
            pt, rows = np.concatenate((pt, bpt)), np.concatenate((rows, self.big_rows[brows]))
        return pt, rows

    def at(self, lon: float, lat: float) -> list[int]:
        rows = list(self.grid.at(lon, lat))
        if len(self.big_rows):
            rows += self.big_rows[self.big_tree.query(shapely.Point(lon, lat))].tolist()
        return rows


class Layer:
    """A farm's geometries of one kind (the fences, or the buffered fences' outer geometries)."""

    __slots__ = ("_bounds_list", "_scalar", "bounds", "frame", "geoms", "ids", "spatial")

    def __init__(
        self, ids: list[str], geoms: list[BaseGeometry] | np.ndarray, bounds: np.ndarray | None = None
    ) -> None:
        n = len(geoms)
        self.ids = np.asarray(ids, dtype=object) if n else _NO_GEOMS
        self.geoms = np.asarray(geoms, dtype=object) if n else _NO_GEOMS
        self.bounds = (shapely.bounds(self.geoms) if bounds is None else bounds) if n else _NO_BOUNDS
        self.spatial = Spatial(self.bounds, self.geoms) if n > SMALL else None
        self.frame: tuple[float, float, float] | None = None  # its grid in a Laid (fencex.indexlaid)
        self._bounds_list: list[list[float]] | None = None
        self._scalar: Spatial | None = self.spatial  # the grid Layer.at uses (made on first use if none)

    def __len__(self) -> int:
        return len(self.geoms)

    def match(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """(point index, row) of each point inside a geometry, by point then row; and the exact tests made."""
        k = len(self.geoms)
        if self.spatial is None and k > SCALAR_SMALL and len(xs) * k > BOX_PAIRS:
            self._scalar = self._scalar or Spatial(self.bounds, self.geoms)  # many points: the grid, made once
        grid = self.spatial if self.spatial is not None else self._scalar if len(xs) * k > BOX_PAIRS else None
        if grid is not None:
            pt, rows = grid.candidates(xs, ys)
        else:  # a few fences or points: every point against every box
            pt, rows = np.repeat(np.arange(len(xs)), k), np.tile(np.arange(k), len(xs))
        b = self.bounds[rows]
        x, y = xs[pt], ys[pt]
        inbox = (b[:, 0] <= x) & (x <= b[:, 2]) & (b[:, 1] <= y) & (y <= b[:, 3])
        pt, rows = pt[inbox], rows[inbox]
        hit = exact(self.geoms[rows], xs[pt], ys[pt])
        pt, rows = pt[hit], rows[hit]
        order = np.lexsort((rows, pt))
        return pt[order], rows[order], len(hit)

    def at(self, lon: float, lat: float) -> list[int]:
        """The rows containing one point, in order (the scalar path: no arrays for one point)."""
        if self._bounds_list is None:
            self._bounds_list = self.bounds.tolist()
        bounds = self._bounds_list
        if self._scalar is None and len(bounds) > SCALAR_SMALL:  # a walk over 100 boxes in Python: 4 us
            self._scalar = Spatial(self.bounds, self.geoms)
        rows = self._scalar.at(lon, lat) if self._scalar is not None else range(len(bounds))
        found = [r for r in rows if bounds[r][0] <= lon <= bounds[r][2] and bounds[r][1] <= lat <= bounds[r][3]]
        return [r for r in sorted(found) if exact(self.geoms[r : r + 1], lon, lat)[0]]


NO_LAYER = Layer([], [])


def exact(geoms: np.ndarray, xs: Any, ys: Any) -> np.ndarray:
    """Boundary-inclusive point-in-geometry tests, the geometries prepared first if they are not yet."""
    if len(geoms):
        shapely.prepare(geoms)  # only those not prepared yet: a flag test for the others
    return np.asarray(shapely.intersects_xy(geoms, xs, ys), dtype=bool)


class FarmShard:
    """One farm's fences, for point lookups. Immutable once built (but for lazy caches and preparation).

    A fence that does not build (a geometry stored by an older version, non-finite coordinates,
    a shapely error) is left out and listed in :attr:`quarantined`: one bad fence never stops the
    others."""

    def __init__(self, tenant: str, fences: Iterable[Fence], previous: FarmShard | None = None) -> None:
        """``previous``: the farm's shard this one replaces; its geometries of unchanged fences (same id
        and version) are reused instead of converted from GeoJSON again, which is most of a build's cost."""
        self.tenant = tenant
        self.quarantined: dict[str, Quarantined] = {}
        ok: list[Fence] = []
        shapes: list[BaseGeometry] = []
        grown: list[BaseGeometry | None] = []
        for f in sorted(fences, key=lambda f: str(getattr(f, "id", ""))):
            try:
                old = previous.reusable(f) if previous is not None else None
                geom = old[0] if old is not None else shape(f)
                ring = None
                if f.exit_buffer_m:
                    ring = old[1] if old is not None and old[1] is not None else grow(geom, f.exit_buffer_m)
            except Exception as exc:  # noqa: BLE001 - whatever a stored fence does, the others go on
                self._quarantine(f, _reason(exc), previous)
                continue
            ok.append(f)
            shapes.append(geom)
            grown.append(ring)
        geoms = np.asarray(shapes, dtype=object) if shapes else _NO_GEOMS
        bounds = shapely.bounds(geoms) if shapes else _NO_BOUNDS
        good = np.isfinite(bounds).all(axis=1) & np.isin(shapely.get_type_id(geoms), _POLYGONAL)
        if not good.all():  # rare: empty or non-finite geometries cannot be boxed
            for r in np.nonzero(~good)[0].tolist():
                self._quarantine(
                    ok[r], "the geometry is not a polygon, is empty or has non-finite coordinates", previous
                )
            keep = good.tolist()
            ok = [f for f, k in zip(ok, keep) if k]
            grown = [g for g, k in zip(grown, keep) if k]
            geoms, bounds = geoms[good], bounds[good]
        outer = [(r, g) for r, g in enumerate(grown) if g is not None]
        self.fences: tuple[Fence, ...] = tuple(ok)
        self.by_id: dict[str, Fence] = {f.id: f for f in ok}
        self.inside = Layer([f.id for f in ok], geoms, bounds)
        self.near = Layer([ok[r].id for r, _ in outer], [g for _, g in outer]) if outer else NO_LAYER
        self._outer_of: dict[str, BaseGeometry] = {ok[r].id: g for r, g in outer}
        pastures = frozenset(f.id for f in ok if f.kind == "pasture")
        exclusions = frozenset(f.id for f in ok if f.kind == "exclusion")
        self.mob = Mob(pastures, exclusions) if pastures or exclusions else NO_MOB
        plans = {f.id: f.schedule for f in ok if f.schedule is not None}
        same = previous is not None and previous.schedules is not None and previous.schedules.schedules == plans
        self.schedules: FarmSchedules | None = (
            previous.schedules if same and previous is not None else FarmSchedules(plans) if plans else None
        )
        self._boxes: dict[frozenset[str], tuple[list[BaseGeometry], np.ndarray]] = {}

    def _quarantine(self, fence: Fence, reason: str, previous: FarmShard | None) -> None:
        version = getattr(fence, "version", 0)
        fid = str(getattr(fence, "id", "?"))
        entry = self.quarantined[fid] = Quarantined(self.tenant, version, reason)
        if previous is None or previous.quarantined.get(fid) != entry:  # once, not on every rebuild
            log.error(
                "fence %r of tenant %r (version %s) quarantined: it does not build: %s",
                fid,
                getattr(fence, "tenant", ""),
                version,
                reason,
            )

    def reusable(self, fence: Fence) -> tuple[BaseGeometry, BaseGeometry | None] | None:
        """This shard's geometry (and outer geometry) of ``fence`` if it holds the same version."""
        mine = self.by_id.get(fence.id)
        if mine is None or (mine is not fence and (mine.version != fence.version or mine.geometry != fence.geometry)):
            return None
        grown = self._outer_of.get(fence.id) if mine.exit_buffer_m == fence.exit_buffer_m else None
        return self.geometry(fence.id), grown

    def __len__(self) -> int:
        return len(self.fences)

    def geometry(self, fid: str) -> BaseGeometry | None:
        ids = self.inside.ids
        r = bisect.bisect_left(ids, fid)
        return self.inside.geoms[r] if r < len(ids) and ids[r] == fid else None

    def containing(self, lon: float, lat: float) -> list[Fence]:
        """The farm's fences that contain one point, by id."""
        return [self.fences[r] for r in self.inside.at(lon, lat)]

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
        frozenset (a mob's pastures: the same set for every escape of the mob)."""
        key = fence_ids if isinstance(fence_ids, frozenset) else None
        if key is not None and (hit := self._boxes.get(key)) is not None:
            return hit
        geoms = [g for fid in fence_ids if (g := self.geometry(fid)) is not None]
        b = shapely.bounds(np.array(geoms, dtype=object)) if len(geoms) > 1 else _NO_BOUNDS
        if key is not None:
            if len(self._boxes) >= _BOXES_KEPT:
                self._boxes.clear()  # bounded: as many sets as the farm's mobs, rebuilt on demand
            self._boxes[key] = (geoms, b)
        return geoms, b


EMPTY = FarmShard("", ())  # the shard of a farm with no fence

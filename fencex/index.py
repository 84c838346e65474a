"""The fence index: an immutable snapshot of every farm's fences, answering batches of points.

Sharded by farm (tenant): a map of farm -> :class:`~fencex.indexshard.FarmShard`, each built
from that farm's fences alone. A worker builds every shard once, at its start; after that a
fence change builds its farm's shard only: :meth:`FenceIndex.with_farms` returns a new index
that shares every other farm's shard with the one it replaces, so a change costs the farm's
fences (and a copy of the map of farms), not the country's. Each index is swapped in whole (one
reference assignment), so readers never see half an index: what one holds never changes.

A lookup's points only match fences of their own farm. The fences of the farms of up to
:data:`~fencex.indexshard.SMALL` fences (most farms have about ten paddocks) are also laid end to
end in one set of arrays, the base: each point of a batch is tested against the boxes of its own
farm's fences there, all points at once with no per-farm work, then exactly (``intersects_xy``: a
point on the boundary is inside) against those whose box holds it, their geometries prepared on
first use. No shapely Point is made for a fix. A farm changed since the base was laid is answered
from its own shard (a farm of many fences from its own grid); once :data:`RELAY_AFTER` farms have
changed, a change lays the base again (a copy of arrays, no geometry is built).

Lookups answer fence ids, by point, each point's ids in order. Per-farm questions (its fences
by id, its default mob, distances to its fences, its schedules) are asked of :meth:`FenceIndex.farm`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property

import numpy as np

from fencex.fence import Fence
from fencex.herd import Mob
from fencex.indexlaid import Laid
from fencex.indexshard import EMPTY, FarmShard, Layer, Quarantined, farm_of, grow
from fencex.schedule import FarmSchedules

__all__ = ["FarmShard", "FenceIndex", "Quarantined", "grow"]

_EMPTY: tuple[str, ...] = ()
RELAY_AFTER = 256  # farms changed since the base was laid that make a change lay it again


class _Base:
    """The small farms' fences laid end to end (inside and outer geometries): a batch's points are
    boxed and tested against them with no per-farm work. Laid at a full build, and again after
    :data:`RELAY_AFTER` farms changed (until then, a changed farm is answered from its shard)."""

    __slots__ = ("code", "inside", "near", "places")

    def __init__(self, farms: Mapping[str, FarmShard]) -> None:
        small = [s for s in farms.values() if s.inside.spatial is None]
        self.code = {s.tenant: c for c, s in enumerate(small)}  # farm -> its place
        self.places = len(small)  # places, those of farms gone or laid again since included
        self.inside = Laid([s.inside for s in small])
        self.near = Laid([s.near for s in small])

    def relaid(self, farms: Mapping[str, FarmShard], changed: Iterable[str]) -> _Base:
        """This base with the ``changed`` farms' fences taken out and their fences now appended (new
        places): a copy of the arrays (milliseconds at a million fences), no walk over every farm."""
        new = object.__new__(_Base)
        new.code = dict(self.code)
        drop = np.zeros(self.places, dtype=bool)
        add: list[FarmShard] = []
        for tenant in changed:
            if (c := new.code.pop(tenant, None)) is not None:
                drop[c] = True
            shard = farms.get(tenant)
            if shard is not None and shard.inside.spatial is None:
                new.code[tenant] = self.places + len(add)
                add.append(shard)
        new.places = self.places + len(add)
        new.inside = self.inside.relaid(drop, [s.inside for s in add])
        new.near = self.near.relaid(drop, [s.near for s in add])
        return new


class FenceIndex:
    """All fences of all farms, for batch point lookups; immutable once built.

    A fence that does not build (a geometry stored by an older version, non-finite coordinates,
    a shapely error) is left out and listed in :attr:`quarantined`, and in its farm's shard: one
    bad fence never stops the index for the others.
    """

    version: int
    changed: frozenset[str] | None  # farms changed from the previous index (None: all of them)
    schedules: dict[str, FarmSchedules]  # farm -> its fences with a schedule (farms with none left out)
    quarantined: dict[str, Quarantined]  # fence id -> why it is left out
    build_seconds: float
    _farms: dict[str, FarmShard]
    _count: int  # fences
    _buffered: int  # fences with an exit buffer
    _base: _Base
    _shadow: np.ndarray  # base place -> the farm changed since the base was laid
    _pending: frozenset[str]  # the farms changed since the base was laid

    def __init__(self, fences: Iterable[Fence] = (), version: int = 0, previous: FenceIndex | None = None) -> None:
        """Every farm's shard from ``fences``. ``previous``: the snapshot this one replaces; its
        geometries of unchanged fences are reused instead of converted from GeoJSON again."""
        started = time.perf_counter()
        by_farm: dict[str, list[Fence]] = {}
        for f in fences:
            by_farm.setdefault(farm_of(f), []).append(f)
        old = previous._farms if previous is not None else {}
        farms: dict[str, FarmShard] = {}
        for tenant in sorted(by_farm):
            shard = FarmShard(tenant, by_farm[tenant], old.get(tenant))
            if len(shard) or shard.quarantined:
                farms[tenant] = shard
        self.version = version
        self.changed = None
        self._farms = farms
        self.schedules = {t: s.schedules for t, s in farms.items() if s.schedules}
        self.quarantined = {fid: q for s in farms.values() for fid, q in s.quarantined.items()}
        self._count = sum(len(s) for s in farms.values())
        self._buffered = sum(len(s.near) for s in farms.values())
        self._lay()
        self.build_seconds = time.perf_counter() - started

    def _lay(self, previous: _Base | None = None, changed: Iterable[str] = ()) -> None:
        """Lay the base: anew, or ``previous`` with the ``changed`` farms laid again; when over half
        its places are those of farms gone or laid again, anew."""
        if previous is None or (base := previous.relaid(self._farms, changed)).places > 2 * len(base.code) + 64:
            base = _Base(self._farms)
        self._base = base
        self._shadow = np.zeros(base.places, dtype=bool)  # farms changed since: by their place
        self._pending = frozenset()

    def with_farms(self, fences: Mapping[str, Iterable[Fence]], version: int) -> FenceIndex:
        """A new index: this one with each named farm's fences replaced by its ``fences`` (none: the farm
        is gone). Every other farm's shard is shared with this index, not built again."""
        started = time.perf_counter()
        new = object.__new__(FenceIndex)
        farms = dict(self._farms)
        schedules = dict(self.schedules)
        quarantined = self.quarantined
        if any(q.tenant in fences for q in quarantined.values()):
            quarantined = {fid: q for fid, q in quarantined.items() if q.tenant not in fences}
        count, buffered = self._count, self._buffered
        for tenant, fs in fences.items():
            old = farms.pop(tenant, None)
            schedules.pop(tenant, None)
            if old is not None:
                count, buffered = count - len(old), buffered - len(old.near)
            shard = FarmShard(tenant, fs, old)
            if len(shard) or shard.quarantined:  # a farm with no fence left is gone
                farms[tenant] = shard
                count, buffered = count + len(shard), buffered + len(shard.near)
            if shard.schedules is not None:
                schedules[tenant] = shard.schedules
            if shard.quarantined:
                quarantined = {**quarantined, **shard.quarantined}
        new.version, new.changed, new._farms = version, frozenset(fences), farms
        new.schedules, new.quarantined, new._count, new._buffered = schedules, quarantined, count, buffered
        pending = self._pending | frozenset(fences)
        if len(pending) > RELAY_AFTER:
            new._lay(self._base, pending)
        else:
            new._base, new._shadow, new._pending = self._base, self._shadow.copy(), pending
            for tenant in fences:
                if (c := self._base.code.get(tenant)) is not None:
                    new._shadow[c] = True
        new.build_seconds = time.perf_counter() - started
        return new

    def farm(self, tenant: str) -> FarmShard:
        """The farm's shard: its fences (``fences``, ``by_id``), default ``mob``, ``schedules``,
        ``distance_m`` and ``quarantined`` (an empty shard for a farm with no fence)."""
        return self._farms.get(tenant, EMPTY)

    @property
    def farms(self) -> Mapping[str, FarmShard]:
        return self._farms

    def __len__(self) -> int:
        return self._count

    @cached_property
    def fences(self) -> tuple[Fence, ...]:
        """Every fence, by farm then id (made on first use: the lookups do not need it)."""
        return tuple(f for t in sorted(self._farms) for f in self._farms[t].fences)

    def quarantined_of(self, tenant: str) -> dict[str, str]:  # fence id -> reason
        return {fid: q.reason for fid, q in self.farm(tenant).quarantined.items()}

    def has_buffers(self) -> bool:
        return self._buffered > 0

    def mob(self, tenant: str) -> Mob:
        """The farm's default mob: all its pastures and exclusion zones."""
        return self.farm(tenant).mob

    def containing(self, tenant: str, lon: float, lat: float) -> list[Fence]:
        """The tenant's fences that contain one point, by id (a scalar path: no arrays for one point)."""
        return self.farm(tenant).containing(lon, lat)

    def lookup(
        self,
        lons: Sequence[float] | np.ndarray,
        lats: Sequence[float] | np.ndarray,
        tenants: Sequence[str] | str,
        near: bool = False,
    ) -> list[tuple[str, ...]]:
        """For each point, the ids (in order) of its tenant's fences containing it.

        With ``near=True``: the ids of buffered fences whose *outer* geometry contains it.
        """
        return self.lookup_counted(lons, lats, tenants, near)[0]

    def lookup_counted(
        self,
        lons: Sequence[float] | np.ndarray,
        lats: Sequence[float] | np.ndarray,
        tenants: Sequence[str] | str,
        near: bool = False,
    ) -> tuple[list[tuple[str, ...]], int]:
        """:meth:`lookup`, and how many exact point-in-fence tests it made."""
        xs = np.asarray(lons, dtype=np.float64)
        ys = np.asarray(lats, dtype=np.float64)
        n = len(xs)
        result: list[tuple[str, ...]] = [_EMPTY] * n
        if n == 0:
            return result, 0
        pt, ids, tested = self._match(xs, ys, tenants, near)
        if len(pt):
            # each point's run of ids (by point): most points are in one fence, so the runs of one id are
            # made in one pass, the few longer ones by slicing
            first = np.flatnonzero(np.concatenate(((True,), pt[1:] != pt[:-1])))
            ends = np.append(first[1:], len(pt))
            found = ids.tolist()
            single = ends - first == 1
            for p, i in zip(pt[first[single]].tolist(), first[single].tolist()):
                result[p] = (found[i],)
            for p, i, j in zip(pt[first[~single]].tolist(), first[~single].tolist(), ends[~single].tolist()):
                result[p] = tuple(found[i:j])
        return result, tested

    def pairs(self, lons: np.ndarray, lats: np.ndarray, tenant: str) -> tuple[np.ndarray, np.ndarray]:
        """(point index, fence id) for every point inside a fence of ``tenant``, by point then id: a spatial join."""
        pt, ids, _ = self._match(np.asarray(lons, dtype=np.float64), np.asarray(lats, dtype=np.float64), tenant, False)
        return pt, ids

    def _match(
        self, xs: np.ndarray, ys: np.ndarray, tenants: Sequence[str] | str, near: bool
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """(point index, fence id) of each point in one of its farm's fences (or outer geometries),
        by point then id; and the exact tests made."""
        if isinstance(tenants, str):
            layer = self._layer(self.farm(tenants), near)
            pt, rows, tested = layer.match(xs, ys)
            return pt, layer.ids[rows], tested
        n = len(xs)
        base = self._base
        get = base.code.get
        codes = np.fromiter((get(t, -1) for t in tenants), dtype=np.intp, count=n)
        served = codes >= 0
        if self._pending:  # farms changed since the base was laid: their own shards answer
            served[served] = ~self._shadow[codes[served]]
        found: list[tuple[np.ndarray, np.ndarray, int]] = []
        if served.all():
            found.append((base.near if near else base.inside).match(xs, ys, np.arange(n), codes))
        else:
            sel = np.nonzero(served)[0]
            if len(sel):
                found.append((base.near if near else base.inside).match(xs, ys, sel, codes[sel]))
            rest = np.nonzero(~served)[0]
            found.extend(self._by_shard(xs, ys, rest, [tenants[i] for i in rest.tolist()], near))
        tested = sum(t for _, _, t in found)
        found = [f for f in found if len(f[0])]
        if not found:
            return np.empty(0, dtype=np.intp), np.empty(0, dtype=object), tested
        if len(found) == 1:
            return found[0][0], found[0][1], tested
        pt = np.concatenate([p for p, _, _ in found])
        order = np.argsort(pt, kind="stable")  # a point's ids all come from its own farm, in order
        return pt[order], np.concatenate([i for _, i, _ in found])[order], tested

    def _by_shard(
        self, xs: np.ndarray, ys: np.ndarray, pts: np.ndarray, tenants: list[str], near: bool
    ) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """:meth:`_match` for points ``pts`` (of ``tenants``) from their farms' shards: the small
        farms' layers laid end to end for this batch, each large farm from its own grid."""
        slot_of: dict[str, int] = {}
        slots = np.fromiter((slot_of.setdefault(t, len(slot_of)) for t in tenants), dtype=np.intp, count=len(pts))
        get = self._farms.get
        layers = [self._layer(get(t, EMPTY), near) for t in slot_of]
        found = []
        small = np.fromiter((layer.spatial is None for layer in layers), dtype=bool, count=len(layers))
        mine = small[slots]
        if mine.any():
            code = np.cumsum(small) - 1  # slot -> its place among the small ones
            laid = Laid([layer for layer, s in zip(layers, small.tolist()) if s])
            found.append(laid.match(xs, ys, pts[mine], code[slots[mine]]))
        for slot in np.nonzero(~small)[0].tolist():  # a farm of many fences: its own grid
            sel = pts[slots == slot]
            p, rows, tested = layers[slot].match(xs[sel], ys[sel])
            found.append((sel[p], layers[slot].ids[rows], tested))
        return found

    @staticmethod
    def _layer(shard: FarmShard, near: bool) -> Layer:
        return shard.near if near else shard.inside

"""The sharded fence index under any sequence of farm changes (issue 15, item 2), against shapely alone.

A hypothesis state machine puts, moves (to another farm: both farms change, as the follower builds
them), breaks (quarantined), deletes fences, deletes whole farms and reloads in full, with small
limits so that every path is taken: farms above :data:`SMALL` fences on their own grid, the base laid
again every few changed farms, and laid anew when most of it is dead.
"""

from __future__ import annotations

from unittest import mock

import orjson
import shapely
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import fencex.index as index_module
import fencex.indexlaid as laid_module
import fencex.indexshard as shard_module
from fencex.fence import Fence
from fencex.index import FenceIndex
from fencex.indexshard import grow
from tests.unit.factory import square

FARMS = ["a", "b", "c"]
IDS = [f"f{i}" for i in range(8)]
PLAN = {"windows": [{"kind": "absolute", "from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"}]}
POINTS = [(x / 40, y / 40) for x in range(-1, 10) for y in range(-1, 10)]  # a grid over the fences' area


class Sharded(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._patches = [
            mock.patch.object(shard_module, "SMALL", 2),
            mock.patch.object(index_module, "RELAY_AFTER", 2),
            mock.patch.object(laid_module, "MAX_CELLS", 2),  # fences over a few cells kept aside: both paths
        ]
        for p in self._patches:
            p.start()
        self.fences: dict[str, Fence] = {}  # the truth: fence id -> fence (one namespace across farms)
        self.index = FenceIndex([])
        self.version = 0

    def teardown(self) -> None:
        for p in self._patches:
            p.stop()

    def _apply(self, farms: set[str]) -> None:
        self.version += 1
        changed = {t: [f for f in self.fences.values() if f.tenant == t] for t in farms}
        self.index = self.index.with_farms(changed, self.version)

    @rule(
        fid=st.sampled_from(IDS),
        farm=st.sampled_from(FARMS),
        x=st.integers(0, 8),
        y=st.integers(0, 8),
        size=st.sampled_from([1, 2, 5]),
        buffered=st.booleans(),
        kind=st.sampled_from(["pasture", "exclusion"]),
        scheduled=st.booleans(),
        broken=st.booleans(),
    )
    def put(self, fid, farm, x, y, size, buffered, kind, scheduled, broken) -> None:
        old = self.fences.get(fid)
        version = old.version + 1 if old is not None else 1
        if broken:  # stored by an older version: it does not build
            point = {"type": "Point", "coordinates": [0, 0]}
            new = Fence.from_json(orjson.dumps({"id": fid, "tenant": farm, "version": version, "geometry": point}))
        else:
            new = Fence(
                id=fid,
                tenant=farm,
                version=version,
                geometry=square(x / 40, y / 40, size / 40),
                exit_buffer_m=900.0 if buffered else None,
                kind=kind,
                schedule=PLAN if scheduled else None,
            )
        self.fences[fid] = new
        self._apply({farm} | ({old.tenant} if old is not None else set()))

    @rule(fid=st.sampled_from(IDS))
    def delete(self, fid) -> None:
        old = self.fences.pop(fid, None)
        if old is not None:
            self._apply({old.tenant})

    @rule(farm=st.sampled_from(FARMS))
    def delete_farm(self, farm) -> None:
        self.fences = {fid: f for fid, f in self.fences.items() if f.tenant != farm}
        self._apply({farm})

    @rule(farm=st.sampled_from(FARMS))
    def touch(self, farm) -> None:  # a change that changes nothing (a farm re-saved)
        self._apply({farm})

    @rule()
    def reload(self) -> None:
        self.version += 1
        self.index = FenceIndex(list(self.fences.values()), self.version, self.index)

    def _good(self, tenant: str) -> list[Fence]:
        return [f for f in self.fences.values() if f.tenant == tenant and f.geometry.get("type") == "Polygon"]

    def _brute(self, tenant: str, x: float, y: float, near: bool) -> tuple[str, ...]:
        found = []
        for f in self._good(tenant):
            if near and not f.exit_buffer_m:
                continue
            geom = grow(f.shape(), f.exit_buffer_m) if near else f.shape()
            if shapely.intersects(geom, shapely.Point(x, y)):
                found.append(f.id)
        return tuple(sorted(found))

    @invariant()
    def lookups_are_shapelys(self) -> None:
        tenants = [t for t in [*FARMS, "nobody"] for _ in POINTS]
        xs = [p[0] + 1e-4 for _ in [*FARMS, "nobody"] for p in POINTS]
        ys = [p[1] + 1e-4 for _ in [*FARMS, "nobody"] for p in POINTS]
        for near in (False, True):
            want = [self._brute(t, x, y, near) for t, x, y in zip(tenants, xs, ys)]
            assert self.index.lookup(xs, ys, tenants, near=near) == want
            assert self.index.lookup(xs[::-1], ys[::-1], tenants[::-1], near=near) == want[::-1]
            for t in FARMS:
                mine = [i for i, tt in enumerate(tenants) if tt == t]
                got = self.index.lookup([xs[i] for i in mine], [ys[i] for i in mine], t, near)
                assert got == [want[i] for i in mine]
        for t, x, y in zip(tenants, xs, ys):
            assert tuple(f.id for f in self.index.containing(t, x, y)) == self._brute(t, x, y, False)

    @invariant()
    def per_farm_answers_are_the_truths(self) -> None:
        good = [f for f in self.fences.values() if f.geometry.get("type") == "Polygon"]
        assert len(self.index) == len(good)
        assert self.index.has_buffers() == any(f.exit_buffer_m for f in good)
        assert sorted(self.index.schedules) == sorted({f.tenant for f in good if f.schedule is not None})
        broken = {fid: f.tenant for fid, f in self.fences.items() if f.geometry.get("type") != "Polygon"}
        assert {fid: q.tenant for fid, q in self.index.quarantined.items()} == broken
        for t in FARMS:
            shard = self.index.farm(t)
            assert shard.by_id == {f.id: f for f in self._good(t)}
            assert set(self.index.quarantined_of(t)) == {fid for fid, tt in broken.items() if tt == t}
            assert shard.mob.pastures == frozenset(f.id for f in self._good(t) if f.kind == "pasture")
            assert shard.mob.exclusions == frozenset(f.id for f in self._good(t) if f.kind == "exclusion")
            plans = {f.id for f in self._good(t) if f.schedule is not None}
            assert (set(shard.schedules.schedules) if shard.schedules is not None else set()) == plans


TestSharded = Sharded.TestCase
TestSharded.settings = settings(max_examples=30, stateful_step_count=25, deadline=None)

"""The scale command's data (``bench.scale``): a country of farms, their paddocks and collars, written
straight into a Redis Cluster under the store's own keys (:class:`fencex.store.base.Keys`) and in its
own serialisation (``Fence.to_json``, ``DeviceState.to_obj`` as the worker's save packs it), many
commands to a pipeline per node, not one store call each.

Farms are scattered over a country-sized area (about 1,000 km by 1,000 km); each farm's paddocks are
neighbours in a row of cells about 220 m across, each a star-shaped polygon of 5 to 50 vertices (as
``bench.index.paddocks``: 6 KB of GeoJSON a fence on average); each farm's collars are spread over its
paddocks, each saved inside its home paddock (a membership of it) as a worker would have saved it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import orjson
import redis
from redis.cluster import RedisCluster

from fencex.detector import DeviceState, Membership
from fencex.fence import Fence
from fencex.store.base import Keys

CELL_LAT = 0.002  # about 220 m, the simulator's cell
LAT0, LAT1 = 50.0, 59.0  # the country: about 1,000 km north to south
LON0, LON1 = 8.0, 24.0  # and about 1,000 km east to west at these latitudes
MEMBER_SINCE_MS = 86_400_000  # a collar has been inside its paddock this long when the run starts


def murmur2_partitions(ids: list[str], partitions: int) -> np.ndarray:
    """Kafka's partition of each key (murmur2 of its UTF-8 bytes, as ``fencex.kafka.producer`` and the
    Java client place it), vectorised over keys of equal length."""
    out = np.empty(len(ids), dtype=np.int64)
    by_len: dict[int, list[int]] = {}
    raw = [i.encode() for i in ids]
    for n, key in enumerate(raw):
        by_len.setdefault(len(key), []).append(n)
    m, mask = np.uint64(0x5BD1E995), np.uint64(0xFFFFFFFF)
    for length, rows in by_len.items():
        data = (
            np.frombuffer(b"".join(raw[r] for r in rows), dtype=np.uint8).reshape(len(rows), length).astype(np.uint64)
        )
        h: np.ndarray = np.full(len(rows), (0x9747B28C ^ length) & 0xFFFFFFFF, dtype=np.uint64)
        for i in range(length // 4):
            b = data[:, 4 * i : 4 * i + 4]
            k: np.ndarray = b[:, 0] | b[:, 1] << 8 | b[:, 2] << 16 | b[:, 3] << 24
            k = (k * m) & mask
            k ^= k >> np.uint64(24)
            k = (k * m) & mask
            h = ((h * m) & mask) ^ k
        tail, extra = length & ~3, length % 4
        if extra >= 3:
            h ^= data[:, tail + 2] << 16
        if extra >= 2:
            h ^= data[:, tail + 1] << 8
        if extra >= 1:
            h = ((h ^ data[:, tail]) * m) & mask
        h ^= h >> np.uint64(13)
        h = (h * m) & mask
        h ^= h >> np.uint64(15)
        out[rows] = (h & np.uint64(0x7FFFFFFF)) % np.uint64(partitions)
    return out


def paddock(fid: str, farm: str, name: str, ring: list[list[float]], dwell_s: float) -> Fence:
    """A pasture fence of one closed ring, built without validation (the generators make valid rings)."""
    return Fence.model_construct(
        id=fid,
        tenant=farm,
        name=name,
        tags=["pasture"],
        version=1,
        dwell_s=dwell_s,
        exit_buffer_m=None,
        kind="pasture",
        schedule=None,
        updated_at=0.0,
        geometry={"type": "Polygon", "coordinates": [ring]},
    )


@dataclass(frozen=True)
class Country:
    """``farms`` farms of ``per_farm`` paddocks and ``devices`` collars in all, from ``seed``."""

    farms: int
    per_farm: int
    devices: int
    seed: int = 1

    @property
    def fences(self) -> int:
        return self.farms * self.per_farm

    @cached_property
    def origins(self) -> np.ndarray:
        """Each farm's first cell's corner (lon, lat): scattered over the country, the same for a seed."""
        rng = np.random.default_rng(self.seed)
        return np.column_stack((rng.uniform(LON0, LON1, self.farms), rng.uniform(LAT0, LAT1, self.farms)))

    def origin(self, farm: int) -> tuple[float, float]:
        lon, lat = self.origins[farm].tolist()
        return lon, lat

    @staticmethod
    def cell_lon(lat: float) -> float:
        return CELL_LAT / math.cos(math.radians(lat))

    def paddocks(self, farm: int) -> list[Fence]:
        """The farm's paddocks, ids ``f<farm>-<k>``, tenant ``farm-<farm>``."""
        rng = np.random.default_rng((self.seed, farm))
        lon0, lat0 = self.origin(farm)
        cl = self.cell_lon(lat0)
        sizes = rng.integers(5, 51, self.per_farm).tolist()
        turns, radii = rng.uniform(0, 1, sum(sizes)), rng.uniform(0.3, 0.45, sum(sizes))
        out, at = [], 0
        for k, n in enumerate(sizes):
            a = (np.arange(n) + turns[at : at + n]) * (2 * math.pi / n)  # one per sector: the centre is inside
            rad = radii[at : at + n]
            at += n
            xy = np.column_stack((lon0 + (k + 0.5 + np.cos(a) * rad) * cl, lat0 + (0.5 + np.sin(a) * rad) * CELL_LAT))
            ring = np.round(xy, 7).tolist()
            ring.append(ring[0])
            out.append(paddock(f"f{farm:06d}-{k:02d}", f"farm-{farm:06d}", f"Paddock {k + 1}", ring, 600.0))
        return out

    def collars(self, farm: int) -> range:
        """The farm's collars' numbers (collar ``n`` is ``c<n:08d>``): the devices dealt out farm by farm."""
        return range(farm * self.devices // self.farms, (farm + 1) * self.devices // self.farms)

    def home(self, farm: int, collar: int) -> tuple[str, float, float]:
        """A collar's home paddock and its place there (near the paddock's centre: inside it)."""
        k = collar % self.per_farm
        lon0, lat0 = self.origin(farm)
        cl = self.cell_lon(lat0)
        jx, jy = ((collar * 7919) % 101 - 50) / 1000, ((collar * 104729) % 97 - 48) / 1000
        return f"f{farm:06d}-{k:02d}", lon0 + (k + 0.5 + jx) * cl, lat0 + (0.5 + jy) * CELL_LAT


def collar_id(n: int) -> str:
    return f"c{n:08d}"


@dataclass
class Loader:
    """Writes to a Redis Cluster by node: each command to the node serving its key's slot, in
    pipelines of ``batch`` commands (every command here names keys of one slot)."""

    cluster: RedisCluster
    batch: int = 2_000
    _pipes: dict[str, Any] = field(default_factory=dict)
    _pending: dict[str, int] = field(default_factory=dict)
    _clients: dict[str, redis.Redis] = field(default_factory=dict)

    def send(self, key: str, command: str, *args: Any, **kwargs: Any) -> None:
        """Queue the pipeline's ``command(*args, **kwargs)`` on the node of ``key``'s slot."""
        node = self.cluster.get_node_from_key(key)  # type: ignore[no-untyped-call]  # unannotated in redis-py
        name = node.name
        pipe = self._pipes.get(name)
        if pipe is None:
            client = self._clients.get(name)
            if client is None:
                client = self._clients[name] = redis.Redis(host=node.host, port=node.port)
            pipe = self._pipes[name] = client.pipeline(transaction=False)
            self._pending[name] = 0
        getattr(pipe, command)(*args, **kwargs)
        self._pending[name] += 1
        if self._pending[name] >= self.batch:
            pipe.execute()
            self._pending[name] = 0

    def flush(self) -> None:
        for name, pipe in self._pipes.items():
            if self._pending[name]:
                pipe.execute()
                self._pending[name] = 0

    def close(self) -> None:
        self.flush()
        for client in self._clients.values():
            client.close()


def write_fences(loader: Loader, keys: Keys, fences: list[Fence]) -> int:
    """A farm's (or a few farms') fences as ``put_fences`` leaves them: the record, the id's claim, the
    group's and the farm's sets of ids; the bytes of GeoJSON records written."""
    by_group: dict[str, list[Fence]] = {}
    for f in fences:
        by_group.setdefault(keys.group(f.tenant), []).append(f)
    size = 0
    for group, some in by_group.items():
        records = {keys.fence_in(group, f.id): f.to_json() for f in some}
        size += sum(len(r) for r in records.values())
        loader.send(keys.fences(group), "mset", records)
        ids = [f.id for f in some]
        loader.send(keys.fences(group), "sadd", keys.fences(group), *ids)
        by_farm: dict[str, list[str]] = {}
        for f in some:
            by_farm.setdefault(f.tenant, []).append(f.id)
        for tenant, fids in by_farm.items():
            loader.send(keys.fences(group), "sadd", keys.tenant_fences(tenant), *fids)
    for f in fences:
        loader.send(keys.fence_id(f.id), "set", keys.fence_id(f.id), f.tenant)
    return size


def write_devices(
    loader: Loader, keys: Keys, topic: str, rows: list[tuple[str, DeviceState, int, str]], now_ms: int
) -> None:
    """Saved device states, as the worker's save leaves them: ``rows`` of (device, state, partition, home
    fence): the state under its partition, the partition's device set, the pointer to it (``where``), the
    registration, the farm's positions and the home fence's members."""
    by_part: dict[int, dict[str, bytes]] = {}
    part_set: dict[int, list[str]] = {}
    where: dict[str, dict[str, int]] = {}
    registry: dict[str, dict[str, str]] = {}
    geo: dict[str, list[Any]] = {}
    inside: dict[str, dict[str, int]] = {}
    for d, st, p, fid in rows:
        by_part.setdefault(p, {})[keys.device(p, d)] = orjson.dumps(st.to_obj())
        part_set.setdefault(p, []).append(d)
        g = keys.group(d)
        where.setdefault(g, {})[d] = p
        registry.setdefault(g, {})[d] = st.tenant
        geo.setdefault(keys.geo(st.tenant), []).extend((st.lon, st.lat, d))
        inside.setdefault(keys.inside(st.tenant, fid), {})[d] = now_ms - MEMBER_SINCE_MS
    for p, states in by_part.items():
        tag = keys.device(p, "")
        loader.send(tag, "mset", states)
        loader.send(tag, "sadd", keys.partition(topic, p), *part_set[p])
    for g, mapping in where.items():
        loader.send(keys.where(g), "hset", keys.where(g), mapping=mapping)
        loader.send(keys.where(g), "hset", keys.devices(g), mapping=registry[g])
    for key, flat in geo.items():
        loader.send(key, "execute_command", "GEOADD", key, *flat)
    for key, members in inside.items():
        loader.send(key, "zadd", key, members)


def farm_states(country: Country, farm: int, partitions: int, now_ms: int) -> list[tuple[str, DeviceState, int, str]]:
    """The farm's collars' saved states as of ``now_ms`` (each inside its home paddock for a day, its
    dwell event sent long ago), with their partitions and home paddocks."""
    numbers = country.collars(farm)
    ids = [collar_id(n) for n in numbers]
    parts = murmur2_partitions(ids, partitions).tolist() if ids else []
    tenant = f"farm-{farm:06d}"
    last = now_ms - 3_600_000
    rows = []
    for d, n, p in zip(ids, numbers, parts):
        fid, lon, lat = country.home(farm, n)
        st = DeviceState(tenant, last, lon, lat, {fid: Membership(now_ms - MEMBER_SINCE_MS, 1, True)})
        rows.append((d, st, p, fid))
    return rows


def chunks(total: int, size: int) -> Iterator[range]:
    for start in range(0, total, size):
        yield range(start, min(total, start + size))

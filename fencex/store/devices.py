"""Devices in Redis: which farm each belongs to, their states, positions and fence memberships,
the devices each partition has seen, and the partitions' generations that fence a stalled worker.

A device's state and track are its partition's (``{p<n>}``); its registration and the partition its
state is saved under (``where``) its group's (``{g<k>}``); positions and memberships its farm's."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import orjson
from redis.exceptions import ResponseError, WatchError

from fencex.detector import DeviceState
from fencex.errors import NotFound
from fencex.store.base import Located
from fencex.store.connection import guard
from fencex.store.feed import RedisFeed
from fencex.store.outbox import RedisOutbox

# Delete the stale copies of moved devices under one partition (docs/design/partitions.md): KEYS[1] the
# partition's device set; ARGV[1], ARGV[2] its state and track key prefixes; then (device id, the last_ts
# of its newer copy elsewhere) pairs. A copy here newer than that is not the stale one: kept.
FORGET_MOVED = """
local n = 0
for i = 3, #ARGV, 2 do
  local id, newer = ARGV[i], tonumber(ARGV[i + 1])
  local raw = redis.call('GET', ARGV[1] .. id)
  local keep = false
  if raw then
    local ok, obj = pcall(cjson.decode, raw)
    keep = ok and type(obj) == 'table' and (tonumber(obj['ts']) or 0) > newer
  end
  if not keep then
    redis.call('DEL', ARGV[1] .. id, ARGV[2] .. id)
    redis.call('SREM', KEYS[1], id)
    n = n + 1
  end
end
return n
"""


def registrations(hashes: Iterable[Mapping[bytes, bytes]]) -> dict[str, str]:
    """Device id -> farm, from the ``{g}:devices`` hashes as read: each farm id decoded once and interned, so
    every process holding the registrations keeps one string a farm, not one a device (measured with
    tracemalloc, 1,000,000 registrations of 100 devices a farm, 9-character device and 11-character farm ids:
    149 bytes a registration with a farm string each, 89 with them shared)."""
    farms: dict[bytes, str] = {}
    out: dict[str, str] = {}
    for raw in hashes:
        for k, v in raw.items():
            farm = farms.get(v)
            if farm is None:
                farm = farms[v] = sys.intern(v.decode())
            out[k.decode()] = farm
    return out


class RedisDevices(RedisFeed, RedisOutbox):
    """Device registry, states and the worker's batch save (``fencex.store.scripts.SAVE_PART`` and
    ``SAVE_FARM``: one call per slot, see :meth:`save_packed`)."""

    async def register_device(self, device_id: str, tenant: str) -> None:
        await self.register_devices({device_id: tenant})

    @guard
    async def register_devices(self, tenants: Mapping[str, str]) -> None:
        """Assign devices to tenants; running workers hear it through the change feed. One transaction
        per device group (its registry and its feed are in one slot): all of a group's or none."""
        by_group: dict[str, list[tuple[str, str]]] = {}
        for device_id, tenant in tenants.items():
            by_group.setdefault(self.keys.group(device_id), []).append((device_id, tenant))
        for group, items in by_group.items():
            for start in range(0, len(items), 5000):
                chunk = dict(items[start : start + 5000])
                async with self.redis.pipeline(transaction=True) as pipe:
                    # redis-py types mapping with an invariant key: dict[str, str] is fine
                    pipe.hset(self.keys.devices(group), mapping=chunk)  # type: ignore[arg-type]
                    for device_id, tenant in chunk.items():
                        self._feed(pipe, group, "device", "upsert", device_id, tenant, 1)
                    await pipe.execute()

    @guard
    async def claim_device(self, device_id: str, tenant: str) -> str:
        """Register an unregistered device to ``tenant``, atomically (set-if-absent, with its
        change-feed entry in the same transaction); returns the device's owner after the claim:
        ``tenant`` unless another tenant holds it. A transfer is :meth:`register_devices`."""
        group = self.keys.group(device_id)
        registry = self.keys.devices(group)
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(registry)
                    owner = cast(bytes | None, await pipe.hget(registry, device_id))
                    if owner is not None:
                        return str(owner.decode())
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves Pipeline.multi unannotated
                    pipe.hset(registry, device_id, tenant)
                    self._feed(pipe, group, "device", "upsert", device_id, tenant, 1)
                    await pipe.execute()
                    return tenant
                except WatchError:
                    continue

    @guard
    async def device_tenants(self, groups: Sequence[str] | None = None) -> dict[str, str]:
        """Device id -> its farm: every device's, or the devices' of ``groups``."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for group in self.keys.all_groups if groups is None else groups:
                pipe.hgetall(self.keys.devices(group))
            got = cast(list[dict[bytes, bytes]], await pipe.execute())
        return registrations(got)

    @guard
    async def device_tenant(self, device_id: str) -> str | None:
        raw = cast(bytes | None, await self.redis.hget(self.keys.devices(self.keys.group(device_id)), device_id))
        return raw.decode() if raw is not None else None

    @guard
    async def tenants_of(self, device_ids: list[str]) -> dict[str, str | None]:
        """Each device's registered tenant (None where unregistered)."""
        got = await self._by_group(self.keys.devices, device_ids)
        return {d: (r.decode() if r is not None else None) for d, r in got.items()}

    async def _where(self, device_ids: Sequence[str]) -> dict[str, int]:
        """The partition each device's state is saved under (those that have one)."""
        got = await self._by_group(self.keys.where, device_ids)
        return {d: int(r) for d, r in got.items() if r is not None}

    @guard
    async def load_states(
        self, device_ids: list[str], partitions: Mapping[str, int] | None = None
    ) -> dict[str, DeviceState]:
        """The saved states of these devices (those that have one): :meth:`locate_states`' states."""
        return (await self._locate(device_ids, partitions)).states

    @guard
    async def locate_states(self, device_ids: list[str], partitions: Mapping[str, int] | None = None) -> Located:
        """The saved states of these devices and where each was found (:meth:`_locate`)."""
        return await self._locate(device_ids, partitions)

    async def _locate(self, device_ids: list[str], partitions: Mapping[str, int] | None) -> Located:
        """The saved states of these devices and where each was found. ``partitions``: device -> its
        partition now, where the caller knows it (the worker does). A device's state is read under that
        partition and, where its pointer (``{P}:{g}:where``) names another, there too; after partitions were
        added it can be under both (docs/design/partitions.md): the newer copy (``last_ts``) is its state,
        the pointer's on a tie. One round trip (the pointer and the given partition read at once), and one
        more for the devices whose pointer names another partition."""
        given = partitions or {}
        first = {d: given[d] for d in device_ids if d in given}
        found: dict[str, DeviceState] = {}
        where, _ = await asyncio.gather(self._where(device_ids), self._read_states(first, found))
        other = {d: w for d, w in where.items() if first.get(d) != w}
        elsewhere: dict[str, DeviceState] = {}
        if other:
            await self._read_states(other, elsewhere)
        out = Located(found, {d: first[d] for d in found}, where)
        for d, state in elsewhere.items():
            mine = found.get(d)
            if mine is None or state.last_ts >= mine.last_ts:
                out.states[d] = state
                out.under[d] = other[d]
        return out

    @guard
    async def forget_moved(self, topic: str, partition: int, newer: Mapping[str, int]) -> int:
        """Delete the copies under ``partition`` of devices whose state moved to another partition: their
        state, track and membership of the partition's device set; ``newer``: device -> the ``last_ts`` of
        its copy elsewhere. A copy newer than that is kept (it is not the stale one). One script call in the
        partition's slot; returns how many were deleted."""
        if not newer:
            return 0
        k = self.keys
        args: list[Any] = [k.device(partition, ""), k.track(partition, "")]
        for d, ts in newer.items():
            args.extend((d, ts))
        script = self.redis.register_script(FORGET_MOVED)
        return int(await script(keys=[k.partition(topic, partition)], args=args))

    async def _read_states(self, where: Mapping[str, int], out: dict[str, DeviceState]) -> None:
        by_part: dict[int, list[str]] = {}
        for d, p in where.items():
            by_part.setdefault(p, []).append(d)
        chunks = [(p, ds[i : i + 10_000]) for p, ds in by_part.items() for i in range(0, len(ds), 10_000)]
        for start in range(0, len(chunks), 16):
            some = chunks[start : start + 16]
            got = await self._mgets([[self.keys.device(p, d) for d in chunk] for p, chunk in some])
            for (_, chunk), raws in zip(some, got):
                for did, raw in zip(chunk, raws):
                    if raw is not None:
                        out[did] = DeviceState.from_obj(orjson.loads(raw))

    @guard
    async def partition_devices(self, topic: str, partitions: Iterable[int]) -> dict[str, int]:
        """Device id -> partition, for the devices seen on these partitions."""
        out: dict[str, int] = {}
        for p in partitions:
            members = cast(set[bytes], await self.redis.smembers(self.keys.partition(topic, p)))
            out.update((m.decode(), p) for m in members)
        return out

    @guard
    async def partition_lists(self, topic: str, partitions: Iterable[int]) -> dict[int, list[str]]:
        """Partition -> the devices seen on it (a device can be listed on two after partitions were added)."""
        parts = list(partitions)
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in parts:
                pipe.smembers(self.keys.partition(topic, p))
            got = cast(list[set[bytes]], await pipe.execute())
        return {p: [m.decode() for m in members] for p, members in zip(parts, got)}

    @guard
    async def claim_partitions(self, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        """Raise each partition's generation by one (a new owner); the new generations.

        A save carrying an older generation (a worker that stalled past its session and
        lost the partition) is refused by :meth:`save_packed`. Each INCR is atomic on its own
        (each partition is its own slot); the partitions are also listed as claimed. On a cluster, the
        farm steps of saves whose saver died after their partition steps are then written
        (:meth:`~fencex.store.outbox.RedisOutbox.replay_outboxes`), before the caller loads a state.
        """
        if not partitions:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in partitions:
                pipe.incr(self.keys.generation(topic, p))
            pipe.sadd(self.keys.partitions(topic), *partitions)
            gens = await pipe.execute()
        await self.replay_outboxes(partitions)  # on a cluster: farm steps a dead saver owed, before any load
        return {p: int(g) for p, g in zip(partitions, gens)}

    @guard
    async def load_tracks(self, device_ids: list[str], partitions: Mapping[str, int] | None = None) -> dict[str, bytes]:
        """The stored tracks of these devices (those that have one: a key of another type, set by hand,
        is none, and the next save replaces it). ``partitions``: as :meth:`load_states`' (a device not
        in it is looked up)."""
        if not device_ids:
            return {}
        given = partitions or {}
        where = {d: given[d] for d in device_ids if d in given}
        missing = [d for d in device_ids if d not in where]
        if missing:
            where.update(await self._where(missing))
        ids = [d for d in device_ids if d in where]
        async with self.redis.pipeline(transaction=False) as pipe:
            for d in ids:
                pipe.lrange(self.keys.track(where[d], d), 0, -1)
            got = cast(list[list[bytes] | ResponseError], await pipe.execute(raise_on_error=False))
        for reply in got:
            if isinstance(reply, ResponseError) and not reply.args[0].startswith("WRONGTYPE"):
                raise reply  # mapped by guard (out of memory), or a bug
        return {d: b"".join(segments) for d, segments in zip(ids, got) if isinstance(segments, list) and segments}

    @guard
    async def device_partition(self, device_id: str) -> int | None:
        """The partition the device's state is saved under (None: none saved)."""
        raw = cast(bytes | None, await self.redis.hget(self.keys.where(self.keys.group(device_id)), device_id))
        return int(raw) if raw is not None else None

    @guard
    async def device_state(self, tenant: str, device_id: str) -> DeviceState:
        p = await self.device_partition(device_id)
        raw = await self.redis.get(self.keys.device(p, device_id)) if p is not None else None
        if raw is None:
            raise NotFound(f"no device {device_id!r}")
        state = DeviceState.from_obj(orjson.loads(raw))
        if state.tenant != tenant:
            raise NotFound(f"no device {device_id!r}")
        return state

    @guard
    async def devices_inside(self, tenant: str, fid: str) -> list[tuple[str, int]]:
        got = cast(
            list[tuple[bytes, float]], await self.redis.zrange(self.keys.inside(tenant, fid), 0, -1, withscores=True)
        )
        return [(d.decode(), int(s)) for d, s in got]

    @guard
    async def occupancy(self, tenant: str, fence_ids: list[str]) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for fid in fence_ids:
                pipe.zcard(self.keys.inside(tenant, fid))
            counts = await pipe.execute()
        return dict(zip(fence_ids, counts))

    @guard
    async def devices_near(
        self, tenant: str, lon: float, lat: float, width_m: float, height_m: float
    ) -> list[tuple[str, float, float]]:
        """Devices whose last position is in the box around (lon, lat): candidates for an exact test."""
        got = await self.redis.execute_command(  # type: ignore[no-untyped-call]  # unannotated in redis-py
            "GEOSEARCH",
            self.keys.geo(tenant),
            "FROMLONLAT",
            lon,
            lat,
            "BYBOX",
            max(width_m, 1.0),
            max(height_m, 1.0),
            "m",
            "WITHCOORD",
        )
        return [(name.decode(), float(xy[0]), float(xy[1])) for name, xy in got]

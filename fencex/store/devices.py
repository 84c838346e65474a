"""Devices in Redis: which farm each belongs to, their states, positions and fence memberships,
the devices each partition has seen, and the partitions' generations that fence a stalled worker."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import msgpack
import orjson
from redis.exceptions import ResponseError, WatchError

from fencex.detector import DeviceState
from fencex.errors import Fenced, GenerationsLost, NotFound
from fencex.event import Event
from fencex.store.base import ALERT_OF, SaveWrites
from fencex.store.connection import guard
from fencex.store.feed import RedisFeed
from fencex.store.grazing import GRAZING_TTL_S, writes_of
from fencex.trackbytes import ANCHOR, MAGIC, ORPHAN

GEO_LAT_LIMIT = 85.05112878  # Redis GEO cannot hold the poles


class RedisDevices(RedisFeed):
    """Device registry, states and the worker's batch save (``fencex.store.scripts.SAVE_BATCH``)."""

    async def register_device(self, device_id: str, tenant: str) -> None:
        await self.register_devices({device_id: tenant})

    @guard
    async def register_devices(self, tenants: Mapping[str, str]) -> None:
        """Assign devices to tenants; running workers hear it through the change feed."""
        items = list(tenants.items())
        for start in range(0, len(items), 5000):
            chunk = dict(items[start : start + 5000])
            async with self.redis.pipeline(transaction=True) as pipe:
                # redis-py's mapping type has an invariant key (Mapping[bytes | str | ..., ...]): dict[str, str] is fine
                pipe.hset(self.keys.devices, mapping=chunk)  # type: ignore[arg-type]
                for device_id, tenant in chunk.items():
                    self._feed(pipe, "device", "upsert", device_id, tenant, 1)
                await pipe.execute()

    @guard
    async def claim_device(self, device_id: str, tenant: str) -> str:
        """Register an unregistered device to ``tenant``, atomically (set-if-absent, with its
        change-feed entry in the same transaction); returns the device's owner after the claim:
        ``tenant`` unless another tenant holds it. A transfer is :meth:`register_devices`."""
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(self.keys.devices)
                    owner = cast(bytes | None, await pipe.hget(self.keys.devices, device_id))
                    if owner is not None:
                        return str(owner.decode())
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves Pipeline.multi unannotated
                    pipe.hset(self.keys.devices, device_id, tenant)
                    self._feed(pipe, "device", "upsert", device_id, tenant, 1)
                    await pipe.execute()
                    return tenant
                except WatchError:
                    continue

    @guard
    async def device_tenants(self) -> dict[str, str]:
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.keys.devices))
        return {k.decode(): v.decode() for k, v in raw.items()}

    @guard
    async def device_tenant(self, device_id: str) -> str | None:
        raw = cast(bytes | None, await self.redis.hget(self.keys.devices, device_id))
        return raw.decode() if raw is not None else None

    @guard
    async def tenants_of(self, device_ids: list[str]) -> dict[str, str | None]:
        """Each device's registered tenant (None where unregistered)."""
        if not device_ids:
            return {}
        raws = cast(list[bytes | None], await self.redis.hmget(self.keys.devices, device_ids))
        return {d: (r.decode() if r is not None else None) for d, r in zip(device_ids, raws)}

    @guard
    async def load_states(self, device_ids: list[str]) -> dict[str, DeviceState]:
        out: dict[str, DeviceState] = {}
        for start in range(0, len(device_ids), 10_000):
            chunk = device_ids[start : start + 10_000]
            raws = await self.redis.mget([self.keys.device(d) for d in chunk])
            for did, raw in zip(chunk, raws):
                if raw is not None:
                    out[did] = DeviceState.from_obj(orjson.loads(raw))
        return out

    @guard
    async def partition_devices(self, topic: str, partitions: Iterable[int]) -> dict[str, int]:
        """Device id -> partition, for the devices seen on these partitions."""
        out: dict[str, int] = {}
        for p in partitions:
            members = cast(set[bytes], await self.redis.smembers(self.keys.partition(topic, p)))
            out.update((m.decode(), p) for m in members)
        return out

    @guard
    async def claim_partitions(self, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        """Raise each partition's generation by one (a new owner); the new generations.

        A save carrying an older generation (a worker that stalled past its session and
        lost the partition) is refused by :meth:`save_packed`.
        """
        if not partitions:
            return {}
        async with self.redis.pipeline(transaction=True) as pipe:
            for p in partitions:
                pipe.incr(self.keys.generation(topic, p))
            gens = await pipe.execute()
        return {p: int(g) for p, g in zip(partitions, gens)}

    def pack_save(
        self,
        states: Mapping[str, DeviceState],
        events: Iterable[Event],
        new_devices: Mapping[tuple[str, int], list[str]] | None = None,
        generations: Mapping[tuple[str, int], int] | None = None,
        writes: SaveWrites | None = None,
    ) -> bytes | None:
        """Serialise a save now (a snapshot), to send later with :meth:`save_packed`.

        ``generations``: (topic, partition) -> the generation the saver holds; the save is
        refused (Fenced) if any has moved on, so a stalled worker's commit is fenced too.
        ``writes``: the tracks, grazing and membership resets saved with the states (:class:`SaveWrites`).
        """
        w = writes or SaveWrites()
        if not states and not new_devices and not generations and not (w.tracks or w.rewrites or w.grazing):
            return None
        k = self.keys
        flat: list[Any] = []
        geo: dict[str, list[Any]] = {}
        dumps = orjson.dumps
        for d, st in states.items():
            flat.append(k.device(d))
            flat.append(dumps(st.to_obj()))
            if -GEO_LAT_LIMIT <= st.lat <= GEO_LAT_LIMIT:
                g = geo.get(st.tenant)
                if g is None:
                    g = geo[st.tenant] = []
                g.extend((st.lon, st.lat, d))
        geo_keys = {k.geo(t): v for t, v in geo.items()}
        # membership and alert-list changes in event order: an exit then an enter leaves the
        # device inside, an escape then a return leaves it off the farm's list of devices out
        members: list[tuple[int, str, int, str]] = []
        for e in events:
            t = e.type
            if t == "enter" or t == "exit":
                members.append((1 if t == "enter" else 0, k.inside(e.tenant, e.fence_id), e.ts_ms, e.device_id))
            elif t in ALERT_OF:  # dwell changes nothing here
                for kind, raised in ALERT_OF[t]:
                    members.append((1 if raised else 0, k.alerts(e.tenant, kind), e.ts_ms, e.device_id))
        for d, (before, after) in w.resets.items():  # then set from the state: a merge's retractions
            members.extend(self._reset_rows(d, before, after))
        sadd = {k.partition(topic, p): devices for (topic, p), devices in (new_devices or {}).items() if devices}
        gens: list[Any] = []
        for (topic, p), gen in (generations or {}).items():
            gens.extend((k.generation(topic, p), gen))
        tracks: list[Any] = []
        rewrites, anchors, empty = w.rewrites, w.anchors, b""
        for d, more in w.tracks.items():
            tracks.extend((d, rewrites.get(d, False), bytes(more), anchors.get(d, -1)))
        for d in rewrites.keys() - w.tracks.keys():
            tracks.extend((d, rewrites[d], empty, -1))
        token = f"{k.prefix}:saved:{os.urandom(12).hex()}"
        grazing = {key: [x for kv in fields.items() for x in kv] for key, fields in writes_of(k, w.grazing).items()}
        orphan = MAGIC + bytes((ORPHAN,))  # a track started by an append: the state before it is not known
        blob = [flat, geo_keys, members, sadd, gens, token, tracks, grazing, orphan, w.long_bytes, GRAZING_TTL_S]
        blob.extend((k.track(""), bytes((ANCHOR,))))
        return msgpack.packb(blob, use_bin_type=False)  # type: ignore[no-any-return]

    def _reset_rows(self, d: str, before: DeviceState, after: DeviceState) -> list[tuple[int, str, int, str]]:
        """The rows that make a device's fence memberships and alert lists those of ``after`` (its state
        after a late merge; ``before``: its state before): out and low battery kept with their first time."""
        k, t = self.keys, after.tenant
        rows = [(0, k.inside(t, f), 0, d) for f in before.members.keys() - after.members.keys()]
        rows.extend((1, k.inside(t, f), m.since_ms, d) for f, m in after.members.items())
        for kind, on in (("out", after.out), ("battery_low", after.low)):
            rows.append((2 if on else 0, k.alerts(t, kind), after.last_ts, d))
        return rows

    @guard
    async def save_packed(self, blob: bytes | None) -> list[tuple[str, int]]:
        """Run a packed save; Fenced (nothing written) if a partition's generation moved on. Returns the
        devices whose tracks are now at least the save's ``long_bytes`` long, with their lengths (a track is
        a list of segments, joined every 64: its length is known then)."""
        if blob is None:
            return []
        got = await self._save_batch(args=[blob])
        if int(got[0]) == -2:
            raise GenerationsLost(
                "the save was refused: the partitions' generations are gone or behind this worker's claim "
                "(Redis lost writes)"
            )
        if int(got[0]) < 0:
            raise Fenced("the save was refused: another worker owns these partitions now")
        return [(got[i].decode(), int(got[i + 1])) for i in range(1, len(got), 2)]

    @guard
    async def load_tracks(self, device_ids: list[str]) -> dict[str, bytes]:
        """The stored tracks of these devices (those that have one: a key of another type, set by hand,
        is none, and the next save replaces it)."""
        if not device_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for d in device_ids:
                pipe.lrange(self.keys.track(d), 0, -1)
            got = cast(list[list[bytes] | ResponseError], await pipe.execute(raise_on_error=False))
        for reply in got:
            if isinstance(reply, ResponseError) and not reply.args[0].startswith("WRONGTYPE"):
                raise reply  # mapped by guard (out of memory), or a bug
        return {
            d: b"".join(segments) for d, segments in zip(device_ids, got) if isinstance(segments, list) and segments
        }

    @guard
    async def device_state(self, tenant: str, device_id: str) -> DeviceState:
        raw = await self.redis.get(self.keys.device(device_id))
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

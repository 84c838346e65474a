"""The worker's save in Redis: a batch's device states, tracks, positions, fence memberships, alert
lists and grazing, fenced by the partitions' generations, in steps of one slot per call (a Redis
Cluster runs nothing else): ``fencex.store.scripts.SAVE_PART`` per partition, then ``SAVE_FARM``
per farm group (``docs/design/redis-cluster.md``)."""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import orjson

from fencex.detector import DeviceState
from fencex.errors import Fenced, GenerationsLost
from fencex.event import Event
from fencex.store.base import ALERT_OF, SaveWrites, step_keys, tag_of
from fencex.store.connection import guard
from fencex.store.grazing import GRAZING_TTL_S, writes_of
from fencex.store.outbox import RedisOutbox, file_entries
from fencex.trackbytes import ANCHOR, MAGIC, ORPHAN

GEO_LAT_LIMIT = 85.05112878  # Redis GEO cannot hold the poles
LOST = "the save was refused: the partitions' generations are gone or behind this worker's claim (Redis lost writes)"
FENCED = "the save was refused: another worker owns these partitions now"


class RedisSave(RedisOutbox):
    """:meth:`pack_save` (a snapshot, no I/O) and :meth:`save_packed`."""

    def pack_save(
        self,
        states: Mapping[str, DeviceState],
        events: Iterable[Event],
        new_devices: Mapping[tuple[str, int], list[str]] | None = None,
        generations: Mapping[tuple[str, int], int] | None = None,
        writes: SaveWrites | None = None,
        partitions: Mapping[str, int] | None = None,
    ) -> bytes | None:
        """Serialise a save now (a snapshot), to send later with :meth:`save_packed`.

        ``generations``: (topic, partition) -> the generation the saver holds; the save is
        refused (Fenced) if any has moved on, so a stalled worker's commit is fenced too.
        ``writes``: the tracks, grazing and membership resets saved with the states (:class:`SaveWrites`).
        ``partitions``: device -> its partition (the worker's ``device_partition``): its state and track
        are saved there. A device not in it (a save by hand) takes the partition ``new_devices`` lists it
        under, else the first of ``generations``, else 0, and its partition is written down for it.
        """
        w = writes or SaveWrites()
        if not states and not new_devices and not generations and not (w.tracks or w.rewrites or w.grazing):
            return None
        k = self.keys
        given = partitions or {}
        listed = {d: p for (_, p), ds in (new_devices or {}).items() for d in ds}
        fallback = min((p for _, p in (generations or {})), default=0)
        where: dict[str, int] = {}  # devices whose partition is written down (new, or saved by hand)

        def part_of(d: str) -> int:
            p = given.get(d)
            if p is None:
                p = listed.get(d, fallback)
                where[d] = p
            return p

        parts: dict[int, _Part] = {}

        def part(p: int) -> _Part:
            got = parts.get(p)
            if got is None:
                got = parts[p] = _Part()
            return got

        geo: dict[str, list[Any]] = {}  # tenant -> lon, lat, device, ...
        dumps = orjson.dumps
        lists: dict[int, tuple[str, list[Any]]] = {}  # partition -> its device key prefix and states
        for d, st in states.items():
            p = given.get(d)
            if p is None:
                p = part_of(d)
            got = lists.get(p)
            if got is None:
                got = lists[p] = (k.device(p, ""), part(p).states)
            got[1].extend((got[0] + d, dumps(st.to_obj())))
            if -GEO_LAT_LIMIT <= st.lat <= GEO_LAT_LIMIT:
                g = geo.get(st.tenant)
                if g is None:
                    g = geo[st.tenant] = []
                g.extend((st.lon, st.lat, d))
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
        for (topic, p), devices in (new_devices or {}).items():
            if devices:
                for d in devices:
                    where.setdefault(d, given.get(d, p))
                part(p).new = [k.partition(topic, p), list(devices)]
        gens: list[Any] = []
        for (topic, p), gen in (generations or {}).items():
            gens.append((k.generation(topic, p), gen))
            part(p).gens = [k.generation(topic, p), gen]
        rewrites, anchors, empty = w.rewrites, w.anchors, b""
        for d, more in w.tracks.items():
            p = given.get(d)
            x = parts.get(p) if p is not None else None
            (x or part(part_of(d))).tracks.extend((d, rewrites.get(d, False), bytes(more), anchors.get(d, -1)))
        for d in rewrites.keys() - w.tracks.keys():
            part(part_of(d)).tracks.extend((d, rewrites[d], empty, -1))
        orphan = MAGIC + bytes((ORPHAN,))  # a track started by an append: the state before it is not known
        token = os.urandom(12).hex()
        pack = functools.partial(msgpack.packb, use_bin_type=False)  # as the scripts' cmsgpack reads it
        anchor = bytes((ANCHOR,))
        part_calls = [
            (
                k.saved(k.part(p), token),
                pack([x.gens, x.states, x.new, x.tracks, k.track(p, ""), orphan, w.long_bytes, anchor]),
            )
            for p, x in sorted(parts.items())
            if x.states or x.new or x.tracks
        ]
        farms: dict[str, tuple[dict[str, list[Any]], list[Any], dict[str, list[Any]]]] = {}

        def farm(key: str) -> tuple[dict[str, list[Any]], list[Any], dict[str, list[Any]]]:
            tag = tag_of(key)
            got = farms.get(tag)
            if got is None:
                got = farms[tag] = ({}, [], {})
            return got

        for tenant, flat in geo.items():
            key = k.geo(tenant)
            farm(key)[0][key] = flat
        for row in members:
            farm(row[1])[1].append(row)
        for key, fields in writes_of(k, w.grazing).items():
            farm(key)[2][key] = [x for kv in fields.items() for x in kv]
        farm_calls = [(k.saved(tag, token), pack([g, m, z, GRAZING_TTL_S])) for tag, (g, m, z) in sorted(farms.items())]
        pointers: dict[str, list[Any]] = {}
        for d, p in where.items():
            pointers.setdefault(k.where(k.group(d)), []).extend((d, p))
        # no bin type: Redis's cmsgpack (SAVE_ALL on one Redis) reads strings only; read back by unpack_save
        return pack([gens, pointers, part_calls, farm_calls])  # type: ignore[no-any-return]

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
        a list of segments, joined every 64: its length is known then).

        On one Redis, one script call (``SAVE_ALL``): atomic, the generations checked up front. On a Redis
        Cluster, in steps, each touching one slot per call (a cluster runs nothing else): the generations
        are checked first (Fenced, or GenerationsLost, with nothing written); then each partition's states,
        tracks and new devices, each call atomic and fenced by the partition's generation (``SAVE_PART``, which
        also files the farm steps the save now owes in the partition's outbox: :mod:`fencex.store.outbox`);
        then, once every one of them is done, the partitions of new and moved devices are written down
        (``where``: idempotent; a crash before it is repaired by the partition's next load), each farm group's
        positions, memberships, alert lists and grazing (``SAVE_FARM``), and the outbox entries are deleted.
        Every call carries the save's token for its slot: a call sent again writes nothing twice."""
        if blob is None:
            return []
        if not self.cluster:  # one Redis: the whole save is one script call (SAVE_ALL), atomic
            got = await self._save_all(args=[blob])
            if int(got[0]) == -1:
                raise Fenced(FENCED)
            if int(got[0]) == -2:
                raise GenerationsLost(LOST)
            return [(got[i].decode(), int(got[i + 1])) for i in range(1, len(got), 2)]
        gens, pointers, part_calls, farm_calls = unpack_save(blob)
        if gens:
            stored = [int(s) if s is not None else -1 for s in await self._gets([g[0] for g in gens])]
            if any(s > g[1] for s, g in zip(stored, gens)):
                raise Fenced(FENCED)  # a newer owner of any partition fences the whole save, whatever else was lost
            if any(s < g[1] for s, g in zip(stored, gens)):
                raise GenerationsLost(LOST)  # gone or behind the saver's own claim: it claims again
        filed = file_entries(self.keys, part_calls, farm_calls, time.time())  # the farm steps owed (outbox)

        def part_call(token: str, d: bytes) -> Any:
            f = filed.get(token)
            if f is None:
                return self._save_part(keys=step_keys(token), args=[d])  # (two keys: refused while the slot moves)
            return self._save_part(keys=[token, f.key], args=[d, f.entry, f.token])

        replies = await asyncio.gather(*(part_call(token, d) for token, d in part_calls))
        codes = {int(r[0]) for r in replies}
        if -1 in codes or -2 in codes:
            # the partitions saved are as saved by a worker that died then. If a refused partition's step
            # ran in an earlier try of this save, every step has: the farm steps are owed, and the claim that
            # refused it replays them; else they are owed by no one, and the entries go now
            await self.clear_filed(await self.owed_by_no_one(filed), best_effort=True)
            raise Fenced(FENCED) if -1 in codes else GenerationsLost(LOST)
        if pointers:  # only once the states are there: a device moved to another partition (partitions
            # added) keeps its pointer to its old state until the new one is saved (docs/design/partitions.md)
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, flat in pointers.items():
                    pipe.hset(key, mapping=dict(zip(flat[::2], flat[1::2])))
                await pipe.execute()
        await asyncio.gather(*(self._save_farm(keys=step_keys(token), args=[d]) for token, d in farm_calls))
        await self.clear_filed(filed)
        return [(got[i].decode(), int(got[i + 1])) for got in replies for i in range(1, len(got), 2)]

    async def _gets(self, keys: Sequence[str]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
            got: list[Any] = await pipe.execute()
            return got


def unpack_save(blob: bytes) -> tuple[list[Any], dict[str, list[Any]], list[Any], list[Any]]:
    """A packed save's steps, as the cluster path sends them: (generations [[key, gen], ...], pointers
    {hash key: [id, partition, ...]}, the partitions' calls [(token key, blob), ...], the farms' calls)."""
    gens, pointers, part_calls, farm_calls = msgpack.unpackb(blob, raw=True)
    return (
        [[key.decode(), gen] for key, gen in gens],
        {key.decode(): [x.decode() if isinstance(x, bytes) else x for x in flat] for key, flat in pointers.items()},
        [(token.decode(), call) for token, call in part_calls],
        [(token.decode(), call) for token, call in farm_calls],
    )


@dataclass(slots=True)
class _Part:
    """One partition's call of a save (``SAVE_PART``'s blob)."""

    gens: list[Any] = field(default_factory=list)  # [generation key, the saver's generation] or []
    states: list[Any] = field(default_factory=list)  # key, JSON, ...
    new: list[Any] = field(default_factory=list)  # [the partition's device set, [new device ids]] or []
    tracks: list[Any] = field(default_factory=list)  # device id, whole or False, to append, anchor, ...

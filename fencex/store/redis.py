"""The Redis backend of the store: fences, the change feed, device state,
tenants and keys, the event history.

No I/O in ``__init__``: ``connect()`` opens the connection and checks it.
Every redis-py connection error leaves here as StoreUnavailable.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import msgpack
import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fencex.detector import DeviceState
from fencex.errors import Fenced, IdTaken, LimitExceeded, NotFound, StoreUnavailable, VersionConflict
from fencex.event import Event
from fencex.fence import Fence
from fencex.store.base import Change, Keys, decode_fences, feed_trimmed

P = ParamSpec("P")
R = TypeVar("R")
CHANGES_MAXLEN = 100_000
GEO_LAT_LIMIT = 85.05112878  # Redis GEO cannot hold the poles

# Add each event to its tenant's history once, however often it is delivered.
# KEYS: (de-duplication marker, tenant's history stream) per event; ARGV: maxlen, then each event.
_APPEND_EVENTS = """
local added = 0
for i = 1, #KEYS, 2 do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', 86400) then
    redis.call('XADD', KEYS[i + 1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[(i + 1) / 2 + 1])
    added = added + 1
  end
end
return added
"""


# Save one batch's device states, positions and memberships in one atomic step.
# The client sends a single msgpack blob: packing a command of 100,000 arguments
# in redis-py's pure-Python encoder cost more than the rest of the batch.
# d[5] holds the saver's partition generations (key, gen, ...): if any is no longer
# the stored one, another worker owns the partition now and nothing is written (-1).
_SAVE_BATCH = """
local d = cmsgpack.unpack(ARGV[1])
local gens = d[5]
for i = 1, #gens, 2 do
  if tonumber(redis.call('GET', gens[i]) or '0') ~= gens[i + 1] then return -1 end
end
local function chunked(cmd, key, flat, width)
  local step = width * math.floor(6000 / width)
  for i = 1, #flat, step do
    if key then
      redis.call(cmd, key, unpack(flat, i, math.min(i + step - 1, #flat)))
    else
      redis.call(cmd, unpack(flat, i, math.min(i + step - 1, #flat)))
    end
  end
end
chunked('MSET', nil, d[1], 2)
for key, flat in pairs(d[2]) do chunked('GEOADD', key, flat, 3) end
for _, z in ipairs(d[3]) do
  if z[1] == 1 then redis.call('ZADD', z[2], z[3], z[4]) else redis.call('ZREM', z[2], z[4]) end
end
for key, members in pairs(d[4]) do chunked('SADD', key, members, 1) end
return #d[1] / 2
"""


def _guard(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(f"redis does not answer: {exc}") from exc
        except ResponseError as exc:
            # Out of memory (maxmemory, noeviction) refuses writes until memory is freed: unavailable,
            # not a bug. redis-py raises OutOfMemoryError for a command or a pipeline, and a plain
            # ResponseError ("Error running script ... -OOM command not allowed ...") from a script.
            if isinstance(exc, OutOfMemoryError) or "OOM command not allowed" in str(exc):
                raise StoreUnavailable(f"redis is out of memory: {exc}") from exc
            raise

    return wrapper


def key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def key_id(api_key: str) -> str:
    """A key's public id: a prefix of its hash, safe to show and log."""
    return key_digest(api_key)[:16]


class RedisStore:
    def __init__(self, url: str, prefix: str = "fx", history_maxlen: int = 10_000) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self.history_maxlen = history_maxlen
        self._redis: aioredis.Redis | None = None
        self._append_events: Any = None
        self._save_batch: Any = None

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise StoreUnavailable("the store is not connected: call connect() first")
        return self._redis

    @_guard
    async def connect(self) -> None:
        self._redis = aioredis.Redis.from_url(
            self.url, socket_connect_timeout=3, socket_timeout=10, health_check_interval=30
        )
        await self._redis.ping()
        self._append_events = self._redis.register_script(_APPEND_EVENTS)
        self._save_batch = self._redis.register_script(_SAVE_BATCH)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    @_guard
    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    # ---------------------------------------------------------------- fences

    @_guard
    async def get_fence(self, tenant: str, fid: str) -> Fence:
        raw = await self.redis.get(self.keys.fence(fid))
        if raw is None:
            raise NotFound(f"no fence {fid!r}")
        fence = Fence.from_json(raw)
        if fence.tenant != tenant:
            raise NotFound(f"no fence {fid!r}")  # another farm's fence does not exist for this one
        return fence

    @_guard
    async def fences(self, tenant: str | None = None, *, unreadable: dict[str, str] | None = None) -> list[Fence]:
        """All fences, or a tenant's. A stored record that cannot be read is left out (and
        added to ``unreadable``: fence id -> reason), so one broken record stops nobody."""
        key = self.keys.fences if tenant is None else self.keys.tenant_fences(tenant)
        ids = sorted(m.decode() for m in await self.redis.smembers(key))
        out: list[Fence] = []
        for start in range(0, len(ids), 5000):
            chunk = ids[start : start + 5000]
            raws = await self.redis.mget([self.keys.fence(i) for i in chunk])
            out.extend(f for f in decode_fences(chunk, raws, unreadable).values() if f is not None)
        return out

    @_guard
    async def fences_by_id(
        self, ids: list[str], *, unreadable: dict[str, str] | None = None
    ) -> dict[str, Fence | None]:
        """The fences with these ids, whatever their tenant (None where deleted or unreadable;
        the unreadable ones are also added to ``unreadable``: fence id -> reason)."""
        raws = await self.redis.mget([self.keys.fence(i) for i in ids]) if ids else []
        return decode_fences(ids, raws, unreadable)

    @_guard
    async def put_fences(
        self,
        fences: Iterable[Fence],
        if_match: Mapping[str, int] | None = None,
        create_only: bool = False,
        max_per_tenant: int | None = None,
    ) -> list[Fence]:
        """Create or replace fences atomically (all or none), each with its version raised by one.

        ``if_match``: fence id -> the version the caller last saw (HTTP If-Match); a
        mismatch raises VersionConflict and nothing is written. A fence id owned by
        another tenant raises IdTaken. ``max_per_tenant``: a tenant that would hold more
        fences than this gets LimitExceeded, checked in the same transaction as the write.
        """
        fences = list(fences)
        keys = [self.keys.fence(f.id) for f in fences]
        tenants = sorted({f.tenant for f in fences})
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(*keys, *(self.keys.tenant_fences(t) for t in tenants))
                    current = await pipe.mget(keys) if keys else []
                    if max_per_tenant is not None:
                        await self._check_quota(pipe, fences, current, max_per_tenant)
                    now = time.time()
                    stored: list[Fence] = []
                    for fence, raw in zip(fences, current):
                        old = Fence.from_json(raw) if raw is not None else None
                        if old is not None and old.tenant != fence.tenant:
                            raise IdTaken(f"fence id {fence.id!r} is taken: choose another")
                        if create_only and old is not None:
                            raise VersionConflict(None, old.version)
                        expected = (if_match or {}).get(fence.id)
                        if expected is not None and (old is None or old.version != expected):
                            raise VersionConflict(expected, old.version if old else None)
                        version = old.version + 1 if old is not None else 1
                        stored.append(fence.model_copy(update={"version": version, "updated_at": now}))
                    pipe.multi()
                    for fence in stored:
                        pipe.set(self.keys.fence(fence.id), fence.to_json())
                        pipe.sadd(self.keys.fences, fence.id)
                        pipe.sadd(self.keys.tenant_fences(fence.tenant), fence.id)
                        self._feed(pipe, "fence", "upsert", fence.id, fence.tenant, fence.version)
                    await pipe.execute()
                    return stored
                except WatchError:
                    continue

    async def _check_quota(self, pipe: Any, fences: list[Fence], current: list[Any], limit: int) -> None:
        new: dict[str, int] = {}
        for fence, raw in zip(fences, current):
            if raw is None:
                new[fence.tenant] = new.get(fence.tenant, 0) + 1
        for tenant, n in new.items():
            held = int(await pipe.scard(self.keys.tenant_fences(tenant)))
            if held + n > limit:
                raise LimitExceeded(
                    f"the farm holds {held} fences; {n} more would pass its limit of {limit}",
                    "max_fences_per_tenant",
                )

    @_guard
    async def delete_fence(self, tenant: str, fid: str, if_match: int | None = None) -> Fence:
        key = self.keys.fence(fid)
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        raise NotFound(f"no fence {fid!r}")
                    old = Fence.from_json(raw)
                    if old.tenant != tenant:
                        raise NotFound(f"no fence {fid!r}")
                    if if_match is not None and if_match != old.version:
                        raise VersionConflict(if_match, old.version)
                    pipe.multi()
                    pipe.delete(key)
                    pipe.srem(self.keys.fences, fid)
                    pipe.srem(self.keys.tenant_fences(tenant), fid)
                    self._feed(pipe, "fence", "delete", fid, tenant, old.version)
                    await pipe.execute()
                    return old
                except WatchError:
                    continue

    def _feed(self, pipe: Any, kind: str, op: str, key: str, tenant: str, version: int) -> None:
        pipe.xadd(
            self.keys.changes,
            {"kind": kind, "op": op, "id": key, "tenant": tenant, "version": version},
            maxlen=CHANGES_MAXLEN,
            approximate=True,
        )

    # ------------------------------------------------------------ change feed

    @_guard
    async def last_change_id(self) -> str:
        entries = await self.redis.xrevrange(self.keys.changes, count=1)
        return entries[0][0].decode() if entries else "0-0"

    @_guard
    async def changes(self, after: str, block_ms: int = 500, count: int = 10_000) -> list[Change]:
        got = await self.redis.xread({self.keys.changes: after}, block=block_ms, count=count)
        out: list[Change] = []
        for _stream, entries in got or []:
            for entry_id, f in entries:
                out.append(
                    Change(
                        entry_id.decode(),
                        f[b"kind"].decode(),
                        f[b"op"].decode(),
                        f[b"id"].decode(),
                        f[b"tenant"].decode(),
                        int(f[b"version"]),
                    )
                )
        return out

    @_guard
    async def changes_trimmed(self, after: str) -> bool:
        """Whether changes after ``after`` may be gone from the capped feed (see :func:`feed_trimmed`):
        a follower at ``after`` must then reload in full. Ask it after reading from ``after``."""
        try:
            info = await self.redis.xinfo_stream(self.keys.changes)
        except ResponseError as exc:
            if "no such key" not in str(exc).lower():
                raise
            info = None
        return feed_trimmed(after, info, CHANGES_MAXLEN)

    # ---------------------------------------------------------------- devices

    async def register_device(self, device_id: str, tenant: str) -> None:
        await self.register_devices({device_id: tenant})

    @_guard
    async def register_devices(self, tenants: Mapping[str, str]) -> None:
        """Assign devices to tenants; running workers hear it through the change feed."""
        items = list(tenants.items())
        for start in range(0, len(items), 5000):
            chunk = dict(items[start : start + 5000])
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self.keys.devices, mapping=chunk)
                for device_id, tenant in chunk.items():
                    self._feed(pipe, "device", "upsert", device_id, tenant, 1)
                await pipe.execute()

    @_guard
    async def claim_device(self, device_id: str, tenant: str) -> str:
        """Register an unregistered device to ``tenant``, atomically (set-if-absent, with its
        change-feed entry in the same transaction); returns the device's owner after the claim:
        ``tenant`` unless another tenant holds it. A transfer is :meth:`register_devices`."""
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(self.keys.devices)
                    owner = await pipe.hget(self.keys.devices, device_id)
                    if owner is not None:
                        return str(owner.decode())
                    pipe.multi()
                    pipe.hset(self.keys.devices, device_id, tenant)
                    self._feed(pipe, "device", "upsert", device_id, tenant, 1)
                    await pipe.execute()
                    return tenant
                except WatchError:
                    continue

    @_guard
    async def device_tenants(self) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.devices)
        return {k.decode(): v.decode() for k, v in raw.items()}

    @_guard
    async def device_tenant(self, device_id: str) -> str | None:
        raw = await self.redis.hget(self.keys.devices, device_id)
        return raw.decode() if raw is not None else None

    @_guard
    async def tenants_of(self, device_ids: list[str]) -> dict[str, str | None]:
        """Each device's registered tenant (None where unregistered)."""
        if not device_ids:
            return {}
        raws = await self.redis.hmget(self.keys.devices, device_ids)
        return {d: (r.decode() if r is not None else None) for d, r in zip(device_ids, raws)}

    @_guard
    async def load_states(self, device_ids: list[str]) -> dict[str, DeviceState]:
        out: dict[str, DeviceState] = {}
        for start in range(0, len(device_ids), 10_000):
            chunk = device_ids[start : start + 10_000]
            raws = await self.redis.mget([self.keys.device(d) for d in chunk])
            for did, raw in zip(chunk, raws):
                if raw is not None:
                    out[did] = DeviceState.from_obj(orjson.loads(raw))
        return out

    @_guard
    async def partition_devices(self, topic: str, partitions: Iterable[int]) -> dict[str, int]:
        """Device id -> partition, for the devices seen on these partitions."""
        out: dict[str, int] = {}
        for p in partitions:
            out.update((m.decode(), p) for m in await self.redis.smembers(self.keys.partition(topic, p)))
        return out

    @_guard
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
    ) -> bytes | None:
        """Serialise a save now (a snapshot), to send later with :meth:`save_packed`.

        ``generations``: (topic, partition) -> the generation the saver holds; the save is
        refused (Fenced) if any has moved on, so a stalled worker's commit is fenced too.
        """
        if not states and not new_devices and not generations:
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
        # membership changes in event order: an exit then an enter leaves the device inside
        members = [
            (1 if e.type == "enter" else 0, k.inside(e.tenant, e.fence_id), e.ts_ms, e.device_id)
            for e in events
            if e.type != "dwell"
        ]
        sadd = {k.partition(topic, p): devices for (topic, p), devices in (new_devices or {}).items() if devices}
        gens: list[Any] = []
        for (topic, p), gen in (generations or {}).items():
            gens.extend((k.generation(topic, p), gen))
        return msgpack.packb([flat, geo_keys, members, sadd, gens], use_bin_type=False)  # type: ignore[no-any-return]

    @_guard
    async def save_packed(self, blob: bytes | None) -> None:
        """Run a packed save; Fenced (nothing written) if a partition's generation moved on."""
        if blob is not None and int(await self._save_batch(args=[blob])) < 0:
            raise Fenced("the save was refused: another worker owns these partitions now")

    @_guard
    async def device_state(self, tenant: str, device_id: str) -> DeviceState:
        raw = await self.redis.get(self.keys.device(device_id))
        if raw is None:
            raise NotFound(f"no device {device_id!r}")
        state = DeviceState.from_obj(orjson.loads(raw))
        if state.tenant != tenant:
            raise NotFound(f"no device {device_id!r}")
        return state

    @_guard
    async def devices_inside(self, tenant: str, fid: str) -> list[tuple[str, int]]:
        got = await self.redis.zrange(self.keys.inside(tenant, fid), 0, -1, withscores=True)
        return [(d.decode(), int(s)) for d, s in got]

    @_guard
    async def occupancy(self, tenant: str, fence_ids: list[str]) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for fid in fence_ids:
                pipe.zcard(self.keys.inside(tenant, fid))
            counts = await pipe.execute()
        return dict(zip(fence_ids, counts))

    @_guard
    async def devices_near(
        self, tenant: str, lon: float, lat: float, width_m: float, height_m: float
    ) -> list[tuple[str, float, float]]:
        """Devices whose last position is in the box around (lon, lat): candidates for an exact test."""
        got = await self.redis.execute_command(
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

    # ------------------------------------------------------ tenants and keys

    @_guard
    async def create_tenant(self, tenant: str, name: str) -> bool:
        return bool(await self.redis.hsetnx(self.keys.tenants, tenant, name))

    @_guard
    async def tenant_exists(self, tenant: str) -> bool:
        return bool(await self.redis.hexists(self.keys.tenants, tenant))

    @_guard
    async def add_api_key(self, tenant: str, api_key: str) -> str:
        """Store a key (its hash only) for ``tenant``; returns its id (:func:`key_id`)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            self._add_key(pipe, tenant, api_key)
            await pipe.execute()
        return key_id(api_key)

    def _add_key(self, pipe: Any, tenant: str, api_key: str) -> None:
        digest = key_digest(api_key)
        pipe.set(self.keys.api_key(digest), tenant)
        record = orjson.dumps({"digest": digest, "created_at": time.time()})
        pipe.hset(self.keys.tenant_keys(tenant), key_id(api_key), record)

    @_guard
    async def api_keys(self, tenant: str) -> list[dict[str, Any]]:
        """Tenant's keys as ``{"id", "created_at"}``, oldest first (never the key nor its hash)."""
        raw = await self.redis.hgetall(self.keys.tenant_keys(tenant))
        keys = [{"id": k.decode(), "created_at": orjson.loads(v)["created_at"]} for k, v in raw.items()]
        return sorted(keys, key=lambda k: (k["created_at"], k["id"]))

    @_guard
    async def replace_api_key(self, tenant: str, old_id: str, new_key: str | None) -> bool:
        """Revoke the tenant's key ``old_id`` and, in the same transaction, add ``new_key``
        (a rotation; None only revokes). False if the tenant has no key with that id."""
        index = self.keys.tenant_keys(tenant)
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(index)
                    raw = await pipe.hget(index, old_id)
                    if raw is None:
                        return False
                    pipe.multi()
                    pipe.delete(self.keys.api_key(orjson.loads(raw)["digest"]))
                    pipe.hdel(index, old_id)
                    if new_key is not None:
                        self._add_key(pipe, tenant, new_key)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    @_guard
    async def tenant_for_key(self, api_key: str) -> str | None:
        raw = await self.redis.get(self.keys.api_key(key_digest(api_key)))
        return raw.decode() if raw is not None else None

    # --------------------------------------------------------- event history

    @_guard
    async def append_events(self, events: Iterable[dict[str, Any]]) -> int:
        """Add events to their tenants' capped histories, each once (by event_id)."""
        keys: list[str] = []
        argv: list[Any] = [self.history_maxlen]
        for e in events:
            keys.extend((self.keys.seen(e["event_id"]), self.keys.events(e["tenant"])))
            argv.append(orjson.dumps(e))
        if not keys:
            return 0
        return int(await self._append_events(keys=keys, args=argv))

    @_guard
    async def history(self, tenant: str, after: str = "-", count: int = 1000) -> list[tuple[str, dict[str, Any]]]:
        start = after if after == "-" else f"({after}"
        got = await self.redis.xrange(self.keys.events(tenant), min=start, max="+", count=count)
        return [(i.decode(), orjson.loads(f[b"e"])) for i, f in got]

    @_guard
    async def last_event_id(self, tenant: str) -> str:
        got = await self.redis.xrevrange(self.keys.events(tenant), count=1)
        return got[0][0].decode() if got else "0-0"

    @_guard
    async def follow(
        self, after: Mapping[str, str], block_ms: int = 1000, count: int = 1000
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """Events after the given ids in these tenants' histories, as (tenant, id, event),
        waiting up to ``block_ms``: one blocking read however many tenants."""
        if not after:
            return []
        names = {self.keys.events(t): t for t in after}
        got = await self.redis.xread({k: after[t] for k, t in names.items()}, block=block_ms, count=count)
        return [
            (names[stream.decode()], i.decode(), orjson.loads(f[b"e"]))
            for stream, entries in got or []
            for i, f in entries
        ]

"""The herd in Redis: each farm's herd settings, its mobs (versioned, with If-Match and a quota;
a device in at most one mob of its farm) and its alert lists. Each write of settings or mobs
is announced on the change feed in its transaction (kinds ``herd`` and ``mob``); the alert
lists are kept by the worker's save (:meth:`fencex.store.devices.RedisDevices.pack_save`)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any, cast

import orjson
from redis.exceptions import WatchError

from fencex.errors import InAnotherMob, InvalidInput, LimitExceeded, NotFound, VersionConflict
from fencex.fence import DEFAULT_TENANT
from fencex.herd import DEFAULT_RULES, HerdRules
from fencex.mob import MobRecord
from fencex.store.connection import guard
from fencex.store.feed import RedisFeed

log = logging.getLogger("fencex.store")
RULE_FIELDS = tuple(f.name for f in dataclasses.fields(HerdRules))


def rules_to_json(rules: HerdRules) -> bytes:
    return orjson.dumps(dataclasses.asdict(rules))


def rules_from_json(tenant: str, raw: bytes | str) -> HerdRules:
    """A farm's stored settings; a field left out takes its default (a record from an older
    version). A record that cannot be read gives the defaults, logged: it stops no farm."""
    try:
        obj = orjson.loads(raw)
        return HerdRules(**{k: v for k, v in obj.items() if k in RULE_FIELDS})
    except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
        log.error("herd settings of farm %r are unreadable; the defaults apply: %s", tenant, exc)
        return DEFAULT_RULES


def decode_mobs(tenant: str, ids: list[str], raws: list[Any]) -> dict[str, MobRecord | None]:
    """Stored mobs by id: None where there is none or the record cannot be read (logged)."""
    out: dict[str, MobRecord | None] = {}
    for mid, raw in zip(ids, raws):
        try:
            out[mid] = MobRecord.from_json(raw) if raw is not None else None
        except InvalidInput as exc:
            log.error("stored mob %r of farm %r is unreadable and left out: %s", mid, tenant, exc)
            out[mid] = None
    return out


def stored_version(raw: bytes | str) -> int:
    """The version of a stored mob record that no longer reads as a mob (0 if none can be found):
    enough to match an If-Match and to number its replacement."""
    try:
        version = orjson.loads(raw).get("version")
    except (orjson.JSONDecodeError, AttributeError):
        return 0
    return version if isinstance(version, int) and not isinstance(version, bool) and version > 0 else 0


class RedisHerd(RedisFeed):
    """Herd settings, mobs and alert lists, per farm."""

    # settings

    @guard
    async def get_herd_rules(self, tenant: str) -> HerdRules:
        """The farm's herd settings: stored, else the defaults."""
        raw = cast(bytes | None, await self.redis.hget(self.keys.herd(self.keys.group(tenant)), tenant))
        return rules_from_json(tenant, raw) if raw is not None else DEFAULT_RULES

    @guard
    async def put_herd_rules(self, tenant: str, rules: HerdRules) -> HerdRules:
        group = self.keys.group(tenant)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.herd(group), tenant, rules_to_json(rules))
            self._feed(pipe, group, "herd", "upsert", tenant, tenant, 1)
            await pipe.execute()
        return rules

    @guard
    async def herd_rules(self, groups: Sequence[str] | None = None) -> dict[str, HerdRules]:
        """Every farm's stored herd settings, or those of the farms of ``groups`` (farms with none have the
        defaults)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for group in self.keys.all_groups if groups is None else groups:
                pipe.hgetall(self.keys.herd(group))
            got = cast(list[dict[bytes, bytes]], await pipe.execute())
        return {k.decode(): rules_from_json(k.decode(), v) for raw in got for k, v in raw.items()}

    # mobs

    @guard
    async def get_mob(self, tenant: str, mob_id: str) -> MobRecord:
        raw = await self.redis.get(self.keys.mob(tenant, mob_id))
        if raw is None:
            raise NotFound(f"no mob {mob_id!r}")
        return MobRecord.from_json(raw)

    @guard
    async def mobs_by_id(self, tenant: str, ids: list[str]) -> dict[str, MobRecord | None]:
        """The farm's mobs with these ids (None where there is none, or it is unreadable)."""
        raws = await self.redis.mget([self.keys.mob(tenant, i) for i in ids]) if ids else []
        return decode_mobs(tenant, ids, raws)

    @guard
    async def mobs(self, tenant: str | None = None, *, groups: Sequence[str] | None = None) -> list[MobRecord]:
        """A farm's mobs by id, or every farm's (of ``groups``' farms only, if given) by farm, then id.
        Unreadable records are left out."""
        if tenant is None:
            async with self.redis.pipeline(transaction=False) as pipe:
                for group in self.keys.all_groups if groups is None else groups:
                    pipe.smembers(self.keys.mob_farms(group))
                farms = cast(list[set[bytes]], await pipe.execute())
            tenants = sorted(m.decode() for some in farms for m in some)
        else:
            tenants = [tenant]
        out: list[MobRecord] = []
        # farms a thousand at a time, each step one pipeline: their id sets, then their records (one round
        # trip per farm made a worker's start cost 2 round trips per farm with mobs: 33 s at 100,000 farms)
        for start in range(0, len(tenants), 1000):
            some = tenants[start : start + 1000]
            async with self.redis.pipeline(transaction=False) as pipe:
                for t in some:
                    pipe.smembers(self.keys.tenant_mobs(t))
                sets = cast(list[set[bytes]], await pipe.execute())
            named = [(t, sorted(m.decode() for m in members)) for t, members in zip(some, sets)]
            keys = [self.keys.mob(t, i) for t, ids in named for i in ids]
            got_all: list[bytes | None] = []
            for k in range(0, len(keys), 10_000):  # a farm may hold 1,000 mobs: at most 10,000 reads a pipeline
                async with self.redis.pipeline(transaction=False) as pipe:
                    for key in keys[k : k + 10_000]:
                        pipe.get(key)
                    got_all.extend(cast(list[bytes | None], await pipe.execute()))
            raws = iter(got_all)
            for t, ids in named:
                got = [next(raws) for _ in ids]
                out.extend(m for m in decode_mobs(t, ids, got).values() if m is not None)
        return out

    @guard
    async def mob_of_device(self, tenant: str, device_id: str) -> str | None:
        """The id of the farm's mob the device is in (None: none, the farm's default mob)."""
        raw = cast(bytes | None, await self.redis.hget(self.keys.mob_of(tenant), device_id))
        return raw.decode() if raw is not None else None

    @guard
    async def put_mob(
        self,
        mob: MobRecord,
        if_match: int | None = None,
        create_only: bool = False,
        max_per_tenant: int | None = None,
    ) -> MobRecord:
        """Create or replace a mob, its version raised by one, in one transaction with the
        checks: ``if_match`` (VersionConflict), ``create_only`` (VersionConflict if it exists),
        ``max_per_tenant`` (LimitExceeded), the fences are the farm's and the devices registered
        to it (InvalidInput naming the others), no device in another mob of the farm (InAnotherMob).
        """
        t = mob.tenant
        key, ids, members = self.keys.mob(t, mob.id), self.keys.tenant_mobs(t), self.keys.mob_of(t)
        group = self.keys.group(t)
        # the devices' registrations are other slots': read (not watched) just before the transaction
        watched = (key, ids, members, self.keys.tenant_fences(t))
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(*watched)
                    raw = await pipe.get(key)
                    found = await self._stored_mob(pipe, t, mob.id, raw)
                    old_version = found[0] if found else None
                    if create_only and found is not None:
                        raise VersionConflict(None, old_version, "mob")
                    if if_match is not None and old_version != if_match:
                        raise VersionConflict(if_match, old_version, "mob")
                    if found is None and max_per_tenant is not None:
                        held = int(await pipe.scard(ids))
                        if held >= max_per_tenant:
                            raise LimitExceeded(
                                f"the farm holds {held} mobs, its limit is {max_per_tenant}", "max_mobs_per_tenant"
                            )
                    await self._check_members(pipe, mob)
                    stored = mob.model_copy(update={"version": (old_version or 0) + 1, "updated_at": time.time()})
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves Pipeline.multi unannotated
                    pipe.set(key, stored.to_json())
                    pipe.sadd(ids, mob.id)
                    pipe.sadd(self.keys.mob_farms(group), t)
                    gone = [d for d in (found[1] if found else []) if d not in set(mob.devices)]
                    if gone:
                        pipe.hdel(members, *gone)
                    if mob.devices:
                        pipe.hset(members, mapping=dict.fromkeys(mob.devices, mob.id))
                    self._feed(pipe, group, "mob", "upsert", mob.id, t, stored.version)
                    await pipe.execute()
                    return stored
                except WatchError:
                    continue

    async def _check_members(self, pipe: Any, mob: MobRecord) -> None:
        t = mob.tenant
        if mob.fences:
            have = await pipe.smismember(self.keys.tenant_fences(t), mob.fences)
            unknown = [f for f, ok in zip(mob.fences, have) if not ok]
            if unknown:
                raise InvalidInput(f"no fence {', '.join(repr(f) for f in unknown)} on this farm")
        if not mob.devices:
            return
        owners = await self._by_group(self.keys.devices, mob.devices)
        held = {d: o.decode() for d, o in owners.items() if o is not None}
        foreign = [d for d in mob.devices if held.get(d, DEFAULT_TENANT) != t]
        if foreign:
            raise InvalidInput(
                f"{', '.join(repr(d) for d in foreign)} not registered to this farm: "
                "claim them first (PUT /devices/{device_id})"
            )
        others: dict[str, list[str]] = {}
        for d, m in zip(mob.devices, cast(list[bytes | None], await pipe.hmget(self.keys.mob_of(t), mob.devices))):
            if m is not None and m.decode() != mob.id:
                others.setdefault(m.decode(), []).append(d)
        if others:
            first = min(others)
            raise InAnotherMob(first, others[first])

    @guard
    async def delete_mob(self, tenant: str, mob_id: str, if_match: int | None = None) -> int:
        """Delete a mob (even one whose stored record no longer reads: the farm can always clear
        it); its devices go back to the farm's default mob. Returns the deleted version."""
        key, members = self.keys.mob(tenant, mob_id), self.keys.mob_of(tenant)
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key, members)
                    raw = await pipe.get(key)
                    found = await self._stored_mob(pipe, tenant, mob_id, raw)
                    if found is None:
                        raise NotFound(f"no mob {mob_id!r}")
                    version, mine = found
                    if if_match is not None and if_match != version:
                        raise VersionConflict(if_match, version, "mob")
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves Pipeline.multi unannotated
                    pipe.delete(key)
                    pipe.srem(self.keys.tenant_mobs(tenant), mob_id)
                    if mine:
                        pipe.hdel(members, *mine)
                    self._feed(pipe, self.keys.group(tenant), "mob", "delete", mob_id, tenant, version)
                    await pipe.execute()
                    return version
                except WatchError:
                    continue

    async def _stored_mob(self, pipe: Any, tenant: str, mob_id: str, raw: Any) -> tuple[int, list[str]] | None:
        """(version, the devices the farm's device -> mob table gives this mob) of a stored mob, or
        None if there is none. A record that no longer reads as a mob (written by a broken or older
        version) is still there: its version from its JSON if it has one, its devices from the
        table (scanned: a rare repair), so the farm can replace or delete it."""
        if raw is None:
            return None
        try:
            old = MobRecord.from_json(raw)
        except InvalidInput as exc:
            log.warning("stored mob %r of farm %r unreadable (%s): replaced or deleted as asked", mob_id, tenant, exc)
            table = cast(dict[bytes, bytes], await pipe.hgetall(self.keys.mob_of(tenant)))
            return stored_version(raw), sorted(d.decode() for d, m in table.items() if m.decode() == mob_id)
        held = cast(list[bytes | None], await pipe.hmget(self.keys.mob_of(tenant), old.devices)) if old.devices else []
        return old.version, [d for d, m in zip(old.devices, held) if m is not None and m.decode() == mob_id]

    # alert lists

    @guard
    async def alert_counts(self, tenant: str, kinds: tuple[str, ...]) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for kind in kinds:
                pipe.zcard(self.keys.alerts(tenant, kind))
            counts = await pipe.execute()
        return {k: int(n) for k, n in zip(kinds, counts)}

    @guard
    async def alerts(
        self, tenant: str, kind: str, limit: int, after: tuple[int, str] | None = None
    ) -> list[tuple[str, int]]:
        """Up to ``limit`` of the farm's devices in alert list ``kind`` as (device, since ms), oldest
        first (then by device id), after ``after`` (the last (since, device) of the page before):
        a device that leaves the list between pages moves no other device to another page."""
        key = self.keys.alerts(tenant, kind)
        low: float | str = "-inf" if after is None else after[0]
        out: list[tuple[str, int]] = []
        offset = 0
        while len(out) < limit:
            got = cast(
                list[tuple[bytes, float]],
                await self.redis.zrange(key, low, "+inf", byscore=True, offset=offset, num=limit + 1, withscores=True),
            )
            for member, score in got:
                device, since = member.decode(), int(score)
                if after is not None and (since, device) <= after:
                    continue  # the page before's ties
                out.append((device, since))
            if len(got) < limit + 1:
                break
            offset += len(got)
        return out[:limit]

"""Keep a fence index current by following the store's change feed.

Used by the processor workers and the API alike: load every fence once, then
apply each created, changed or deleted fence (and device registration) as it
arrives, building a new immutable :class:`FenceIndex` off the event loop and
handing it over whole. The index is sharded by farm: a change builds the shards of
the farms whose fences changed only, the new index sharing every other farm's with
the one before (:meth:`FenceIndex.with_farms`). Changes that arrive together are
applied in one rebuild.

Device registrations (device id -> farm, :attr:`FenceFollower.tenants`) are held only by a follower that
asks for them (the worker: its pipeline looks up each fix's farm, :meth:`FenceFollower.mob_of` too); the
API reads none and holds none (0.09 KB a device at 10,000,000 devices is 0.9 GB a process). Each farm id
is held once (interned), not once a device.

The feeds (one per group of farms and devices, ``fencex.store.feed``) are capped: a follower that lags
past a feed's cap (or a store wiped under it) would miss changes, so after each read it asks which
feeds lost entries after its position and reloads those groups only (their farms' fences, mobs and herd
settings, their devices' registrations: :meth:`FenceFollower.reload_groups`); every group, a full
reload, when all did (a store wiped, a position for another number of feeds).

The fences are kept as light records (``Fence.from_json(light=True)``): each one's geometry built
once, straight from the stored JSON, and its GeoJSON coordinates not kept (the index holds the
geometry; nothing a worker or the API asks of the follower's fences needs the coordinates). They are
read a page at a time, so a worker never holds every fence's JSON at once.

A fence that cannot be read or built is quarantined, never fatal: it is left out of
the index and listed in :attr:`FenceFollower.quarantined` (fence id -> tenant,
version, reason) for ``/readyz`` and its farm.

The herd follows the same feed: each farm's herd settings (:meth:`FenceFollower.rules_of`)
and its mobs, resolved against the current index into :attr:`FenceFollower.mobs` (farm ->
device id -> :class:`~fencex.herd.Mob`: the mob's fence ids that are the farm's pastures and exclusion
zones now; a device counts only in a mob of the farm it is registered to). They are resolved
again, farm by farm, whenever the farm's fences or mobs change. Without a fence change, the index is not
handed over again: ``on_mobs`` is told which farms' mobs changed (the worker re-evaluates the
escapes and returns of those farms' devices only) and ``on_rules`` which farms' settings changed
(the worker re-times those farms' devices' silences only).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from typing import Protocol

from fencex.fence import DEFAULT_TENANT, Fence
from fencex.herd import DEFAULT_RULES, HerdRules, Mob
from fencex.index import FenceIndex, Quarantined
from fencex.indexshard import farm_of
from fencex.mob import MobRecord, resolve
from fencex.retrying import retrying
from fencex.store.base import Change

log = logging.getLogger("fencex.follower")


class FeedStore(Protocol):
    """What the follower needs of the store (``fencex.store.redis.RedisStore`` has it)."""

    def feed_groups(self) -> list[str]: ...

    def feed_group(self, name: str) -> str: ...

    async def last_change_id(self, after: str | None = None, groups: Collection[str] | None = None) -> str: ...

    async def changes(self, after: str, block_ms: int = ..., count: int = ...) -> list[Change]: ...

    async def trimmed_feeds(self, after: str) -> set[str]: ...

    def fence_pages(
        self,
        tenant: str | None = None,
        *,
        groups: Sequence[str] | None = None,
        unreadable: dict[str, str] | None = None,
        light: bool = ...,
    ) -> AsyncIterator[list[Fence]]: ...

    async def fences_by_id(
        self, ids: list[str], *, unreadable: dict[str, str] | None = None, light: bool = ...
    ) -> dict[str, Fence | None]: ...

    async def device_tenants(self, groups: Sequence[str] | None = None) -> dict[str, str]: ...

    async def herd_rules(self, groups: Sequence[str] | None = None) -> dict[str, HerdRules]: ...

    async def get_herd_rules(self, tenant: str) -> HerdRules: ...

    async def mobs(self, tenant: str | None = None, *, groups: Sequence[str] | None = None) -> list[MobRecord]: ...

    async def mobs_by_id(self, tenant: str, ids: list[str]) -> dict[str, MobRecord | None]: ...


class FenceFollower:
    def __init__(
        self,
        store: FeedStore,
        on_index: Callable[[FenceIndex], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_rules: Callable[[set[str]], None] | None = None,
        on_mobs: Callable[[set[str]], None] | None = None,
        registrations: bool = True,
    ) -> None:
        self.store = store
        self.on_index = on_index
        self.on_error = on_error
        self.on_rules = on_rules  # told the farms whose herd settings changed (no fence did)
        self.on_mobs = on_mobs  # told the farms whose mobs changed (no fence did)
        self.fences: dict[str, Fence] = {}
        self.by_farm: dict[str, dict[str, Fence]] = {}  # farm -> its fences by id (the index is built by farm)
        # device id -> tenant (its farm strings shared: interned), kept only by a follower that asks for
        # them (``registrations``: the worker's pipeline looks up each fix's farm; the API reads none)
        self.registrations = registrations
        self.tenants: dict[str, str] = {}
        self.index = FenceIndex([])
        self.applied = 0  # change-feed entries applied
        self.reloads = 0  # reloads (of every group, or of some) because a feed had lost changes past this follower
        self.groups_reloaded = 0  # groups reloaded so (a full reload counts every group)
        self.unreadable: dict[str, Quarantined] = {}  # stored records that cannot be read at all
        self._unreadable_in: dict[str, str] = {}  # unreadable fence id -> its group
        self.rules: dict[str, HerdRules] = {}  # tenant -> its stored herd settings
        self.mobs: dict[str, dict[str, Mob]] = {}  # farm -> device id -> its mob, resolved against the index
        self.mob_records: dict[tuple[str, str], MobRecord] = {}  # (tenant, mob id) -> the stored mob
        self._after = "0-0"

    def rules_of(self, tenant: str) -> HerdRules:
        """The farm's herd rules: its stored settings, else the defaults."""
        return self.rules.get(tenant, DEFAULT_RULES)

    def mob_of(self, device_id: str) -> Mob | None:
        """The device's mob (None: the farm's default mob, :meth:`FenceIndex.mob`)."""
        if not self.mobs:
            return None  # no farm has mobs (the hot path asks for every fix)
        farm = self.mobs.get(self.tenants.get(device_id, DEFAULT_TENANT))
        return farm.get(device_id) if farm is not None else None  # a mob of the farm the device is registered to

    @property
    def quarantined(self) -> dict[str, Quarantined]:
        """Fences left out of the index: unreadable records and fences that do not build."""
        return {**self.unreadable, **self.index.quarantined}

    def quarantined_of(self, tenant: str) -> dict[str, str]:
        """The tenant's quarantined fences: fence id -> reason."""
        return {fid: q.reason for fid, q in self.quarantined.items() if q.tenant == tenant}

    async def load(self) -> FenceIndex:
        """Read every fence and device registration; the feed is followed from here on."""
        self._after = await self.store.last_change_id()  # first: no change slips between
        self.fences, self.by_farm, self.unreadable, self._unreadable_in = {}, {}, {}, {}
        for group in self.store.feed_groups():
            await self._read_fences(group)
        self.tenants = await self.store.device_tenants() if self.registrations else {}
        self.rules = await self.store.herd_rules()
        self.mob_records = {(m.tenant, m.id): m for m in await self.store.mobs()}
        self.index = await asyncio.to_thread(FenceIndex, list(self.fences.values()), self.applied, self.index)
        self._resolve()
        return self.index

    async def _read_fences(self, group: str) -> None:
        """The fences of the group's farms into :attr:`fences` and :attr:`by_farm` (a page at a time: no
        page's JSON kept), its unreadable records into :attr:`unreadable`."""
        unreadable: dict[str, str] = {}
        async for page in self.store.fence_pages(groups=[group], unreadable=unreadable, light=True):
            for f in page:
                self.fences[f.id] = f
                self.by_farm.setdefault(farm_of(f), {})[f.id] = f
        for fid, reason in unreadable.items():
            self.unreadable[fid], self._unreadable_in[fid] = Quarantined("", 0, reason), group

    async def reload_groups(self, groups: set[str]) -> FenceIndex:
        """Read the fences, mobs and herd settings of the groups' farms and the registrations of the groups'
        devices again (their feeds lost changes past this follower), keeping every other group's: the index is
        built again for those farms only (:meth:`FenceIndex.with_farms`), not for the country."""
        self._after = await self.store.last_change_id(self._after, groups)  # first: no change slips between
        ours = self.store.feed_group
        farms = {farm for farm in self.by_farm if ours(farm) in groups}
        for farm in farms:
            for fid in self.by_farm.pop(farm):
                self.fences.pop(fid, None)
        for fid, q in list(self.unreadable.items()):  # read from a group's set, or a farm's change
            if self._unreadable_in.get(fid) in groups or (q.tenant and ours(q.tenant) in groups):
                del self.unreadable[fid]
                self._unreadable_in.pop(fid, None)
        for group in sorted(groups):
            await self._read_fences(group)
        farms |= {farm for farm in self.by_farm if ours(farm) in groups}
        some = sorted(groups)
        tenants = await self.store.device_tenants(some) if self.registrations else {}
        moved = {self.tenants[d] for d in self.tenants if ours(d) in groups and tenants.get(d) != self.tenants[d]}
        moved |= {t for d, t in tenants.items() if self.tenants.get(d) != t}  # registrations changed: their farms
        self.tenants = {d: t for d, t in self.tenants.items() if ours(d) not in groups} | tenants
        rules = await self.store.herd_rules(some)
        herd = {
            t for t in set(rules) | {t for t in self.rules if ours(t) in groups} if rules.get(t) != self.rules.get(t)
        }
        self.rules = {t: r for t, r in self.rules.items() if ours(t) not in groups} | rules
        mob_farms = {t for t, _ in self.mob_records if ours(t) in groups}
        self.mob_records = {k: m for k, m in self.mob_records.items() if ours(k[0]) not in groups}
        for m in await self.store.mobs(groups=some):
            self.mob_records[(m.tenant, m.id)] = m
            mob_farms.add(m.tenant)
        changed = {farm: list(self.by_farm.get(farm, {}).values()) for farm in farms}
        self.index = await asyncio.to_thread(self.index.with_farms, changed, self.applied)
        self._resolve(farms | mob_farms | moved)
        if (mobs := (mob_farms | moved) - farms) and self.on_mobs is not None:
            self.on_mobs(mobs)
        if herd and self.on_rules is not None:
            self.on_rules(herd)
        return self.index

    def _resolve(self, farms: set[str] | None = None) -> None:
        """Each device in a mob of the farm -> that mob against the current index, for ``farms``
        (None: every farm). Kept per farm, so that one farm's change costs that farm's mobs, and a
        device counts only in a mob of the farm it is registered to (:meth:`mob_of` looks there).
        A mob that names no fence maps its devices to the farm's default mob's fences under its own id
        (grazing is kept per mob)."""
        if farms is None:
            self.mobs = {}
            records = list(self.mob_records.values())
        else:
            for farm in farms:
                self.mobs.pop(farm, None)
            records = [r for (tenant, _), r in self.mob_records.items() if tenant in farms]
        for record in records:
            shard = self.index.farm(record.tenant)
            mob = resolve(record, shard.by_id, shard.mob)  # no fence named: the default's, by its id
            if mob is not None:
                self.mobs.setdefault(record.tenant, {}).update(dict.fromkeys(record.devices, mob))

    async def follow(self, block_ms: int = 250) -> None:
        """Apply changes until cancelled; while the store does not answer, retry with backoff."""
        while True:
            async for attempt in retrying("following the fence change feed", on_error=self.on_error, logger=log):
                with attempt:
                    await self.step(block_ms)

    async def step(self, block_ms: int = 250) -> bool:
        """Apply what the feed holds now (waiting up to ``block_ms``); True if the index, a farm's
        herd settings or mobs changed (handed over, or told to ``on_rules`` / ``on_mobs``)."""
        after = self._after
        changes = await self.store.changes(after, block_ms=block_ms)
        if trimmed := await self.store.trimmed_feeds(after):
            self.reloads += 1
            if trimmed >= set(self.store.feed_groups()):
                log.warning(
                    "change feeds: changes after %s were trimmed before this follower read them; reloading", after
                )
                await self.load()
                self.groups_reloaded += len(trimmed)
                self._handover(len(self.fences), "reloaded in full")
                return True
            # one group's feed trimmed (its farms changed more than the feed holds while this follower lagged):
            # that group is reloaded, not the country; the other feeds' changes are then read again and applied
            log.warning(
                "change feeds of %s: changes were trimmed before this follower read them; reloading them",
                sorted(trimmed),
            )
            await self.reload_groups(trimmed)
            self.groups_reloaded += len(trimmed)
            self._handover(len(self.index.changed or ()), f"farms of {len(trimmed)} groups reloaded")
            await self.step(1)  # (1 ms: XREAD BLOCK 0 waits for ever)
            return True
        if not changes:
            return False
        fence_ids: dict[str, str] = {}  # fence id -> tenant
        mob_ids: dict[str, set[str]] = {}  # tenant -> its changed mob ids
        herd: set[str] = set()  # farms whose herd settings changed
        for c in changes:
            if c.kind == "device":
                if self.registrations:
                    self.tenants[c.key] = sys.intern(c.tenant)  # one string a farm, as loaded
            elif c.kind == "herd":
                herd.add(c.tenant)
            elif c.kind == "mob":
                mob_ids.setdefault(c.tenant, set()).add(c.key)
            elif c.kind == "fence":
                fence_ids[c.key] = c.tenant
            else:
                log.warning("change feed: unknown kind %r of %r ignored", c.kind, c.key)
        for tenant in sorted(herd):
            self.rules[tenant] = await self.store.get_herd_rules(tenant)
        for tenant, ids in sorted(mob_ids.items()):
            for mid, record in (await self.store.mobs_by_id(tenant, sorted(ids))).items():
                if record is None:
                    self.mob_records.pop((tenant, mid), None)
                else:
                    self.mob_records[(tenant, mid)] = record
        farms: set[str] = set()  # farms whose fences changed: their shards of the index are built again
        if fence_ids:
            unreadable: dict[str, str] = {}
            got = await self.store.fences_by_id(sorted(fence_ids), unreadable=unreadable, light=True)
            for fid, fence in got.items():
                self.unreadable.pop(fid, None)
                self._unreadable_in.pop(fid, None)
                if (old := self.fences.pop(fid, None)) is not None:
                    farms.add(farm_of(old))
                    self.by_farm[farm_of(old)].pop(fid, None)
                if fence is not None:
                    self.fences[fid] = fence
                    self.by_farm.setdefault(farm_of(fence), {})[fid] = fence
                    farms.add(farm_of(fence))
            for fid, reason in unreadable.items():
                self.unreadable[fid] = Quarantined(fence_ids[fid], 0, reason)
            for farm in farms:
                if not self.by_farm.get(farm, True):
                    del self.by_farm[farm]
        self._after = changes[-1].id
        self.applied += len(changes)
        if not fence_ids:
            if mob_ids:
                self._resolve(set(mob_ids))  # a registration needs none: mob_of looks in the device's farm
            if not mob_ids and not herd:
                return False
            # the index is kept: the worker re-evaluates escapes (mobs) and re-times silences (settings)
            # of the farms named only, not of every farm it holds
            log.info("herd: %d farms' mobs, %d farms' settings changed", len(mob_ids), len(herd))
            if mob_ids and self.on_mobs is not None:
                self.on_mobs(set(mob_ids))
            if herd and self.on_rules is not None:
                self.on_rules(herd)
            return True
        changed = {farm: list(self.by_farm.get(farm, {}).values()) for farm in farms}
        self.index = await asyncio.to_thread(self.index.with_farms, changed, self.applied)
        self._resolve(farms | set(fence_ids.values()) | set(mob_ids))
        # the worker re-evaluates the farms the index names (those whose fences changed): farms whose
        # mobs or settings changed in the same read, and no fence of theirs, are told as without one
        if (mobs_only := set(mob_ids) - farms) and self.on_mobs is not None:
            self.on_mobs(mobs_only)
        if herd and self.on_rules is not None:
            self.on_rules(herd)
        self._handover(len(fence_ids), "changed")
        return True

    def _handover(self, changed: int, how: str) -> None:
        log.info(
            "fence index rebuilt: %d fences (%d %s, %d quarantined) in %.3f s",
            len(self.index),
            changed,
            how,
            len(self.quarantined),
            self.index.build_seconds,
        )
        if self.on_index is not None:
            self.on_index(self.index)

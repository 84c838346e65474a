"""Fences in Redis: read, create or replace (versioned, with If-Match and a per-farm quota),
delete; each write announced on the change feed in its transaction.

A fence is its farm's (its farm's group's slot: the fence, the group's and the farm's sets of ids and
the group's feed change in one transaction). Fence ids are unique across farms: an id is claimed for
its farm (``{P}:fence-id:{id}``, a slot of its own) before the farm's transaction writes it, and given
back when no fence is under it: after a delete, after a put refused, and, taken back by another farm's
claim, after a put cut short (its process died between claim and transaction).

A claim is given back only while its farm has no fence under the id and no put of it under way: each put
first counts itself in ``{P}:{g}:fence-put:{t}:{id}`` (the farm's slot, with a lease of
:data:`CLAIM_LEASE_S`: a put that died is forgotten then), then claims. The release WATCHes the claim before
it reads the fence and the count, so a put that counts itself after that read claims after the WATCH
and the release starts over. (Without the count, a delete racing a put of the same id gave the claim back
between the put's claim and its transaction: the fence was stored with no claim, the followers, which
find a changed fence through its claim, dropped it, and another farm could take the id.)"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, cast

from redis.exceptions import RedisError, WatchError

from fencex.errors import IdTaken, LimitExceeded, NotFound, VersionConflict
from fencex.fence import Fence
from fencex.store.base import decode_fences
from fencex.store.connection import guard
from fencex.store.feed import RedisFeed

# Claim a fence id for a farm: {the farm holding it now}. Rewriting the claim of its own farm touches
# the key, so that a release (which WATCHes it) made meanwhile starts over and sees the fence.
CLAIM_ID = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return held end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""
# A put of a fence id is over (done or refused): one fewer under way; the count goes when none is.
PUT_DONE = """
local n = redis.call('DECR', KEYS[1])
if n <= 0 then redis.call('DEL', KEYS[1]) end
return n
"""
CLAIM_LEASE_S = 60  # a put under way keeps its ids' claims this long at most (one that died: no longer)

PAGE = 5000  # fence records read and decoded at once


class RedisFences(RedisFeed):
    """The fences, by id and by tenant."""

    @guard
    async def get_fence(self, tenant: str, fid: str) -> Fence:
        raw = await self.redis.get(self.keys.fence(tenant, fid))
        if raw is None:
            raise NotFound(f"no fence {fid!r}")
        fence = Fence.from_json(raw)
        if fence.tenant != tenant:
            raise NotFound(f"no fence {fid!r}")  # another farm's fence does not exist for this one
        return fence

    @guard
    async def fences(
        self, tenant: str | None = None, *, unreadable: dict[str, str] | None = None, light: bool = False
    ) -> list[Fence]:
        """All fences, or a tenant's. A stored record that cannot be read is left out (and
        added to ``unreadable``: fence id -> reason), so one broken record stops nobody.
        ``light``: records without their coordinates, their geometries built (``Fence.light``)."""
        out: list[Fence] = []
        async for page in self.fence_pages(tenant, unreadable=unreadable, light=light):
            out.extend(page)
        if tenant is None:
            out.sort(key=lambda f: f.id)
        return out

    async def fence_pages(
        self,
        tenant: str | None = None,
        *,
        groups: Sequence[str] | None = None,
        unreadable: dict[str, str] | None = None,
        light: bool = False,
        page: int = PAGE,
    ) -> AsyncIterator[list[Fence]]:
        """:meth:`fences` a page at a time (up to ``page`` records read, decoded and dropped at once: a
        worker loading a million fences never holds their JSON all at once); in no particular order.
        ``groups``: the fences of these groups' farms only (a follower reloading them)."""
        if tenant is not None:
            groups = [self.keys.group(tenant)]
        elif groups is None:
            groups = self.keys.all_groups
        groups = list(groups)
        for group, ids in zip(groups, await self._fence_sets(groups, tenant)):
            for start in range(0, len(ids), page):
                chunk = ids[start : start + page]
                raws = await self._records(group, chunk)
                yield [f for f in decode_fences(chunk, raws, unreadable, light).values() if f is not None]

    @guard
    async def _fence_sets(self, groups: list[str], tenant: str | None) -> list[list[str]]:
        """Each group's fence ids (or the tenant's, in its group), sorted."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for group in groups:
                pipe.smembers(self.keys.fences(group) if tenant is None else self.keys.tenant_fences(tenant))
            sets = cast(list[set[bytes]], await pipe.execute())
        return [sorted(m.decode() for m in members) for members in sets]

    @guard
    async def _records(self, group: str, ids: list[str]) -> list[bytes | None]:
        """The group's fence records of these ids (one slot: one MGET)."""
        return cast(list[bytes | None], await self.redis.mget([self.keys.fence_in(group, i) for i in ids]))

    @guard
    async def fence_ids(self, tenant: str) -> list[str]:
        """A tenant's fence ids, sorted: what a page or a count needs, without reading the fences."""
        return sorted(m.decode() for m in cast(set[bytes], await self.redis.smembers(self.keys.tenant_fences(tenant))))

    @guard
    async def fences_by_id(
        self,
        ids: list[str],
        *,
        tenant: str | None = None,
        unreadable: dict[str, str] | None = None,
        light: bool = False,
    ) -> dict[str, Fence | None]:
        """The fences with these ids (None where deleted or unreadable; the unreadable ones are also
        added to ``unreadable``: fence id -> reason): ``tenant``'s (one read), or whatever their farm
        (each id's farm is looked up first). ``light``: as :meth:`fences`'."""
        if not ids:
            return {}
        if tenant is not None:
            raws = await self.redis.mget([self.keys.fence(tenant, i) for i in ids])
            return decode_fences(ids, raws, unreadable, light)
        async with self.redis.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.get(self.keys.fence_id(i))
            holders = cast(list[bytes | None], await pipe.execute())
        async with self.redis.pipeline(transaction=False) as pipe:
            for i, holder in zip(ids, holders):
                if holder is not None:
                    pipe.get(self.keys.fence(holder.decode(), i))
            found = iter(cast(list[bytes | None], await pipe.execute()))
        return decode_fences(ids, [next(found) if h is not None else None for h in holders], unreadable, light)

    @guard
    async def put_fences(
        self,
        fences: Iterable[Fence],
        if_match: Mapping[str, int] | None = None,
        create_only: bool = False,
        max_per_tenant: int | None = None,
    ) -> list[Fence]:
        """Create or replace fences atomically (all or none of a farm group's: one call is one farm's,
        as the API makes it), each with its version raised by one.

        ``if_match``: fence id -> the version the caller last saw (HTTP If-Match); a
        mismatch raises VersionConflict and nothing is written. A fence id owned by
        another tenant raises IdTaken. ``max_per_tenant``: a tenant that would hold more
        fences than this gets LimitExceeded, checked in the same transaction as the write.
        """
        fences = list(fences)
        await self._count_puts(fences)
        try:
            await self._claim_ids(fences)
            by_group: dict[str, list[Fence]] = {}
            for f in fences:
                by_group.setdefault(self.keys.group(f.tenant), []).append(f)
            stored: list[Fence] = []
            for group, some in by_group.items():
                stored.extend(await self._put_group(group, some, if_match, create_only, max_per_tenant))
        except Exception:
            # refused (or cut): the ids it claimed and holds no fence under go back (a put of the farm's
            # still under way keeps them); if Redis is gone meanwhile, the lease lets them go later
            with contextlib.suppress(RedisError, OSError):
                await self._puts_done(fences)
                for f in fences:
                    await self._release_id(f.tenant, f.id)
            raise
        with contextlib.suppress(RedisError, OSError):  # the fences are written: their claims are kept anyway
            await self._puts_done(fences)
        return stored

    async def _count_puts(self, fences: list[Fence]) -> None:
        """Count this put in each id's puts under way (before any claim: see the module's docstring)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for f in fences:
                pipe.incr(self.keys.fence_put(f.tenant, f.id))
                pipe.expire(self.keys.fence_put(f.tenant, f.id), CLAIM_LEASE_S)
            await pipe.execute()

    async def _puts_done(self, fences: list[Fence]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for f in fences:
                pipe.eval(PUT_DONE, 1, self.keys.fence_put(f.tenant, f.id))
            await pipe.execute()

    async def _claim_ids(self, fences: list[Fence]) -> None:
        """Claim each fence's id for its farm: IdTaken if another farm holds one (a claim of a farm that holds
        no fence under the id and puts none is taken back first: a put of it was cut short)."""
        holders = await self._claim(fences)
        stale = [(f, h) for f, h in zip(fences, holders) if h != f.tenant]
        for f, holder in stale:
            if not await self._release_id(holder, f.id) or (await self._claim([f]))[0] != f.tenant:
                raise IdTaken(f"fence id {f.id!r} is taken: choose another")

    async def _claim(self, fences: list[Fence]) -> list[str]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for f in fences:
                pipe.eval(CLAIM_ID, 1, self.keys.fence_id(f.id), f.tenant)
            return [h.decode() for h in cast(list[bytes], await pipe.execute())]

    async def _put_group(
        self,
        group: str,
        fences: list[Fence],
        if_match: Mapping[str, int] | None,
        create_only: bool,
        max_per_tenant: int | None,
    ) -> list[Fence]:
        keys = [self.keys.fence(f.tenant, f.id) for f in fences]
        tenants = sorted({f.tenant for f in fences})
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(*keys, *(self.keys.tenant_fences(t) for t in tenants))
                    # read after the WATCH (on any connection: a change since makes the EXEC fail); a
                    # cluster's pipeline refuses MGET, the client sends it to the slot's node
                    current = await self.redis.mget(keys) if keys else []
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
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves Pipeline.multi unannotated
                    for fence in stored:
                        pipe.set(self.keys.fence(fence.tenant, fence.id), fence.to_json())
                        pipe.sadd(self.keys.fences(group), fence.id)
                        pipe.sadd(self.keys.tenant_fences(fence.tenant), fence.id)
                        self._feed(pipe, group, "fence", "upsert", fence.id, fence.tenant, fence.version)
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

    @guard
    async def delete_fence(self, tenant: str, fid: str, if_match: int | None = None) -> Fence:
        key, group = self.keys.fence(tenant, fid), self.keys.group(tenant)
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
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves Pipeline.multi unannotated
                    pipe.delete(key)
                    pipe.srem(self.keys.fences(group), fid)
                    pipe.srem(self.keys.tenant_fences(tenant), fid)
                    self._feed(pipe, group, "fence", "delete", fid, tenant, old.version)
                    await pipe.execute()
                    break
                except WatchError:
                    continue
        await self._release_id(tenant, fid)
        return old

    async def _release_id(self, tenant: str, fid: str) -> bool:
        """Give ``tenant``'s claim of a fence id back unless the farm holds a fence under it or puts one (a
        put counts itself before it claims, and claiming touches the claim: the WATCH sees a put that
        starts meanwhile, and this looks again). True if the id is free now."""
        claim = self.keys.fence_id(fid)
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(claim)
                    holder = cast(bytes | None, await pipe.get(claim))
                    if holder is None:
                        return True
                    if holder.decode() != tenant or await self._id_in_use(tenant, fid):
                        return False
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves Pipeline.multi unannotated
                    pipe.delete(claim)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    async def _id_in_use(self, tenant: str, fid: str) -> bool:
        """Whether the farm holds a fence under the id or has a put of it under way (one slot: the farm's)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(self.keys.fence(tenant, fid))
            pipe.get(self.keys.fence_put(tenant, fid))
            held, puts = await pipe.execute()
        return bool(held) or int(puts or 0) > 0

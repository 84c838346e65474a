"""Fences in Redis: read, create or replace (versioned, with If-Match and a per-farm quota),
delete; each write announced on the change feed in its transaction."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, cast

from redis.exceptions import WatchError

from fencex.errors import IdTaken, LimitExceeded, NotFound, VersionConflict
from fencex.fence import Fence
from fencex.store.base import decode_fences
from fencex.store.connection import guard
from fencex.store.feed import RedisFeed


class RedisFences(RedisFeed):
    """The fences, by id and by tenant."""

    @guard
    async def get_fence(self, tenant: str, fid: str) -> Fence:
        raw = await self.redis.get(self.keys.fence(fid))
        if raw is None:
            raise NotFound(f"no fence {fid!r}")
        fence = Fence.from_json(raw)
        if fence.tenant != tenant:
            raise NotFound(f"no fence {fid!r}")  # another farm's fence does not exist for this one
        return fence

    @guard
    async def fences(self, tenant: str | None = None, *, unreadable: dict[str, str] | None = None) -> list[Fence]:
        """All fences, or a tenant's. A stored record that cannot be read is left out (and
        added to ``unreadable``: fence id -> reason), so one broken record stops nobody."""
        key = self.keys.fences if tenant is None else self.keys.tenant_fences(tenant)
        ids = sorted(m.decode() for m in cast(set[bytes], await self.redis.smembers(key)))
        out: list[Fence] = []
        for start in range(0, len(ids), 5000):
            chunk = ids[start : start + 5000]
            raws = await self.redis.mget([self.keys.fence(i) for i in chunk])
            out.extend(f for f in decode_fences(chunk, raws, unreadable).values() if f is not None)
        return out

    @guard
    async def fence_ids(self, tenant: str) -> list[str]:
        """A tenant's fence ids, sorted: what a page or a count needs, without reading the fences."""
        return sorted(m.decode() for m in cast(set[bytes], await self.redis.smembers(self.keys.tenant_fences(tenant))))

    @guard
    async def fences_by_id(
        self, ids: list[str], *, unreadable: dict[str, str] | None = None
    ) -> dict[str, Fence | None]:
        """The fences with these ids, whatever their tenant (None where deleted or unreadable;
        the unreadable ones are also added to ``unreadable``: fence id -> reason)."""
        raws = await self.redis.mget([self.keys.fence(i) for i in ids]) if ids else []
        return decode_fences(ids, raws, unreadable)

    @guard
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
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves Pipeline.multi unannotated
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

    @guard
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
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves Pipeline.multi unannotated
                    pipe.delete(key)
                    pipe.srem(self.keys.fences, fid)
                    pipe.srem(self.keys.tenant_fences(tenant), fid)
                    self._feed(pipe, "fence", "delete", fid, tenant, old.version)
                    await pipe.execute()
                    return old
                except WatchError:
                    continue

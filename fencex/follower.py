"""Keep a fence index current by following the store's change feed.

Used by the processor workers and the API alike: load every fence once, then
apply each created, changed or deleted fence (and device registration) as it
arrives, building a new immutable :class:`FenceIndex` off the event loop and
handing it over whole. Changes that arrive together are applied in one rebuild.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from fencex.errors import StoreUnavailable
from fencex.fence import Fence
from fencex.index import FenceIndex
from fencex.store.redis import RedisStore

log = logging.getLogger("fencex.follower")


class FenceFollower:
    def __init__(
        self,
        store: RedisStore,
        on_index: Callable[[FenceIndex], None] | None = None,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.store = store
        self.on_index = on_index
        self.on_error = on_error
        self.fences: dict[str, Fence] = {}
        self.tenants: dict[str, str] = {}  # device id -> tenant
        self.index = FenceIndex([])
        self.applied = 0  # change-feed entries applied
        self._after = "0-0"

    async def load(self) -> FenceIndex:
        """Read every fence and device registration; the feed is followed from here on."""
        self._after = await self.store.last_change_id()  # first: no change slips between
        self.fences = {f.id: f for f in await self.store.fences()}
        self.tenants = await self.store.device_tenants()
        self.index = await asyncio.to_thread(FenceIndex, list(self.fences.values()), 0)
        return self.index

    async def follow(self, block_ms: int = 250) -> None:
        while True:
            try:
                await self.step(block_ms)
            except StoreUnavailable as exc:
                if self.on_error is not None:
                    self.on_error(exc)
                log.warning("change feed: %s; retrying in 1 s", exc)
                await asyncio.sleep(1.0)

    async def step(self, block_ms: int = 250) -> bool:
        """Apply what the feed holds now (waiting up to ``block_ms``); True if the index changed."""
        changes = await self.store.changes(self._after, block_ms=block_ms)
        if not changes:
            return False
        fence_ids: set[str] = set()
        for c in changes:
            if c.kind == "device":
                self.tenants[c.key] = c.tenant
            else:
                fence_ids.add(c.key)
        if fence_ids:
            for fid, fence in (await self.store.fences_by_id(sorted(fence_ids))).items():
                if fence is None:
                    self.fences.pop(fid, None)
                else:
                    self.fences[fid] = fence
        self._after = changes[-1].id
        self.applied += len(changes)
        if not fence_ids:
            return False
        self.index = await asyncio.to_thread(FenceIndex, list(self.fences.values()), self.applied, self.index)
        log.info(
            "fence index rebuilt: %d fences (%d changed) in %.3f s",
            len(self.index),
            len(fence_ids),
            self.index.build_seconds,
        )
        if self.on_index is not None:
            self.on_index(self.index)
        return True

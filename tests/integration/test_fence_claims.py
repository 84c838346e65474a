"""Fence ids are unique across farms: each is claimed for its farm (``{P}:fence-id:<id>``, a slot of its own)
before the farm's transaction writes the fence. Attacks on the claim by a careless or hostile farm (review15c):
a put racing a delete of the same id, puts refused after their ids were claimed, a put cut after its claim.
On one Redis and, with FENCEX_TEST_REDIS=cluster, on the 3-master cluster."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from fencex.errors import IdTaken, LimitExceeded, VersionConflict
from fencex.fence import Fence
from fencex.store import fences as fences_module
from fencex.store.redis import RedisStore
from tests.integration.test_api import FAR, SQUARE

pytestmark = pytest.mark.integration


def fence(fid: str, tenant: str, geometry: dict[str, Any] = SQUARE) -> Fence:
    return Fence(id=fid, tenant=tenant, geometry=geometry)


def on_store(redis_url: str, test: Callable[[RedisStore], Awaitable[None]]) -> None:
    async def go() -> None:
        store = RedisStore(redis_url, f"c{uuid.uuid4().hex[:8]}")
        await store.connect()
        try:
            await test(store)
        finally:
            await store.close()

    asyncio.run(go())


def paused_after_claim(store: RedisStore) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold ``store``'s puts between their id claims and their farm's transaction: (reached, go on)."""
    reached, go_on = asyncio.Event(), asyncio.Event()
    real = store._put_group

    async def put_group(*args: Any, **kwargs: Any) -> list[Fence]:
        reached.set()
        await go_on.wait()
        return await real(*args, **kwargs)

    store._put_group = put_group  # type: ignore[method-assign]
    return reached, go_on


def test_a_put_racing_a_delete_of_the_same_id_keeps_the_id_claimed(redis_url):
    """A farm deletes fence x while it puts x again (a careless client replacing a fence as delete + put): the
    delete gave the claim back after the put had claimed it and before the put's transaction wrote the fence.
    The fence was then stored with no claim: the followers (which find a changed fence's farm by its claim)
    dropped it from every worker's index although the API serves it, and another farm could take the id."""

    async def test(s: RedisStore) -> None:
        await s.put_fences([fence("x", "farm-a")])
        putter = RedisStore(s.url, s.keys.prefix)
        await putter.connect()
        try:
            reached, go_on = paused_after_claim(putter)
            put = asyncio.create_task(putter.put_fences([fence("x", "farm-a", FAR)]))
            await asyncio.wait_for(reached.wait(), 10)
            await s.delete_fence("farm-a", "x")  # its transaction and its release of the claim
            go_on.set()
            (stored,) = await put
        finally:
            await putter.close()
        assert (await s.get_fence("farm-a", "x")).version == stored.version
        seen = await s.fences_by_id(["x"])  # what a follower reads for the put's change
        assert seen["x"] is not None and seen["x"].tenant == "farm-a", "the stored fence is missing from the index"
        with pytest.raises(IdTaken):
            await s.put_fences([fence("x", "farm-b")])
        assert [f.tenant for f in await s.fences() if f.id == "x"] == ["farm-a"]

    on_store(redis_url, test)


def test_a_put_refused_after_its_claims_leaves_no_id_taken(redis_url):
    """A put refused after its ids were claimed (another farm's id among them; over the farm's quota; a stale
    If-Match) kept every id it had claimed: a farm at its quota could claim any number of ids, none listed,
    none deletable, and every other farm got 409 for them forever."""

    async def test(s: RedisStore) -> None:
        await s.put_fences([fence("theirs", "farm-b"), fence("full", "farm-a")])
        with pytest.raises(IdTaken):
            await s.put_fences([fence("squat-1", "farm-a"), fence("theirs", "farm-a")])
        with pytest.raises(LimitExceeded):
            await s.put_fences([fence("squat-2", "farm-a")], max_per_tenant=1)
        with pytest.raises(VersionConflict):
            await s.put_fences([fence("squat-3", "farm-a")], if_match={"squat-3": 4})
        got = await s.put_fences([fence(f"squat-{i}", "farm-c") for i in (1, 2, 3)])
        assert [f.tenant for f in got] == ["farm-c"] * 3
        # the farm's own ids still work for it: refused puts of its own fences keep them
        with pytest.raises(LimitExceeded):
            await s.put_fences([fence("full", "farm-a"), fence("more", "farm-a")], max_per_tenant=1)
        assert (await s.get_fence("farm-a", "full")).version == 1
        with pytest.raises(IdTaken):
            await s.put_fences([fence("full", "farm-c")])

    on_store(redis_url, test)


def test_a_claim_left_by_a_put_cut_short_is_taken_back(redis_url, monkeypatch):
    """A put cut between its claim and its transaction (the API process killed) left the id claimed by a
    farm that holds no fence under it: no other farm could ever use it. Once the put's lease is over, a claim
    by another farm takes it (a put still under way keeps it: the race test above)."""
    monkeypatch.setattr(fences_module, "CLAIM_LEASE_S", 1, raising=False)

    async def test(s: RedisStore) -> None:
        reached, _ = paused_after_claim(s)
        cut = asyncio.create_task(s.put_fences([fence("lost", "farm-a")]))
        await asyncio.wait_for(reached.wait(), 10)
        cut.cancel()  # as if the process died: nothing after the claim runs
        with pytest.raises(asyncio.CancelledError):
            await cut
        other = RedisStore(s.url, s.keys.prefix)
        await other.connect()
        try:
            with pytest.raises(IdTaken):  # still within the put's lease: it may be under way
                await other.put_fences([fence("lost", "farm-b")])
            await asyncio.sleep(1.5)
            (got,) = await other.put_fences([fence("lost", "farm-b")])
        finally:
            await other.close()
        assert got.tenant == "farm-b" and (await s.fences_by_id(["lost"]))["lost"] == got

    on_store(redis_url, test)

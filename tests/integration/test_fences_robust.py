"""Fences from Redis to the index, against the real redis-server (and broker, worker, API):
a broken stored fence stops nobody (issue 9 #1), a trimmed change feed is noticed (#7)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import orjson
import pytest

from fencex.fence import Fence
from fencex.follower import FenceFollower
from fencex.herd import HerdRules
from fencex.mob import MobRecord
from fencex.store.redis import RedisStore
from tests.integration.conftest import ADMIN_KEY, events_of, read, run, wait_api, wait_ready
from tests.unit.factory import known

pytestmark = pytest.mark.integration

SQUARE = {
    "type": "Polygon",
    "coordinates": [[[17.60, 59.80], [17.61, 59.80], [17.61, 59.81], [17.60, 59.81], [17.60, 59.80]]],
}
INSIDE = (17.605, 59.805)
OUTSIDE = (17.62, 59.805)
T0 = int(time.time() * 1000) - 60_000
# What an older fencex accepted and stored: a ring mixing [lon, lat] and [lon, lat, alt].
MIXED_3D = {
    "type": "Polygon",
    "coordinates": [[[17.60, 59.80], [17.61, 59.80, 12.0], [17.61, 59.81, "x"], [17.60, 59.81], [17.60, 59.80]]],
}


@pytest.fixture
def prefix(redis_url) -> Iterator[str]:
    yield f"fx{uuid.uuid4().hex[:8]}"


async def write_broken(store: RedisStore, tenant: str) -> None:
    """Broken fences written straight into Redis, as the API would have (fence key, sets, feed entry)."""
    records = {
        "old-3d": orjson.dumps({"id": "old-3d", "tenant": tenant, "version": 1, "geometry": MIXED_3D}),
        "garbage": b'{"id": "garbage", "geometry": [',
    }
    group = store.keys.group(tenant)
    for fid in records:
        await store.redis.set(store.keys.fence_id(fid), tenant)
    async with store.redis.pipeline(transaction=True) as pipe:  # one slot: the farm's group's
        for fid, raw in records.items():
            pipe.set(store.keys.fence(tenant, fid), raw)
            pipe.sadd(store.keys.fences(group), fid)
            pipe.sadd(store.keys.tenant_fences(tenant), fid)
            store._feed(pipe, group, "fence", "upsert", fid, tenant, 1)
        await pipe.execute()


def test_a_follower_reloads_when_the_feed_is_trimmed_past_it(redis_url, prefix):
    """Issue 9 #7: a lagging follower whose position was trimmed away reloads fences and registrations."""

    async def scenario() -> None:
        store = RedisStore(redis_url, prefix)
        await store.connect()
        try:
            await store.put_fences([Fence(id="north", tenant="farm", geometry=SQUARE)])
            follower = FenceFollower(store, on_index=(handed := []).append)
            await follower.load()
            assert [f.id for f in follower.index.containing("farm", *INSIDE)] == ["north"]
            # the follower lags: a new fence, a deletion and 20,000 registrations, then the cap trims
            await store.put_fences([Fence(id="missed", tenant="other", geometry=SQUARE)])
            await store.delete_fence("farm", "north")
            await store.register_devices({f"cow-{i}": "farm" for i in range(20_000)})
            for group in store.keys.all_groups:  # every group's feed
                await store.redis.xtrim(store.keys.changes(group), maxlen=10, approximate=False)
            assert await follower.step(50) is True
            assert follower.reloads == 1 and handed == [follower.index]
            assert follower.index.containing("farm", *INSIDE) == []
            assert [f.id for f in follower.index.containing("other", *INSIDE)] == ["missed"]
            assert len(follower.tenants) == 20_000 and follower.tenants["cow-123"] == "farm"
            # it follows on from there, without another reload
            await store.register_devices({"calf-1": "other"})
            await follower.step(50)
            assert follower.tenants["calf-1"] == "other" and follower.reloads == 1
            # and a follower that keeps up is never told to reload
            assert await store.changes_trimmed(follower._after) is False
        finally:
            for group in store.keys.all_groups:
                await store.redis.delete(store.keys.changes(group))
            await store.close()

    run(scenario())


def test_one_trimmed_feed_reloads_its_group_only(redis_url, prefix):
    """review15d #2: a follower behind one group's trimmed feed reloaded every fence of the country; now it
    reloads that group's farms and devices only (XTRIM of one feed by hand), keeps every other farm's shard,
    and then holds what a full reload would."""

    async def scenario() -> None:
        store = RedisStore(redis_url, prefix)
        await store.connect()
        try:
            farms = [f"farm-{i}" for i in range(40)]
            await store.put_fences([Fence(id=f"f-{f}", tenant=f, geometry=SQUARE) for f in farms])
            lagging = store.keys.group(farms[0])
            ours = [f for f in farms if store.keys.group(f) == lagging]
            theirs = [f for f in farms if store.keys.group(f) != lagging]
            cows = [c for c in (f"cow-{i}" for i in range(200)) if store.keys.group(c) == lagging][:3]
            follower = FenceFollower(store, on_index=(handed := []).append)
            await follower.load()
            before = {f: follower.index.farm(f) for f in theirs}
            # the lagging group's farms change while the follower lags, then its feed is trimmed past it
            await store.delete_fence(ours[0], f"f-{ours[0]}")
            await store.put_fences([Fence(id=f"g-{ours[0]}", tenant=ours[0], geometry=SQUARE)])
            await store.register_devices(dict.fromkeys(cows, ours[0]))
            await store.put_herd_rules(ours[0], HerdRules(confirm_fixes=4))
            await store.put_mob(MobRecord(id="ewes", tenant=ours[0], fences=[f"g-{ours[0]}"], devices=cows[:2]))
            await store.redis.xtrim(store.keys.changes(lagging), maxlen=0, approximate=False)
            await store.put_fences([Fence(id=f"g-{theirs[0]}", tenant=theirs[0], geometry=SQUARE)])  # kept
            assert await follower.step(50) is True
            reloaded, applied = handed  # the group reloaded, then the other feeds' change read again and applied
            assert reloaded.changed is not None and reloaded.changed <= set(ours)
            assert all(reloaded.farm(f) is before[f] for f in theirs), "another group's farm was rebuilt"
            assert applied is follower.index and applied.changed == {theirs[0]}
            assert follower.reloads == 1 and follower.groups_reloaded == 1
            assert [f.id for f in follower.index.containing(ours[0], *INSIDE)] == [f"g-{ours[0]}"]
            assert follower.tenants[cows[0]] == ours[0] and follower.rules_of(ours[0]).confirm_fixes == 4
            full = FenceFollower(store)
            await full.load()
            assert known(follower) == known(full)
        finally:
            for group in store.keys.all_groups:
                await store.redis.delete(store.keys.changes(group))
            await store.close()

    run(scenario())


def test_a_wiped_store_is_reloaded(redis_url, prefix):
    async def scenario() -> None:
        store = RedisStore(redis_url, prefix)
        await store.connect()
        try:
            await store.put_fences([Fence(id="north", tenant="farm", geometry=SQUARE)])
            follower = FenceFollower(store)
            await follower.load()
            keys = [k async for k in store.redis.scan_iter(f"{prefix}:*")]
            await store.redis.delete(*keys)
            await follower.step(50)
            assert follower.reloads == 1 and len(follower.index) == 0
        finally:
            await store.close()

    run(scenario())


def test_a_broken_fence_in_redis_stops_no_worker_and_no_other_farm(live):
    """Issue 9 #1: broken fences in Redis, there at start and arriving while running: the worker
    keeps running, quarantines them, and the other farms' fences still give events."""

    async def seed() -> None:
        store = RedisStore(live.redis_url, live.prefix)
        await store.connect()
        try:
            await store.put_fences([Fence(id="north", tenant="farm", geometry=SQUARE)])
            await store.register_devices({"cow-1": "farm", "cow-2": "farm"})
            await write_broken(store, "careless")
        finally:
            await store.close()

    run(seed())
    proc, port = live.start_worker()
    wait_ready(port, proc)
    live.produce([("cow-1", orjson.dumps({"device_id": "cow-1", "ts": T0, "lon": INSIDE[0], "lat": INSIDE[1]}))])
    got = events_of(read(live.consumer(live.events), lambda got: len(got) >= 1))
    assert [(e["type"], e["fence_id"]) for e in got] == [("enter", "north")]

    async def more() -> None:  # while it runs: another broken fence, then a good one
        store = RedisStore(live.redis_url, live.prefix)
        await store.connect()
        try:
            await write_broken(store, "careless")
            await store.put_fences([Fence(id="south", tenant="farm", geometry=SQUARE)])
        finally:
            await store.close()

    run(more())
    time.sleep(1.5)  # the follower applies the changes
    assert proc.poll() is None, live.log()
    live.produce([("cow-2", orjson.dumps({"device_id": "cow-2", "ts": T0, "lon": INSIDE[0], "lat": INSIDE[1]}))])
    got = events_of(read(live.consumer(live.events), lambda got: len(got) >= 4))
    assert sorted((e["device_id"], e["fence_id"]) for e in got if e["type"] == "enter") == [
        ("cow-1", "north"),
        ("cow-1", "south"),  # the new fence holds cow-1's last fix: re-evaluation enters it
        ("cow-2", "north"),
        ("cow-2", "south"),
    ]
    assert proc.poll() is None
    log = live.log()
    assert "'old-3d' of tenant 'careless' (version 1) quarantined" in log and "'garbage' is unreadable" in log


def test_a_broken_fence_in_redis_does_not_keep_the_api_from_ready(live):
    run(_seed_api(live))
    proc, base = live.start_api()
    wait_api(base, proc)
    with httpx.Client(base_url=base, timeout=5.0) as client:
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        key = client.post("/admin/tenants", json={"id": "farm"}, headers=admin).json()["api_key"]
        r = client.get(
            "/query/fences", params={"lon": INSIDE[0], "lat": INSIDE[1]}, headers={"Authorization": f"Bearer {key}"}
        )
        assert r.status_code == 200 and [f["id"] for f in r.json()["fences"]] == ["north"]
    assert proc.poll() is None


async def _seed_api(live) -> None:
    store = RedisStore(live.redis_url, live.prefix)
    await store.connect()
    try:
        await store.put_fences([Fence(id="north", tenant="farm", geometry=SQUARE)])
        await write_broken(store, "careless")
    finally:
        await store.close()

"""The migration of a store of the untagged key layout (before Redis Cluster support) to the tagged one
(``python -m fencex.store.migrate``): an old store written as the old version wrote it, copied to the
suite's Redis (a cluster with ``FENCEX_TEST_REDIS=cluster``), then read through today's store."""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
import pytest
import redis

from devtools.localserver import start_redis
from fencex.detector import DeviceState
from fencex.errors import IdTaken
from fencex.fence import Fence
from fencex.fix import Fix
from fencex.herd import HerdRules
from fencex.mob import MobRecord
from fencex.store.herd import rules_to_json
from fencex.store.migrate import connect, migrate
from fencex.store.redis import RedisStore
from fencex.store.tenants import key_digest, key_id
from fencex.track import Track
from tests.integration.test_api import SQUARE

pytestmark = pytest.mark.integration

T0 = 1_790_000_000_000
KEY = "farm-key-for-the-migration"


def write_old_store(r: redis.Redis, p: str) -> None:
    """What the old version kept for one farm with a fence, a collar on partition 2 inside it, a mob, a key."""
    r.set(f"{p}:fence:north", Fence(id="north", tenant="farm", geometry=SQUARE, version=3).to_json())
    r.sadd(f"{p}:fences", "north")
    r.sadd(f"{p}:tenant-fences:farm", "north")
    r.hset(f"{p}:devices", "cow-1", "farm")
    r.set(f"{p}:dev:cow-1", orjson.dumps(DeviceState("farm", T0, 17.605, 59.805).to_obj()))
    r.set(f"{p}:dev:lost", orjson.dumps(DeviceState("farm", T0, 17.605, 59.805).to_obj()))  # on no partition's list
    r.sadd(f"{p}:part:loc:2", "cow-1")
    r.set(f"{p}:gen:loc:2", 5)
    track = Track()
    track.add_fix(Fix("cow-1", T0, 17.605, 59.805))
    r.rpush(f"{p}:track:cow-1", track.to_bytes())
    r.geoadd(f"{p}:geo:farm", (17.605, 59.805, "cow-1"))
    r.zadd(f"{p}:in:farm:north", {"cow-1": T0})
    r.zadd(f"{p}:alerts:farm:out", {"cow-1": T0})
    r.hset(f"{p}:graze:farm:2026-11-20", "north\t", 5_000)
    r.expire(f"{p}:graze:farm:2026-11-20", 86_400)
    r.hset(f"{p}:tenants", "farm", "Farm")
    r.set(f"{p}:key:{key_digest(KEY)}", "farm")
    r.hset(f"{p}:tenant-keys:farm", key_id(KEY), orjson.dumps({"digest": key_digest(KEY), "created_at": time.time()}))
    r.xadd(f"{p}:events:farm", {"e": orjson.dumps({"event_id": "e1", "tenant": "farm", "type": "enter"})})
    r.hset(f"{p}:herd", "farm", rules_to_json(HerdRules(silence_s=900.0)))
    r.set(f"{p}:mob:farm:ewes", MobRecord(id="ewes", tenant="farm", fences=["north"], devices=["cow-1"]).to_json())
    r.sadd(f"{p}:tenant-mobs:farm", "ewes")
    r.sadd(f"{p}:mob-farms", "farm")
    r.hset(f"{p}:mob-of:farm", "cow-1", "ewes")
    r.xadd(f"{p}:changes", {"kind": "fence", "op": "upsert", "id": "north", "tenant": "farm", "version": 3})
    r.set(f"{p}:seen:e1", "1", ex=86_400)


def test_an_old_store_reads_the_same_after_the_migration(redis_url, tmp_path):
    prefix = f"fx{uuid.uuid4().hex[:8]}"
    with start_redis(logdir=tmp_path) as old:
        source = redis.Redis(host="127.0.0.1", port=old.port)
        write_old_store(source, prefix)
        report = migrate(source, connect(redis_url), prefix, "loc")
    assert report.unplaced == ["lost"]
    assert report.left_out == {"changes": 1, "seen": 1, "dev": 1}

    async def read() -> None:
        store = RedisStore(redis_url, prefix)
        await store.connect()
        try:
            assert [f.id for f in await store.fences()] == ["north"]
            assert (await store.get_fence("farm", "north")).version == 3
            with pytest.raises(IdTaken):  # the id is still the farm's across farms
                await store.put_fences([Fence(id="north", tenant="other", geometry=SQUARE)])
            assert await store.device_tenants() == {"cow-1": "farm"}
            assert (await store.device_state("farm", "cow-1")).last_ts == T0
            assert (await store.device_track("farm", "cow-1")).ts == [T0]
            assert await store.devices_inside("farm", "north") == [("cow-1", T0)]
            assert [d for d, *_ in await store.devices_near("farm", 17.605, 59.805, 100, 100)] == ["cow-1"]
            assert await store.alerts("farm", "out", 10) == [("cow-1", T0)]
            assert [r.ms for r in await store.grazing("farm", ["2026-11-20"])] == [5_000]
            assert await store.redis.ttl(store.keys.grazing("farm", "2026-11-20")) > 0  # its expiry kept
            assert await store.tenant_for_key(KEY) == "farm"
            assert [k["id"] for k in await store.api_keys("farm")] == [key_id(KEY)]
            assert await store.tenant_exists("farm")
            assert [e["event_id"] for _, e in await store.history("farm")] == ["e1"]
            assert (await store.get_herd_rules("farm")).silence_s == 900.0
            assert [m.id for m in await store.mobs()] == ["ewes"]
            assert await store.mob_of_device("farm", "cow-1") == "ewes"
            assert await store.partition_devices("loc", [2]) == {"cow-1": 2}
            assert await store.claim_partitions("loc", [2]) == {2: 6}  # the generation goes on from the old one
        finally:
            await store.close()

    asyncio.run(read())

"""A change feed emptied but not deleted (an operator's ``XTRIM <feed> MAXLEN 0`` to free memory, or every entry
deleted) (review15c). A follower loaded then took the feed's position from its last entry, of which there is
none: "0-0". On Redis 7 (production's 7.2), which remembers the last id it deleted, every read after found
entries deleted past "0-0": the feed looked trimmed, and every follower (each worker and API process) reloaded
the whole store on every step until a change came to that feed. The position of an emptied feed is its last
generated id now. (The suite's Redis is 6.2, which keeps no deleted id: the test checks the position here and
the trimmed verdict on Redis 7's answer in tests/unit/test_feed_position.py.)"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from fencex.fence import Fence
from fencex.follower import FenceFollower
from fencex.store.base import stream_id
from fencex.store.redis import RedisStore
from tests.integration.test_api import SQUARE

pytestmark = pytest.mark.integration


def test_a_follower_on_an_emptied_feed_starts_after_its_last_generated_id(redis_url):
    async def go() -> None:
        store = RedisStore(redis_url, f"e{uuid.uuid4().hex[:8]}")
        await store.connect()
        try:
            await store.put_fences([Fence(id="north", tenant="farm", geometry=SQUARE)])
            group = store.keys.all_groups.index(store.keys.group("farm"))
            feed = store.keys.changes(store.keys.group("farm"))
            last = (await store.redis.xinfo_stream(feed))["last-generated-id"]
            await store.redis.xtrim(feed, maxlen=0)
            position = (await store.last_change_id()).split()
            assert stream_id(position[group]) == stream_id(last), "an emptied feed's position went back to 0-0"
            follower = FenceFollower(store)
            await follower.load()
            for _ in range(3):
                await follower.step(block_ms=10)
            assert follower.reloads == 0
            await store.put_fences([Fence(id="south", tenant="farm", geometry=SQUARE)])
            await follower.step(block_ms=200)
            assert "south" in follower.fences  # (Redis 6 cannot tell this feed's first entry from one past a trim:
            # one reload, conservatively; Redis 7 can, and reads the change)
        finally:
            await store.close()

    asyncio.run(go())

"""The reads a follower's full load makes (every worker's and API process's start, and each reload after a
trimmed feed) cost round trips by pipeline, not by farm (review15c): ``mobs()`` read each farm with mobs in
two round trips of its own (SMEMBERS, then MGET), 1.65 s at 5,000 farms on the local cluster, so about 33 s
of a worker's start at 100,000 farms."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from fencex.mob import MobRecord
from fencex.store.redis import RedisStore

pytestmark = pytest.mark.integration


def test_every_farms_mobs_are_read_in_pipelines_not_a_round_trip_per_farm(redis_url):
    async def go() -> None:
        store = RedisStore(redis_url, f"l{uuid.uuid4().hex[:8]}")
        await store.connect()
        try:
            farms = [f"farm-{i}" for i in range(300)]
            for t in farms:
                for mid in ("ewes", "lambs"):
                    await store.put_mob(MobRecord(id=mid, tenant=t))
            single: list[str] = []
            r: Any = store.redis
            real = r.execute_command

            async def counted(*args: Any, **kwargs: Any) -> Any:
                single.append(str(args[0]))
                return await real(*args, **kwargs)

            r.execute_command = counted  # commands sent on their own, not in a pipeline
            try:
                got = await store.mobs()
            finally:
                r.execute_command = real
            assert [(m.tenant, m.id) for m in got] == sorted((t, mid) for t in farms for mid in ("ewes", "lambs"))
            assert len(single) < 10, f"{len(single)} round trips of their own for {len(farms)} farms"
        finally:
            await store.close()

    asyncio.run(go())

"""FENCEX_STORE_GROUPS (G) decides where every farm's and device's keys are (``{g<crc32 mod G>}``) and how many
change feeds there are. A service started with another G than the store was written with (an API and a worker
configured apart, a changed setting without the migration) read and wrote other keys than the rest, with no
error: fences the API wrote were missing from the workers' index, devices' ``where`` pointers and registrations
were not found. The store records its G; a service with another refuses to start (review15c)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from fencex.errors import Misconfigured
from fencex.fence import Fence
from fencex.store.redis import RedisStore
from tests.integration.test_api import SQUARE

pytestmark = pytest.mark.integration


def test_a_service_with_another_store_groups_setting_refuses_to_start(redis_url):
    async def go() -> None:
        prefix = f"g{uuid.uuid4().hex[:8]}"
        api = RedisStore(redis_url, prefix, groups=16)
        await api.connect()
        try:
            await api.put_fences([Fence(id=f"north-{i}", tenant=f"farm-{i}", geometry=SQUARE) for i in range(8)])
            worker = RedisStore(redis_url, prefix, groups=8)
            try:
                with pytest.raises(Misconfigured, match="FENCEX_STORE_GROUPS"):
                    await worker.connect()
            finally:
                await worker.close()
            again = RedisStore(redis_url, prefix, groups=16)  # the same setting: it starts
            await again.connect()
            try:
                assert len(await again.fences()) == 8
            finally:
                await again.close()
        finally:
            await api.close()

    asyncio.run(go())

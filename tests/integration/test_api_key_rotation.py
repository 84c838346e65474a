"""A key rotation cut part way (review15c). A farm's key's validity (``{P}:key:<digest>``) and its farm's list of
keys (``{P}:{g}:tenant-keys:<t>``) are different slots: on a cluster, different nodes. The rotation stopped the
old key first, then changed the list in a transaction: when the list's node failed in between (or the process
died), the farm's only key was dead and the new one was never made valid or returned: the farm was locked out
of its data until an administrator added a key. Now the new key is made to work before the old one stops."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from fencex.errors import StoreUnavailable
from fencex.store.redis import RedisStore
from fencex.store.tenants import key_id

pytestmark = pytest.mark.integration


def cut_key_lists(store: RedisStore) -> None:
    """Every later write of a farm's key list (a transaction, or HDEL on its own) fails: its node is gone."""
    r: Any = store.redis
    real_pipeline = r.pipeline

    def pipeline(transaction: bool = True, **kwargs: Any) -> Any:
        pipe = real_pipeline(transaction=transaction, **kwargs)
        if transaction:

            async def execute(*args: Any, **kw: Any) -> Any:
                raise RedisConnectionError("connection cut (test)")

            pipe.execute = execute
        return pipe

    async def hdel(*args: Any, **kwargs: Any) -> Any:
        raise RedisConnectionError("connection cut (test)")

    r.pipeline = pipeline
    r.hdel = hdel


def test_a_rotation_cut_part_way_leaves_the_farm_a_key_that_works(redis_url):
    async def go() -> None:
        store = RedisStore(redis_url, f"k{uuid.uuid4().hex[:8]}")
        await store.connect()
        try:
            await store.create_tenant("farm", "Farm")
            old_id = await store.add_api_key("farm", "old-key")
            cut_key_lists(store)
            try:
                rotated = await store.replace_api_key("farm", old_id, "new-key")
            except StoreUnavailable:
                rotated = False  # the caller got 503 and holds the old key only
            holds = "new-key" if rotated else "old-key"
            assert await store.tenant_for_key(holds) == "farm", f"the farm's {holds} no longer works"
            listed = [k["id"] for k in await store.api_keys("farm")]
            for key in ("old-key", "new-key"):  # a key that works is one its farm can see (and revoke)
                assert await store.tenant_for_key(key) is None or key_id(key) in listed
        finally:
            await store.close()

    asyncio.run(go())

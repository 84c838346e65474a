"""Tenants (farms) and their API keys in Redis; a key is stored as its hash only."""

from __future__ import annotations

import hashlib
import time
from typing import Any, cast

import orjson
from redis.exceptions import WatchError

from fencex.store.connection import RedisConnection, guard


def key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def key_id(api_key: str) -> str:
    """A key's public id: a prefix of its hash, safe to show and log."""
    return key_digest(api_key)[:16]


class RedisTenants(RedisConnection):
    """Tenants and API keys: create, list, rotate, revoke, and a key's tenant."""

    @guard
    async def create_tenant(self, tenant: str, name: str) -> bool:
        return bool(await self.redis.hsetnx(self.keys.tenants, tenant, name))

    @guard
    async def tenant_exists(self, tenant: str) -> bool:
        return bool(await self.redis.hexists(self.keys.tenants, tenant))

    @guard
    async def add_api_key(self, tenant: str, api_key: str) -> str:
        """Store a key (its hash only) for ``tenant``; returns its id (:func:`key_id`). Listed under its
        farm first, then made valid (another slot): a valid key is always one its farm can see and revoke."""
        digest = key_digest(api_key)
        await self.redis.hset(self.keys.tenant_keys(tenant), key_id(api_key), self._key_record(digest))
        await self.redis.set(self.keys.api_key(digest), tenant)
        return key_id(api_key)

    @staticmethod
    def _key_record(digest: str) -> bytes:
        return orjson.dumps({"digest": digest, "created_at": time.time()})

    @guard
    async def api_keys(self, tenant: str) -> list[dict[str, Any]]:
        """Tenant's keys as ``{"id", "created_at"}``, oldest first (never the key nor its hash)."""
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.keys.tenant_keys(tenant)))
        keys = [{"id": k.decode(), "created_at": orjson.loads(v)["created_at"]} for k, v in raw.items()]
        return sorted(keys, key=lambda k: (k["created_at"], k["id"]))

    @guard
    async def replace_api_key(self, tenant: str, old_id: str, new_key: str | None) -> bool:
        """Revoke the tenant's key ``old_id`` and add ``new_key`` (a rotation; None only revokes). False if
        the tenant has no key with that id. The farm's list changes in one transaction (of two rotations of
        one key, one wins); the keys' validity (other slots) around it, so that a valid key is always
        listed: the old key stops before it leaves the list, the new one works once it is on it."""
        index = self.keys.tenant_keys(tenant)
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(index)
                    raw = await pipe.hget(index, old_id)
                    if raw is None:
                        return False
                    await self.redis.delete(self.keys.api_key(orjson.loads(raw)["digest"]))
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves Pipeline.multi unannotated
                    pipe.hdel(index, old_id)
                    if new_key is not None:
                        pipe.hset(index, key_id(new_key), self._key_record(key_digest(new_key)))
                    await pipe.execute()
                    break
                except WatchError:
                    continue
        if new_key is not None:
            await self.redis.set(self.keys.api_key(key_digest(new_key)), tenant)
        return True

    @guard
    async def tenant_for_key(self, api_key: str) -> str | None:
        raw = cast(bytes | None, await self.redis.get(self.keys.api_key(key_digest(api_key))))
        return raw.decode() if raw is not None else None

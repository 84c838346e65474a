"""Tenants (farms) and their API keys in Redis; a key is stored as its hash only."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, cast

import orjson
from redis.exceptions import ClusterError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fencex.store.connection import RedisConnection, guard

log = logging.getLogger("fencex.store")


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
        the tenant has no key with that id. The keys' validity and the farm's list are other slots, so that a
        valid key is always listed each key is listed before it works and stops before it leaves the list; a
        rotation adds the new key (listed, then valid) before the old one stops, so that a rotation cut part
        way (its farm's slot unavailable, the process killed) never leaves the farm without a key it holds:
        the old one works until the new one does, and once the old one has stopped the new one is returned
        even if the old one could not be taken off the list (it is listed, revoked, and goes at the next
        revocation). Two rotations of one key at once both get a new key, each listed."""
        index = self.keys.tenant_keys(tenant)
        raw = cast(bytes | None, await self.redis.hget(index, old_id))
        if raw is None:
            return False
        if new_key is not None:
            await self.redis.hset(index, key_id(new_key), self._key_record(key_digest(new_key)))
            await self.redis.set(self.keys.api_key(key_digest(new_key)), tenant)
        await self.redis.delete(self.keys.api_key(orjson.loads(raw)["digest"]))  # the old key stops here
        try:
            await self.redis.hdel(index, old_id)
        except (RedisConnectionError, RedisTimeoutError, ClusterError):
            if new_key is None:
                raise  # a revocation: the caller tries again
            log.warning("rotated key %s of farm %r stopped but is still listed: it goes when revoked", old_id, tenant)
        return True

    @guard
    async def tenant_for_key(self, api_key: str) -> str | None:
        raw = cast(bytes | None, await self.redis.get(self.keys.api_key(key_digest(api_key))))
        return raw.decode() if raw is not None else None

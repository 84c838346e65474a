"""What fencex keeps in its store, and under which keys.

Redis is the source of truth:

=============================  ==========================================================
``{p}:fence:{id}``             a fence, JSON (``Fence.to_json``)
``{p}:fences``                 set of all fence ids
``{p}:tenant-fences:{t}``      set of tenant t's fence ids
``{p}:changes``                stream: the change feed (kind, op, id, tenant, version)
``{p}:dev:{id}``               a device's state, JSON (``DeviceState.to_obj``)
``{p}:devices``                hash device id -> tenant (registered devices)
``{p}:part:{topic}:{n}``       set of device ids seen on partition n (loaded on assignment)
``{p}:gen:{topic}:{n}``        partition n's generation: raised by each new owner; a save
                               carrying an older one is refused (fencing a stalled worker)
``{p}:geo:{t}``                GEO set: tenant t's devices at their last position
``{p}:in:{t}:{fence}``         sorted set: devices inside the fence, scored by since (ms)
``{p}:tenants``                hash tenant -> name
``{p}:key:{sha256}``           API key hash -> tenant
``{p}:tenant-keys:{t}``        hash: tenant t's key ids -> JSON (digest, created_at)
``{p}:events:{t}``             stream: tenant t's recent events (capped)
``{p}:seen:{event_id}``        de-duplication marker for the event history (expires)
=============================  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "fx"

    def fence(self, fid: str) -> str:
        return f"{self.prefix}:fence:{fid}"

    @property
    def fences(self) -> str:
        return f"{self.prefix}:fences"

    def tenant_fences(self, tenant: str) -> str:
        return f"{self.prefix}:tenant-fences:{tenant}"

    @property
    def changes(self) -> str:
        return f"{self.prefix}:changes"

    def device(self, did: str) -> str:
        return f"{self.prefix}:dev:{did}"

    @property
    def devices(self) -> str:
        return f"{self.prefix}:devices"

    def partition(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:part:{topic}:{partition}"

    def generation(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:gen:{topic}:{partition}"

    def geo(self, tenant: str) -> str:
        return f"{self.prefix}:geo:{tenant}"

    def inside(self, tenant: str, fid: str) -> str:
        return f"{self.prefix}:in:{tenant}:{fid}"

    @property
    def tenants(self) -> str:
        return f"{self.prefix}:tenants"

    def api_key(self, digest: str) -> str:
        return f"{self.prefix}:key:{digest}"

    def tenant_keys(self, tenant: str) -> str:
        return f"{self.prefix}:tenant-keys:{tenant}"

    def events(self, tenant: str) -> str:
        return f"{self.prefix}:events:{tenant}"

    def seen(self, event_id: str) -> str:
        return f"{self.prefix}:seen:{event_id}"


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change feed."""

    id: str  # the stream entry id
    kind: str  # "fence" | "device"
    op: str  # "upsert" | "delete"
    key: str  # fence id or device id
    tenant: str
    version: int

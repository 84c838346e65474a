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
``{p}:herd``                   hash tenant -> its herd settings, JSON (``HerdRules``' fields)
``{p}:mob:{t}:{id}``           tenant t's mob, JSON (``MobRecord.to_json``): mob ids are per farm
``{p}:tenant-mobs:{t}``        set of tenant t's mob ids
``{p}:mob-farms``              set of the tenants that have held a mob
``{p}:mob-of:{t}``             hash: tenant t's devices in a mob -> the mob's id (one mob each)
``{p}:alerts:{t}:{kind}``      sorted set: tenant t's devices out, silent or low on battery
                               (kind ``out``, ``silent``, ``battery_low``), scored by the
                               time (ms) of the event that raised the alert
``{p}:track:{id}``             list: a device's recent track (:mod:`fencex.track`'s bytes, the
                               segments joined): the live path appends, a late merge or a trim
                               rewrites
``{p}:graze:{t}:{day}``        hash: tenant t's grazing on a day (the farm's time zone,
                               ``YYYY-MM-DD``): ``fence id\tmob id`` -> milliseconds inside
=============================  ==========================================================
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fencex.detector import DeviceState
from fencex.errors import InvalidFence
from fencex.fence import Fence

log = logging.getLogger("fencex.store")

ALERT_KINDS: tuple[str, ...] = ("out", "silent", "battery_low")  # a farm's alert lists
# event type -> the alert lists it changes: (list, True: the device joins it, False: it leaves it)
ALERT_OF: dict[str, tuple[tuple[str, bool], ...]] = {
    "escape": (("out", True),),
    "return": (("out", False),),
    "silent": (("silent", True),),
    "resumed": (("silent", False),),
    "battery_low": (("battery_low", True),),
    "battery_ok": (("battery_low", False),),
    "transferred": tuple((kind, False) for kind in ALERT_KINDS),  # registered to another farm now
}


@dataclass(slots=True)
class SaveWrites:
    """What a worker's save holds besides states, events and offsets."""

    tracks: Mapping[str, bytes | bytearray] = field(default_factory=dict)  # device -> bytes to append
    rewrites: Mapping[str, bytes] = field(default_factory=dict)  # device -> its track written whole first
    anchors: Mapping[str, int] = field(default_factory=dict)  # device -> the fix time its appended bytes follow
    resets: Mapping[str, tuple[DeviceState, DeviceState]] = field(default_factory=dict)  # (before, after)
    grazing: Mapping[tuple[str, str, str, str], int] = field(default_factory=dict)  # fencex.grazing's, to add
    long_bytes: int = 1 << 62  # tracks at least this long are named in the save's answer (to trim)


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

    @property
    def herd(self) -> str:
        return f"{self.prefix}:herd"

    def mob(self, tenant: str, mob_id: str) -> str:
        return f"{self.prefix}:mob:{tenant}:{mob_id}"

    def tenant_mobs(self, tenant: str) -> str:
        return f"{self.prefix}:tenant-mobs:{tenant}"

    @property
    def mob_farms(self) -> str:
        return f"{self.prefix}:mob-farms"

    def mob_of(self, tenant: str) -> str:
        return f"{self.prefix}:mob-of:{tenant}"

    def alerts(self, tenant: str, kind: str) -> str:
        return f"{self.prefix}:alerts:{tenant}:{kind}"

    def track(self, did: str) -> str:
        return f"{self.prefix}:track:{did}"

    def grazing(self, tenant: str, day: str) -> str:
        return f"{self.prefix}:graze:{tenant}:{day}"


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change feed."""

    id: str  # the stream entry id
    kind: str  # "fence" | "device" | "herd" (a farm's herd settings) | "mob"
    op: str  # "upsert" | "delete"
    key: str  # fence id, device id, tenant (herd) or mob id (ids of mobs are per tenant)
    tenant: str
    version: int


def stream_id(entry_id: str | bytes) -> tuple[int, int]:
    """A Redis stream entry id (``"1700000000000-3"``) as a comparable pair."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def feed_trimmed(after: str, info: Mapping[str, Any] | None, cap: int) -> bool:
    """Whether entries after ``after`` may be gone from the change feed (trimmed by its cap,
    deleted, or the stream wiped), so a follower at ``after`` must reload in full.

    ``info``: the stream's ``XINFO STREAM`` answer, None when the stream does not exist.
    Redis 7 says exactly what was deleted last (``max-deleted-entry-id``). Redis 6 does not:
    entries after ``after`` were trimmed only if the first entry left is past it; a follower
    that loaded an empty feed (``after`` is ``0-0``) cannot tell a trimmed feed from a young
    one except by its length, which trimming to the cap never takes below ``cap``.
    Conservative: a rare false alarm costs a reload, a miss leaves an index wrong.
    """
    start = stream_id(after)
    if info is None:
        return start != (0, 0)  # the feed is gone: the store was wiped or restarted empty
    deleted = info.get("max-deleted-entry-id")
    if deleted is not None:
        return stream_id(deleted) > start
    first = info.get("first-entry")
    if not first:
        return start != (0, 0) and int(info.get("length", 0)) == 0 and stream_id(info["last-generated-id"]) > start
    if stream_id(first[0]) <= start:
        return False
    return start != (0, 0) or int(info.get("length", 0)) >= cap


def decode_fences(
    ids: Sequence[str], raws: Sequence[bytes | str | None], unreadable: dict[str, str] | None = None
) -> dict[str, Fence | None]:
    """Stored fence records by id: None where there is none, and where the record cannot be
    read (logged, and added to ``unreadable``: fence id -> reason, when given)."""
    out: dict[str, Fence | None] = {}
    for fid, raw in zip(ids, raws):
        try:
            out[fid] = Fence.from_json(raw) if raw is not None else None
        except InvalidFence as exc:
            log.error("stored fence %r is unreadable and left out: %s", fid, exc)
            out[fid] = None
            if unreadable is not None:
                unreadable[fid] = str(exc)
    return out

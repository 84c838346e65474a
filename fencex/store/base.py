"""What fencex keeps in its store, and under which keys.

Redis is the source of truth. Every key carries a hash tag, so that each script and transaction
touches one slot of a Redis Cluster (``docs/design/redis-cluster.md``; the same keys serve one Redis):
``{g<k>}``, a **group** (``k``: crc32 of a farm's or a device's id modulo ``groups``), holds what a farm
writes in one transaction and its group's change feed; ``{p<n>}``, a **partition** of the locations
topic, holds what the worker owning it saves, fenced by its generation. Below, ``{g}`` is the group of
the farm ``t`` (or of the device, where the key is a device's), ``{p}`` the device's partition.

===================================  ====================================================
``{P}:{g}:fence:{id}``               a fence, JSON (``Fence.to_json``), in its farm's group
``{P}:{g}:fences``                   set of the group's fence ids (every farm of the group)
``{P}:{g}:tenant-fences:{t}``        set of farm t's fence ids
``{P}:fence-id:{id}``                the farm that holds fence id ``id`` (ids are unique across farms)
``{P}:{g}:fence-put:{t}:{id}``       puts of farm t's fence ``id`` under way (a count, with a lease): its
                                     claim is not given back meanwhile (``fencex.store.fences``)
``{P}:{g}:changes``                  stream: the group's change feed (kind, op, id, tenant, version)
``{P}:{g}:devices``                  hash device id -> tenant (the group's registered devices)
``{P}:{g}:where``                    hash device id -> the partition its state is saved under
``{P}:{p}:dev:{id}``                 a device's state, JSON (``DeviceState.to_obj``)
``{P}:{p}:part:{topic}``             set of device ids seen on the partition (loaded on assignment)
``{P}:{p}:gen:{topic}``              the partition's generation: raised by each new owner; a save
                                     carrying an older one is refused (fencing a stalled worker)
``{P}:partitions:{topic}``           set of the partitions ever claimed
``{P}:store-groups``                 the number of groups (FENCEX_STORE_GROUPS) the store is written with
``{P}:{g}:geo:{t}``                  GEO set: farm t's devices at their last position
``{P}:{g}:in:{t}:{fence}``           sorted set: devices inside the fence, scored by since (ms)
``{P}:tenants``                      hash tenant -> name
``{P}:key:{sha256}``                 API key hash -> tenant
``{P}:{g}:tenant-keys:{t}``          hash: farm t's key ids -> JSON (digest, created_at)
``{P}:{g}:events:{t}``               stream: farm t's recent events (capped)
``{P}:{g}:seen:{t}:{event_id}``      de-duplication marker for the event history (expires)
``{P}:{g}:herd``                     hash tenant -> its herd settings, JSON (``HerdRules``' fields)
``{P}:{g}:mob:{t}:{id}``             farm t's mob, JSON (``MobRecord.to_json``): mob ids are per farm
``{P}:{g}:tenant-mobs:{t}``          set of farm t's mob ids
``{P}:{g}:mob-farms``                set of the group's farms that have held a mob
``{P}:{g}:mob-of:{t}``               hash: farm t's devices in a mob -> the mob's id (one mob each)
``{P}:{g}:alerts:{t}:{kind}``        sorted set: farm t's devices out, silent or low on battery
                                     (kind ``out``, ``silent``, ``battery_low``), scored by the
                                     time (ms) of the event that raised the alert
``{P}:{p}:track:{id}``               list: a device's recent track (:mod:`fencex.track`'s bytes, the
                                     segments joined): the live path appends, a late merge or a trim
                                     rewrites
``{P}:{g}:graze:{t}:{day}``          hash: farm t's grazing on a day (the farm's time zone,
                                     ``YYYY-MM-DD``): ``fence id\tmob id`` -> milliseconds inside
``{P}:{g|p}:saved:{token}``          a save step's token: a step resent writes nothing twice
``{P}:{p}:outbox``                   hash save token -> the farm steps a cluster save still owes
                                     (``fencex.store.outbox``): replayed by the partition's next owner
===================================  ====================================================
"""

from __future__ import annotations

import logging
import zlib
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


@dataclass(slots=True)
class Located:
    """Device states as found (``load_states``' answer with where each came from): a device's state
    can be under two partitions after partitions were added (docs/design/partitions.md)."""

    states: dict[str, DeviceState] = field(default_factory=dict)  # the newest copy of each device's state
    under: dict[str, int] = field(default_factory=dict)  # device -> the partition that copy is saved under
    where: dict[str, int] = field(default_factory=dict)  # device -> the partition its pointer names (if any)


DEFAULT_GROUPS = 16  # groups of farms and devices, and so change feeds (FENCEX_STORE_GROUPS)


def group_of(name: str, groups: int) -> int:
    """The group (0 .. groups - 1) of a farm or a device: crc32 of its id."""
    return zlib.crc32(name.encode()) % groups


def tag_of(key: str) -> str:
    """The hash tag of a key (``{g3}``, ``{p7}``), or the key itself when it has none: keys with the
    same answer are in one slot."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start : end + 1]
    return key


def step_keys(token: str) -> list[str]:
    """The KEYS of a save step whose token is ``token`` (``SAVE_FARM``): the token and a second name in its slot.
    The token is new, so a call naming it alone is sent, while its slot moves between nodes, to the importing
    node (ASK), where the script's writes of keys still on the source node create them beside the source's
    (the reshard's MIGRATE then fails, BUSYKEY, or replaces newer rows with older ones). Named with a second
    key, the call is a multi-key one: Redis refuses it (TRYAGAIN) until the slot has moved."""
    return [token, f"{token}:slot"]


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "fx"
    groups: int = DEFAULT_GROUPS

    # ---------------------------------------------------------------- tags

    def group(self, name: str) -> str:
        """The tag of a farm's or a device's group: ``{g<k>}``."""
        return f"{{g{zlib.crc32(name.encode()) % self.groups}}}"

    @property
    def all_groups(self) -> list[str]:
        return [f"{{g{k}}}" for k in range(self.groups)]

    @staticmethod
    def part(partition: int) -> str:
        """The tag of a partition: ``{p<n>}``."""
        return f"{{p{partition}}}"

    def _t(self, tenant: str) -> str:
        return f"{self.prefix}:{self.group(tenant)}"

    # ---------------------------------------------------------------- fences

    def fence(self, tenant: str, fid: str) -> str:
        return self.fence_in(self.group(tenant), fid)

    def fence_in(self, group: str, fid: str) -> str:
        return f"{self.prefix}:{group}:fence:{fid}"

    def fences(self, group: str) -> str:
        return f"{self.prefix}:{group}:fences"

    def tenant_fences(self, tenant: str) -> str:
        return f"{self._t(tenant)}:tenant-fences:{tenant}"

    def fence_id(self, fid: str) -> str:
        return f"{self.prefix}:fence-id:{fid}"

    def fence_put(self, tenant: str, fid: str) -> str:
        return f"{self._t(tenant)}:fence-put:{tenant}:{fid}"

    def changes(self, group: str) -> str:
        return f"{self.prefix}:{group}:changes"

    # ---------------------------------------------------------------- devices

    def device(self, partition: int, did: str) -> str:
        return f"{self.prefix}:{{p{partition}}}:dev:{did}"

    def devices(self, group: str) -> str:
        return f"{self.prefix}:{group}:devices"

    def where(self, group: str) -> str:
        return f"{self.prefix}:{group}:where"

    def partition(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:{{p{partition}}}:part:{topic}"

    def generation(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:{{p{partition}}}:gen:{topic}"

    def partitions(self, topic: str) -> str:
        return f"{self.prefix}:partitions:{topic}"

    @property
    def store_groups(self) -> str:
        return f"{self.prefix}:store-groups"

    def track(self, partition: int, did: str) -> str:
        return f"{self.prefix}:{{p{partition}}}:track:{did}"

    def saved(self, tag: str, token: str) -> str:
        return f"{self.prefix}:{tag}:saved:{token}"

    def outbox(self, tag: str) -> str:
        return f"{self.prefix}:{tag}:outbox"

    # ---------------------------------------------------------------- farms

    def geo(self, tenant: str) -> str:
        return f"{self._t(tenant)}:geo:{tenant}"

    def inside(self, tenant: str, fid: str) -> str:
        return f"{self._t(tenant)}:in:{tenant}:{fid}"

    @property
    def tenants(self) -> str:
        return f"{self.prefix}:tenants"

    def api_key(self, digest: str) -> str:
        return f"{self.prefix}:key:{digest}"

    def tenant_keys(self, tenant: str) -> str:
        return f"{self._t(tenant)}:tenant-keys:{tenant}"

    def events(self, tenant: str) -> str:
        return f"{self._t(tenant)}:events:{tenant}"

    def seen(self, tenant: str, event_id: str) -> str:
        return f"{self._t(tenant)}:seen:{tenant}:{event_id}"

    def herd(self, group: str) -> str:
        return f"{self.prefix}:{group}:herd"

    def mob(self, tenant: str, mob_id: str) -> str:
        return f"{self._t(tenant)}:mob:{tenant}:{mob_id}"

    def tenant_mobs(self, tenant: str) -> str:
        return f"{self._t(tenant)}:tenant-mobs:{tenant}"

    def mob_farms(self, group: str) -> str:
        return f"{self.prefix}:{group}:mob-farms"

    def mob_of(self, tenant: str) -> str:
        return f"{self._t(tenant)}:mob-of:{tenant}"

    def alerts(self, tenant: str, kind: str) -> str:
        return f"{self._t(tenant)}:alerts:{tenant}:{kind}"

    def grazing(self, tenant: str, day: str) -> str:
        return f"{self._t(tenant)}:graze:{tenant}:{day}"


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


def feed_unsure(after: str, info: Mapping[str, Any] | None) -> bool:
    """Whether :func:`feed_trimmed` could not tell: Redis 6 (no ``max-deleted-entry-id``) and a follower that
    loaded the feed empty (``after`` is ``0-0``) and finds entries, fewer than the cap, not knowing whether
    any went before them (a young feed, or one trimmed by hand). Taken as young, unless another feed is
    trimmed: that reload then takes this group too (a full reload did), at the cost of one group's."""
    if info is None or info.get("max-deleted-entry-id") is not None or stream_id(after) != (0, 0):
        return False
    return bool(info.get("first-entry"))


def decode_fences(
    ids: Sequence[str],
    raws: Sequence[bytes | str | None],
    unreadable: dict[str, str] | None = None,
    light: bool = False,
) -> dict[str, Fence | None]:
    """Stored fence records by id: None where there is none, and where the record cannot be
    read (logged, and added to ``unreadable``: fence id -> reason, when given). ``light``: records
    without their coordinates, the geometry built (``Fence.from_json(light=True)``: the worker's)."""
    out: dict[str, Fence | None] = {}
    for fid, raw in zip(ids, raws):
        try:
            out[fid] = Fence.from_json(raw, light=light) if raw is not None else None
        except InvalidFence as exc:
            log.error("stored fence %r is unreadable and left out: %s", fid, exc)
            out[fid] = None
            if unreadable is not None:
                unreadable[fid] = str(exc)
    return out

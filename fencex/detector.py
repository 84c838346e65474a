"""Per-device enter / exit / dwell detection: a pure function over sets of fence ids.

As in traccar's geofence handler: ``enter = now - before``, ``exit = before - now``,
and a fix no newer than the device's last accepted fix is stale and skipped.
On top of that:

- *dwell*: once a device has been inside a fence for the fence's ``dwell_s``
  (measured in fix time), one ``dwell`` event, and no more until it exits;
- *exit buffer*: a member stays a member while the fix is within the fence's
  outer (grown) geometry, so GPS jitter on the border does not flap;
- *fence changes*: :func:`reevaluate` applies the same rules to the device's
  last fix when fences are reshaped or deleted.

:func:`is_stale` and :func:`unchanged` are the two predicates the batch
pipeline's fast path asks before it skips the full transition; they are the
detector's own rules, not copies, and a property test holds them to
:func:`detect`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from fencex.event import Event
from fencex.fence import Fence
from fencex.fix import Fix


@dataclass(slots=True)
class Membership:
    since_ms: int
    version: int
    dwelled: bool = False


@dataclass(slots=True)
class DeviceState:
    tenant: str
    last_ts: int
    lon: float
    lat: float
    members: dict[str, Membership] = field(default_factory=dict)

    def to_obj(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "ts": self.last_ts,
            "lon": self.lon,
            "lat": self.lat,
            "in": {k: [m.since_ms, m.version, int(m.dwelled)] for k, m in self.members.items()},
        }

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> DeviceState:
        return cls(
            obj["tenant"],
            obj["ts"],
            obj["lon"],
            obj["lat"],
            {k: Membership(v[0], v[1], bool(v[2])) for k, v in obj["in"].items()},
        )


@dataclass(slots=True)
class Outcome:
    state: DeviceState | None
    events: list[Event]
    stale: bool = False


def is_stale(state: DeviceState | None, ts_ms: int) -> bool:
    """A fix no newer than the device's last accepted fix is stale: skipped, counted."""
    return state is not None and ts_ms <= state.last_ts


def dwell_due(member: Membership, fence: Fence, ts_ms: int) -> bool:
    """The one dwell rule: ``dwell_s`` of fix time inside, and not fired yet since the enter."""
    dwell_s = fence.dwell_s
    return bool(dwell_s) and not member.dwelled and ts_ms - member.since_ms >= (dwell_s or 0.0) * 1000.0


def unchanged(
    state: DeviceState, ts_ms: int, inside: Collection[str], near: Collection[str], fences: Mapping[str, Fence]
) -> bool:
    """Whether a fresh fix at ``ts_ms`` changes nothing but the device's position and time:
    the same set of fences (those held by an exit buffer included), none of them reshaped or
    deleted, no dwell due. Then :func:`detect` gives no event and the same memberships."""
    members = state.members
    for fid in inside:
        if fid not in members:
            return False  # enter
    if len(inside) != len(members):
        for fid in members:
            if fid not in inside and fid not in near:
                return False  # exit
    for fid, m in members.items():
        fence = fences.get(fid)
        if fence is None or fence.version != m.version or dwell_due(m, fence, ts_ms):
            return False  # deleted, reshaped, or a dwell to fire
    return True


def _transition(
    state: DeviceState | None,
    tenant: str,
    device_id: str,
    ts: int,
    lon: float,
    lat: float,
    inside: Collection[str],
    near: Collection[str],
    fences: Mapping[str, Fence],
) -> Outcome:
    before = state.members if state is not None else {}
    now_ids = set(inside)
    now_ids.update(fid for fid in near if fid in before)  # still within the exit buffer
    events: list[Event] = []
    members: dict[str, Membership] = {}
    for fid in sorted(before.keys() - now_ids):
        fence = fences.get(fid)
        version = fence.version if fence is not None else before[fid].version
        events.append(Event("exit", tenant, device_id, fid, version, ts, lon, lat))
    for fid in sorted(now_ids):
        fence = fences[fid]
        member = before.get(fid)
        if member is None:
            member = Membership(ts, fence.version)
            events.append(Event("enter", tenant, device_id, fid, fence.version, ts, lon, lat))
        else:
            member = Membership(member.since_ms, fence.version, member.dwelled)
        if dwell_due(member, fence, ts):
            member.dwelled = True
            events.append(Event("dwell", tenant, device_id, fid, fence.version, ts, lon, lat, fence.dwell_s))
        members[fid] = member
    return Outcome(DeviceState(tenant, ts, lon, lat, members), events)


def detect(
    state: DeviceState | None,
    fix: Fix,
    tenant: str,
    inside: Collection[str],
    near: Collection[str],
    fences: Mapping[str, Fence],
) -> Outcome:
    """Apply one fix to a device's state.

    ``inside``: ids of the tenant's fences containing the fix (boundary included);
    ``near``: ids of buffered fences whose outer geometry contains it;
    ``fences``: the current fences by id (deleted ones are absent).
    """
    if is_stale(state, fix.ts_ms):
        return Outcome(state, [], stale=True)
    return _transition(state, tenant, fix.device_id, fix.ts_ms, fix.lon, fix.lat, inside, near, fences)


def reevaluate(
    state: DeviceState, device_id: str, inside: Collection[str], near: Collection[str], fences: Mapping[str, Fence]
) -> Outcome:
    """Re-apply a device's last fix after fences changed: exits from deleted or
    shrunk fences, enters into new or grown ones, at the last fix's time and place."""
    return _transition(state, state.tenant, device_id, state.last_ts, state.lon, state.lat, inside, near, fences)

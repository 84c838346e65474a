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
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

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

    def to_obj(self) -> dict:
        return {
            "tenant": self.tenant,
            "ts": self.last_ts,
            "lon": self.lon,
            "lat": self.lat,
            "in": {k: [m.since_ms, m.version, int(m.dwelled)] for k, m in self.members.items()},
        }

    @classmethod
    def from_obj(cls, obj: dict) -> DeviceState:
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
        if fence.dwell_s and not member.dwelled and ts - member.since_ms >= fence.dwell_s * 1000.0:
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
    if state is not None and fix.ts_ms <= state.last_ts:
        return Outcome(state, [], stale=True)
    return _transition(state, tenant, fix.device_id, fix.ts_ms, fix.lon, fix.lat, inside, near, fences)


def reevaluate(
    state: DeviceState, device_id: str, inside: Collection[str], near: Collection[str], fences: Mapping[str, Fence]
) -> Outcome:
    """Re-apply a device's last fix after fences changed: exits from deleted or
    shrunk fences, enters into new or grown ones, at the last fix's time and place."""
    return _transition(state, state.tenant, device_id, state.last_ts, state.lon, state.lat, inside, near, fences)

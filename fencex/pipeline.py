"""The batch pipeline: fixes + fence index + device states -> events.

Pure: no Kafka, no Redis. The processor service feeds it a batch of fixes read
from the broker and the device states it holds; it returns the events to
publish, the states to save and the counts for the metrics. The geometry is one
vectorised index lookup per batch; the per-fix Python work is the detector, with
a fast path for the common case of a device whose set of fences did not change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field

from fencex.detector import DeviceState, Outcome, detect, reevaluate
from fencex.event import Event
from fencex.fix import Fix
from fencex.index import FenceIndex


@dataclass(slots=True)
class Processed:
    events: list[Event] = field(default_factory=list)
    dirty: dict[str, DeviceState] = field(default_factory=dict)
    fixes: int = 0  # fixes applied
    stale: int = 0  # fixes dropped: not newer than the device's last accepted fix
    inside: int = 0  # fixes inside at least one fence (FenceX's "intersections")
    candidates: int = 0  # (fix, fence) pairs tested exactly


def _dwell_pending(state: DeviceState, index: FenceIndex, ts_ms: int) -> bool:
    """Whether a member fence changed, vanished or has a dwell due at ``ts_ms``."""
    by_id = index.by_id
    for fid, m in state.members.items():
        fence = by_id.get(fid)
        if fence is None or fence.version != m.version:
            return True
        if fence.dwell_s and not m.dwelled and ts_ms - m.since_ms >= fence.dwell_s * 1000.0:
            return True
    return False


def process(
    fixes: list[Fix], index: FenceIndex, states: MutableMapping[str, DeviceState], tenant_of: Callable[[str], str]
) -> Processed:
    """Apply ``fixes`` in order. ``states`` holds every known device of these
    fixes (missing = never seen) and is updated in place."""
    out = Processed()
    if not fixes:
        return out
    tenants = [tenant_of(f.device_id) for f in fixes]
    lons = [f.lon for f in fixes]
    lats = [f.lat for f in fixes]
    inside_rows, out.candidates = index.lookup_counted(lons, lats, tenants)
    near_rows = index.lookup(lons, lats, tenants, near=True) if index.has_buffers() else None
    rows = index.fences
    by_id = index.by_id
    events = out.events
    dirty = out.dirty
    for i, fix in enumerate(fixes):
        tenant = tenants[i]
        inside = inside_rows[i]
        state = states.get(fix.device_id)
        if state is not None and state.tenant != tenant:
            # Re-registered to another farm: the old farm sees the device leave.
            gone = reevaluate(state, fix.device_id, (), (), by_id)
            events.extend(gone.events)
            state = None
        if state is not None:
            if fix.ts_ms <= state.last_ts:
                out.stale += 1
                continue
            if inside:
                out.inside += 1
            near = near_rows[i] if near_rows is not None else ()
            members = state.members
            if (
                not near
                and len(inside) == len(members)
                and all(rows[r].id in members for r in inside)
                and not (members and _dwell_pending(state, index, fix.ts_ms))
            ):
                # Fast path: same fences as before, nothing due. Move the device.
                state.last_ts, state.lon, state.lat = fix.ts_ms, fix.lon, fix.lat
                dirty[fix.device_id] = state
                out.fixes += 1
                continue
        if inside:
            out.inside += 1
        inside_ids = [rows[r].id for r in inside]
        near_ids = [rows[r].id for r in near_rows[i]] if near_rows is not None else ()
        result: Outcome = detect(state, fix, tenant, inside_ids, near_ids, by_id)
        states[fix.device_id] = dirty[fix.device_id] = result.state  # type: ignore[assignment]
        events.extend(result.events)
        out.fixes += 1
    return out


def reevaluate_all(
    index: FenceIndex, states: MutableMapping[str, DeviceState], devices: Iterable[str] | None = None
) -> Processed:
    """After fences changed: re-apply every (or each named) device's last fix."""
    out = Processed()
    ids = [d for d in (states.keys() if devices is None else devices) if d in states]
    if not ids:
        return out
    sts = [states[d] for d in ids]
    lons = [s.lon for s in sts]
    lats = [s.lat for s in sts]
    tenants = [s.tenant for s in sts]
    inside_rows = index.lookup(lons, lats, tenants)
    near_rows = index.lookup(lons, lats, tenants, near=True) if index.has_buffers() else None
    rows = index.fences
    for i, device_id in enumerate(ids):
        inside_ids = [rows[r].id for r in inside_rows[i]]
        near_ids = [rows[r].id for r in near_rows[i]] if near_rows is not None else ()
        state = sts[i]
        if set(inside_ids) == state.members.keys() and not (
            state.members and _dwell_pending(state, index, state.last_ts)
        ):
            continue
        result = reevaluate(state, device_id, inside_ids, near_ids, index.by_id)
        if (
            result.events
            or result.state.members.keys() != state.members.keys()
            or any(m.version != state.members[k].version for k, m in result.state.members.items())
        ):
            states[device_id] = out.dirty[device_id] = result.state  # type: ignore[assignment]
            out.events.extend(result.events)
    return out

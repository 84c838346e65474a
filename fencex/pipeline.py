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

from fencex.detector import DeviceState, Outcome, detect, is_stale, reevaluate, unchanged
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
        if is_stale(state, fix.ts_ms):
            out.stale += 1
            continue
        out.fixes += 1
        if inside:
            out.inside += 1
        inside_ids = [rows[r].id for r in inside] if inside else ()
        near_ids = [rows[r].id for r in near_rows[i]] if near_rows is not None and near_rows[i] else ()
        if state is not None and unchanged(state, fix.ts_ms, inside_ids, near_ids, by_id):
            # Fast path: the detector's own rule says nothing changes. Move the device.
            state.last_ts, state.lon, state.lat = fix.ts_ms, fix.lon, fix.lat
            dirty[fix.device_id] = state
            continue
        result: Outcome = detect(state, fix, tenant, inside_ids, near_ids, by_id)
        states[fix.device_id] = dirty[fix.device_id] = result.state  # type: ignore[assignment]
        events.extend(result.events)
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
        if unchanged(state, state.last_ts, inside_ids, near_ids, index.by_id):
            continue
        # something changes: an enter or exit, a dwell due, or a member's new version to keep
        result = reevaluate(state, device_id, inside_ids, near_ids, index.by_id)
        states[device_id] = out.dirty[device_id] = result.state  # type: ignore[assignment]
        out.events.extend(result.events)
    return out

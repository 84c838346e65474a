"""The batch pipeline: fixes + fence index + device states -> events.

Pure: no Kafka, no Redis. The processor service feeds it a batch of fixes read
from the broker and the device states it holds; it returns the events to
publish, the states to save and the counts for the metrics. The geometry is one
vectorised index lookup per batch; the per-fix Python work is the detector, with
a fast path for the common case of a device whose set of fences did not change
and of whose fix the herd rules have nothing to say.

The herd rules apply when the caller says which hold per farm (``rules_of``:
tenant -> :class:`~fencex.herd.HerdRules`; :func:`default_rules` gives every farm
the defaults) and, optionally, which fences are a device's pastures and exclusion
zones (``mob_of``: device id -> :class:`~fencex.herd.Mob`, or None for the farm's
default mob: all its pastures and exclusion zones). Without ``rules_of``, the
fence rules alone (enter, exit, dwell), as before.

Rotation schedules (:mod:`fencex.schedule`): a fence inactive at a fix's time counts as absent
for it (its ids are taken out of the fix's fences and of the mob's pastures and exclusion zones),
so a member exits it when it closes and one inside enters it when it opens. The time is the later
of the fix's and the last transition the device was re-evaluated at (``DeviceState.sched_ms``):
activity never goes back for a device. Only farms with a scheduled fence pay for it.
:func:`reevaluate_all` with ``at_ms`` applies a transition: the events are at its instant.

Grazing time (:mod:`fencex.grazing`) is kept with the herd rules (``rules_of``): each applied fix of a
device with a state credits the fences it was a member of since its previous fix (capped at the farm's
``silence_s``), into ``Processed.grazing``; so does a transition that changes a device's fences. The
fast path pays a few dict operations for a device inside a fence, nothing for one outside all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fencex.detector import DeviceState, Outcome, detect, is_stale, move, reevaluate, unchanged
from fencex.event import Event
from fencex.fence import Fence
from fencex.fix import Fix
from fencex.grazing import UTC_DAYS, Cells, Days, Grazing, cap_of, credit_after, days_of, totals
from fencex.herd import DEFAULT_RULES, NO_HERD, NO_MOB, HerdRules, Mob, steady
from fencex.index import FarmShard, FenceIndex
from fencex.schedule import FarmSchedules

RulesOf = Callable[[str], HerdRules]  # tenant -> the farm's herd rules
MobOf = Callable[[str], Mob | None]  # device id -> its mob (None: the farm's default mob)


class _Active(Mapping[str, Fence]):
    """The index's fences but the inactive ones: an inactive fence is as a deleted one."""

    __slots__ = ("fences", "off")

    def __init__(self, fences: Mapping[str, Fence], off: frozenset[str]) -> None:
        self.fences, self.off = fences, off

    def __getitem__(self, fid: str) -> Fence:
        if fid in self.off:
            raise KeyError(fid)
        return self.fences[fid]

    def __iter__(self) -> Iterator[str]:
        return (fid for fid in self.fences if fid not in self.off)

    def __len__(self) -> int:
        return sum(1 for _ in self)


Scope = tuple[Sequence[str], Sequence[str], Mob, Mapping[str, Fence]]  # inside, near, mob, fences


def _active(plan: FarmSchedules, at_ms: int, scope: Scope, cache: dict[Any, Any]) -> Scope:
    """A fix's fences, the device's mob and the fences by id without the farm's fences inactive at ``at_ms``."""
    off = plan.inactive_at(at_ms)
    if not off:
        return scope
    inside, near, mob, fences = scope
    key = (mob, off)
    active = cache.get(key)
    if active is None:
        active = cache[key] = Mob(mob.pastures - off, mob.exclusions - off, mob.id)
    view = cache.get(off)
    if view is None:
        view = cache[off] = _Active(fences, off)
    return [f for f in inside if f not in off], [f for f in near if f not in off], active, view


Farm = tuple[HerdRules, Mob, int | None, Days, FarmShard]


def _farm(tenant: str, index: FenceIndex, rules_of: RulesOf | None) -> Farm:
    """A farm's rules, default mob, grazing cap and days (cap None: no grazing, as with the fence rules
    alone), and its fences (its shard of the index)."""
    shard = index.farm(tenant)
    if rules_of is None:
        return NO_HERD, NO_MOB, None, UTC_DAYS, shard
    rules = rules_of(tenant)
    cap = cap_of(rules)
    return rules, shard.mob, cap, days_of(rules.timezone) if cap is not None else UTC_DAYS, shard


def default_rules(tenant: str) -> HerdRules:
    """Every farm: the default herd rules."""
    return DEFAULT_RULES


@dataclass(slots=True)
class Processed:
    events: list[Event] = field(default_factory=list)
    dirty: dict[str, DeviceState] = field(default_factory=dict)
    fixes: int = 0  # fixes applied
    stale: int = 0  # fixes dropped: not newer than the device's last accepted fix
    inside: int = 0  # fixes inside at least one fence (FenceX's "intersections")
    candidates: int = 0  # (fix, fence) pairs tested exactly
    untrusted: dict[str, int] = field(
        default_factory=dict
    )  # applied fixes not trusted, by reason (herd.UNTRUSTED_REASONS)
    # for the tracks (:mod:`fencex.track`): the positions in ``fixes`` of those applied, the time of each one's
    # device's fix before it (-1: none: a new device, or one moved to another farm, whose track starts again),
    # and of the fixes older than their device's last (not applied: late, for :mod:`fencex.late`)
    applied: list[int] = field(default_factory=list)
    prev: list[int] = field(default_factory=list)
    late: list[int] = field(default_factory=list)
    grazing: Grazing = field(default_factory=dict)  # (tenant, fence, mob, day) -> ms inside (fencex.grazing)


def process(
    fixes: list[Fix],
    index: FenceIndex,
    states: MutableMapping[str, DeviceState],
    tenant_of: Callable[[str], str],
    rules_of: RulesOf | None = None,
    mob_of: MobOf | None = None,
    now_ms: int = 0,
) -> Processed:
    """Apply ``fixes`` in order. ``states`` holds every known device of these
    fixes (missing = never seen) and is updated in place. ``now_ms``: when the fixes
    arrived, on the worker's clock: each fresh fix's device is seen then (``seen_ms``,
    what silence is judged from); 0 leaves ``seen_ms`` alone."""
    out = Processed()
    if not fixes:
        return out
    tenants = [tenant_of(f.device_id) for f in fixes]
    lons = [f.lon for f in fixes]
    lats = [f.lat for f in fixes]
    inside_found, out.candidates = index.lookup_counted(lons, lats, tenants)
    near_found = index.lookup(lons, lats, tenants, near=True) if index.has_buffers() else None
    events = out.events
    dirty = out.dirty
    untrusted = out.untrusted
    # tenant -> its rules, default mob, grazing cap (None: no grazing), days and fences, looked up once a batch
    farms: dict[str, Farm] = {}
    grazing: Cells = {}
    cache: dict[Any, Any] = {}  # (mob, inactive ids) -> the mob without them; inactive ids -> the fences without
    for i, fix in enumerate(fixes):
        tenant = tenants[i]
        farm = farms.get(tenant)
        if farm is None:
            farm = farms[tenant] = _farm(tenant, index, rules_of)
        rules, mob, cap, days, shard = farm
        if mob_of is not None and rules_of is not None:
            mob = mob_of(fix.device_id) or mob
        inside_ids: Sequence[str] = inside_found[i]
        state = states.get(fix.device_id)
        if state is not None and state.tenant != tenant:
            # Re-registered to another farm: the old farm sees the device leave its fences, and
            # `transferred` (at the last fix it had) takes it off all its alert lists.
            gone = reevaluate(state, fix.device_id, (), (), index.farm(state.tenant).by_id)
            events.extend(gone.events)
            events.append(Event("transferred", state.tenant, fix.device_id, "", 0, state.last_ts, state.lon, state.lat))
            state = None
        if is_stale(state, fix.ts_ms):
            out.stale += 1
            if fix.ts_ms < state.last_ts:  # type: ignore[union-attr]  # a stale fix has a state
                out.late.append(i)
            continue
        out.fixes += 1
        out.applied.append(i)
        out.prev.append(-1 if state is None else state.last_ts)
        if inside_ids:
            out.inside += 1
        if cap is not None and state is not None and state.members:
            credit_after(grazing, state, mob.id, fix.ts_ms, cap, days)
        near_ids: Sequence[str] = near_found[i] if near_found is not None else ()
        fences: Mapping[str, Fence] = shard.by_id
        if (plan := shard.schedules) is not None:
            at = fix.ts_ms if state is None else max(fix.ts_ms, state.sched_ms)
            inside_ids, near_ids, mob, fences = _active(plan, at, (inside_ids, near_ids, mob, fences), cache)
        if (
            state is not None
            and steady(state, fix, rules)
            and unchanged(state, fix.ts_ms, inside_ids, near_ids, fences, mob)
        ):
            # Fast path: the detector's own rules say nothing changes. Move the device.
            move(state, fix, now_ms)
            dirty[fix.device_id] = state
            continue
        result: Outcome = detect(state, fix, tenant, inside_ids, near_ids, fences, rules, mob, shard.distance_m, now_ms)
        states[fix.device_id] = dirty[fix.device_id] = result.state  # type: ignore[assignment]
        events.extend(result.events)
        if result.untrusted:
            untrusted[result.untrusted] = untrusted.get(result.untrusted, 0) + 1
    out.grazing = totals(grazing)
    return out


def reevaluate_all(
    index: FenceIndex,
    states: MutableMapping[str, DeviceState],
    devices: Iterable[str] | None = None,
    mob_of: MobOf | None = None,
    herd: bool = False,
    at_ms: int = 0,
    rules_of: RulesOf | None = None,
) -> Processed:
    """After fences (or mobs) changed: re-apply every (or each named) device's last accepted fix.
    ``herd``: escapes and returns too (``mob_of`` as for :func:`process`). ``at_ms``: a schedule's
    transition at that instant: the devices that have not seen it (their last accepted fix and
    transition are before it) are re-evaluated with the fences active then, their events at ``at_ms``;
    with ``rules_of`` (the farms' rules, as for :func:`process`), a device whose fences the transition
    changes has its fences until then credited (``Processed.grazing``). A fence change credits nothing:
    its events are at the device's last accepted fix, and so is the change of its grazing."""
    out = Processed()
    ids = [d for d in (states.keys() if devices is None else devices) if d in states and states[d].accepted[0] >= 0]
    if at_ms:
        ids = [d for d in ids if max(states[d].accepted[0], states[d].sched_ms) < at_ms]
    if not ids:
        return out
    sts = [states[d] for d in ids]
    places = [s.accepted for s in sts]
    lons = [p[1] for p in places]
    lats = [p[2] for p in places]
    tenants = [s.tenant for s in sts]
    inside_found = index.lookup(lons, lats, tenants)
    near_found = index.lookup(lons, lats, tenants, near=True) if index.has_buffers() else None
    cache: dict[Any, Any] = {}
    farms: dict[str, Farm] = {}
    grazing: Cells = {}
    for i, device_id in enumerate(ids):
        inside_ids: Sequence[str] = inside_found[i]
        near_ids: Sequence[str] = near_found[i] if near_found is not None else ()
        state = sts[i]
        farm = farms.get(state.tenant)
        if farm is None:
            farm = farms[state.tenant] = _farm(state.tenant, index, rules_of)
        shard = farm[4]
        mob = NO_MOB
        if herd or rules_of is not None:
            mob = (mob_of(device_id) if mob_of is not None else None) or shard.mob
        owner = mob if herd else NO_MOB  # the mob whose pastures count for escapes (none without the herd)
        fences: Mapping[str, Fence] = shard.by_id
        if (plan := shard.schedules) is not None:
            at = at_ms or max(places[i][0], state.sched_ms)
            inside_ids, near_ids, owner, fences = _active(plan, at, (inside_ids, near_ids, owner, fences), cache)
        if unchanged(state, places[i][0], inside_ids, near_ids, fences, owner, fresh=False):
            continue
        # something changes: an enter or exit, a dwell due, a member's new version to keep, an escape or return
        if at_ms and rules_of is not None:
            _, _, cap, days, _ = farm
            if cap is not None:
                credit_after(grazing, state, mob.id, at_ms, cap, days)
        result = reevaluate(state, device_id, inside_ids, near_ids, fences, owner, shard.distance_m, at_ms)
        states[device_id] = out.dirty[device_id] = result.state  # type: ignore[assignment]
        out.events.extend(result.events)
    out.grazing = totals(grazing)
    return out

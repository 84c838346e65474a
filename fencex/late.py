"""Late fixes: the events as if a device's fixes had arrived in order (issue 12, part 2).

A fix older than the device's newest but within its track's window is not dropped as stale:
:func:`merge` puts it into the device's :class:`~fencex.track.Track` at its time, replays the
track through :func:`fencex.detector.detect` from the nearest kept state before it, and compares
the replay's events with those published for the same fixes:

- an event the replay gives and that was not published is published now, ``late`` true, with the
  id in-order arrival gives it;
- an event published that the replay does not give is withdrawn by a ``retract`` naming its id
  (once: a retracted id leaves the track's published ids; should a later merge bring it back and
  withdraw it again, that retract counts the earlier one and so has another id);
- the device's state becomes the replay's final state (the worker's clock, ``seen_ms`` and
  ``silent``, kept from the current state).

Deterministic: the same batch merged into the same saved state and track (a replay after a crash)
gives the same events, ids and track. A fix at the time of one already held (or seen by the base) is
a duplicate and changes nothing; one older than the window (of the newest fix's time) or than the
track's base (the cap has dropped what came before) is dropped and counted; one newer than the
newest is not late and is handed back for the live path.

What the replay judges with: the fences, the farm's rules and the device's mob given now. Over
fixes whose fences or rules changed since they were live, the replay's events are those of today's
fences, and the differences show as retractions and replacements (the in-order equivalence is for
fences and rules that stay as they are over the span, as the property test holds them).

Grazing (:mod:`fencex.grazing`): ``Merged.grazing`` is what the merge changes in the device's grazing
time: the replay of the merged span (from the state the replay starts from to the newest fix) minus
the same span as it was credited (its held fixes replayed from the same state), by the same rule as
the live path (:func:`fencex.grazing.credit_after`); keys whose time does not change are left out.
Added to the grazing kept, it gives the grazing of the fixes in order (the property test holds it).
None with rules that keep none (``NO_HERD``: no finite ``silence_s``).

Replay from snapshots, not from the base: the track keeps the state after every ``snap_every``
fixes (about 1.5 bytes a fix at 100), so a merge replays the fixes after its first late fix plus at
most ``snap_every``, not the whole track (2,000 fixes); replaying from the base alone would save
those bytes and cost up to the whole window of replay per late batch.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fencex.detector import DeviceState, detect
from fencex.event import RETRACT, Event
from fencex.fence import Fence
from fencex.fix import Fix
from fencex.grazing import Cells, Grazing, add, cap_of, credit_after, days_of, totals
from fencex.herd import NO_HERD, NO_MOB, HerdRules, Mob
from fencex.index import FenceIndex
from fencex.pipeline import _active
from fencex.track import CAP, REPLAYED, SNAP_EVERY, WINDOW_MS, Track, frozen


@dataclass(slots=True)
class Merged:
    events: list[Event]  # to publish: the retracts first, then the late events in time order
    state: DeviceState  # the device's state now
    track: Track  # the track with the late fixes (trimmed), to save with the state
    too_old: int = 0  # late fixes dropped: older than the window or than the track's base
    duplicates: int = 0  # late fixes at the time of a fix already seen: nothing changed
    newer: list[Fix] = field(default_factory=list)  # not late (newer than the newest fix): for the live path
    replayed: int = 0  # fixes run through the detector
    grazing: Grazing = field(default_factory=dict)  # the change in grazing time, to add (fencex.grazing)


def merge(
    device_id: str,
    current: DeviceState,
    track: Track,
    late: Sequence[Fix],
    index: FenceIndex,
    rules: HerdRules = NO_HERD,
    mob: Mob = NO_MOB,
    now_ms: int = 0,
    window_ms: int = WINDOW_MS,
    cap: int = CAP,
    snap_every: int = SNAP_EVERY,
) -> Merged:
    """Merge ``late`` fixes of one device into its ``track`` and say what to publish.

    ``current``: the device's state (its last fix is the track's newest); ``index``: today's fences
    (the merged fixes are looked up in it, as the pipeline does); ``rules``, ``mob``: the farm's herd
    rules and the device's mob; ``now_ms``: when the fixes arrived (the device's ``seen_ms``; 0: kept).
    Neither ``current`` nor ``track`` is changed.

    The state now: the issue asks that a late fix change the device's membership now only when it is
    the newest. With the plain fence rules that is what the replay gives (memberships are those of the
    newest fix), but the rules that read history carry a late fix's effect to now: the exit buffer
    (a late fix beyond it ends a membership the near fixes after it do not renew), the time since an
    enter (a dwell due earlier), escape confirmation, a jump held back, battery hysteresis. Then the
    state is the replay's, which is the in-order state, and the events that differ are published
    (late) or retracted: the property test holds the final state equal to the in-order state.

    A track out of step with ``current`` (not ending at its last fix: one started before tracks were
    kept, or lost) is started again from ``current``, and the late fixes counted too old.
    """
    if track.newest != current.last_ts:
        track = Track(base=frozen(current))
    newest, floor = track.newest, track.floor
    held = set(track.ts)
    fresh: dict[int, Fix] = {}
    out = Merged([], current, track)
    for fix in late:
        t = fix.ts_ms
        if t > newest:
            out.newer.append(fix)
        elif t in held or t in fresh or t == floor:
            out.duplicates += 1
        elif t < newest - window_ms or t < floor:
            out.too_old += 1
        else:
            fresh[t] = fix
    if not fresh:
        return out
    first = min(fresh)
    k = bisect.bisect_left([s.last_ts for s in track.snaps], first)
    start = track.snaps[k - 1] if k else track.base
    start_ts = start.last_ts if start is not None else -1
    keep = bisect.bisect_right(track.ts, start_ts)
    fixes = sorted([*track.fixes(device_id, keep), *fresh.values()], key=lambda f: f.ts_ms)

    tenant = current.tenant
    lons = [f.lon for f in fixes]
    lats = [f.lat for f in fixes]
    inside_found = index.lookup(lons, lats, tenant)
    near_found = index.lookup(lons, lats, tenant, near=True) if index.has_buffers() else None
    shard = index.farm(tenant)
    by_id, distance = shard.by_id, shard.distance_m
    state = frozen(start) if start is not None and (start.silent or start.seen_ms) else start
    snaps = list(track.snaps[:k])
    replayed: list[Event] = []
    plan = shard.schedules
    cache: dict[Any, Any] = {}
    most = cap_of(rules)  # the grazing cap (not the track's)
    days = days_of(rules.timezone)
    # the span as it was credited: its held fixes alone, replayed too, from where the two replays part (the
    # first late fix: before it they are one, and their credits cancel)
    was, split = state, False
    before: Cells = {}
    after: Cells = {}
    for j, fix in enumerate(fixes):
        inside: Sequence[str] = inside_found[j]
        near: Sequence[str] = near_found[j] if near_found is not None else ()
        fences: Mapping[str, Fence] = by_id
        m = mob
        if plan is not None:  # as the pipeline: a fence inactive at the fix's time is as absent
            at = fix.ts_ms if state is None else max(fix.ts_ms, state.sched_ms)
            inside, near, m, fences = _active(plan, at, (inside, near, mob, by_id), cache)
        if most is not None:
            late_fix = fix.ts_ms in fresh
            if late_fix and not split:
                was, split = state, True
            if split:
                if state is not None:
                    credit_after(after, state, mob.id, fix.ts_ms, most, days)
                if not late_fix:
                    if was is not None:
                        credit_after(before, was, mob.id, fix.ts_ms, most, days)
                    was = detect(was, fix, tenant, inside, near, fences, rules, m, distance).state
        result = detect(state, fix, tenant, inside, near, fences, rules, m, distance)
        state = result.state
        replayed.extend(e for e in result.events if e.type in REPLAYED)
        if (j + 1) % snap_every == 0 and state is not None:
            snaps.append(state)  # detect returns a new state each fix and never changes it after
    assert state is not None  # at least one fix replayed
    out.grazing = add(totals(after), totals(before), -1)

    new = Track(
        track.base,
        [*track.ts[:keep], *(f.ts_ms for f in fixes)],
        [*track.lon[:keep], *lons],
        [*track.lat[:keep], *lats],
        [*track.acc[:keep], *((f.extra or {}).get("accuracy_m") for f in fixes)],
        [*track.bat[:keep], *((f.extra or {}).get("battery") for f in fixes)],
        snaps=snaps,
        retracted=dict(track.retracted),
    )
    new.ids = {t: v for t, v in track.ids.items() if t <= start_ts}
    new.record(replayed)
    given = {bytes.fromhex(e.event_id) for e in replayed}
    place = {f.ts_ms: f for f in fixes}
    for t in sorted(t for t in track.ids if t > start_ts):
        for gone in track.ids[t]:
            if gone in given:
                continue
            _, times = track.retracted.get(gone, (t, 0))
            p = place[t]
            out.events.append(
                Event(RETRACT, tenant, device_id, "", 0, t, p.lon, p.lat, turn=times, retracts=gone.hex())
            )
            new.retracted[gone] = (t, times + 1)
    published = {gone for t, v in track.ids.items() if t > start_ts for gone in v}
    out.events.extend(replace(e, late=True) for e in replayed if bytes.fromhex(e.event_id) not in published)
    new.trim(window_ms, cap)

    final = DeviceState.from_obj(state.to_obj())
    final.seen_ms = now_ms or current.seen_ms
    final.silent = current.silent
    out.state, out.track, out.replayed = final, new, len(fixes)
    return out

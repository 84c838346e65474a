"""Late fixes on the worker (issue 12, part 2): held, then merged into their devices' tracks.

A fix older than its device's newest (a collar uploading what it recorded offline, a gateway
resending) is not applied by the pipeline; the loop hands it here (:meth:`LateFixes.add`):

- older than the farm's track window behind the device's newest: dropped, counted ``too_old``;
- else held, and the first offset of its batch on its partition held too: the checkpoint commits
  no offset past it (:attr:`fencex.stream.checkpoint.Checkpoint.holds`) until it is merged, so a
  crash before the merge reads it again.

When a flush is due (or more than ``late_max`` fixes are held), :func:`merge_due` flushes what is
pending and waits for it (so the stored tracks and states are the worker's), reads the held
devices' tracks, and merges them one device at a time (:func:`fencex.late.merge`, the farm's
rules, the device's mob, today's fences), at most :data:`SLICE` fixes of a device at once, until
``budget_ms`` has passed, oldest first: the rest wait for the next flush, so a farm uploading a
day of fixes slows no other farm's live fixes by more than the budget per flush. Past
``late_max`` fixes held, the budget gives way to memory: merges go on until under it (a flood of
late fixes then costs the worker about twice what the same fixes cost live; quotas per farm are
the national-scale issue's). Each merge's events (late ones, retracts) are published;
the device's state, its new track (written whole), and its fence memberships and alert lists set
from the merged state go into the checkpoint; held offsets are released as their fixes are merged.

Replays are safe: a merge of fixes already merged finds them in the track (duplicates) and does
nothing; the same late batch merged into the same saved state and track gives the same events
and ids (:mod:`fencex.late`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fencex.detector import DeviceState
from fencex.errors import CorruptRecord
from fencex.event import Event
from fencex.fix import Fix
from fencex.herd import NO_HERD, NO_MOB
from fencex.late import merge
from fencex.stream.tracks import window_of
from fencex.track import Track

if TYPE_CHECKING:
    from fencex.stream.loop import Processor

log = logging.getLogger(__name__)
SLICE = 500  # late fixes of one device merged at once at most (about 6 ms of replay): the budget holds


@dataclass(slots=True)
class Held:
    fixes: list[Fix] = field(default_factory=list)
    partition: int = 0
    hold: int = 0  # the offset not to commit past until these are merged
    since: float = 0.0  # when the first was held (monotonic)


class LateFixes:
    def __init__(self, budget_ms: float = 20.0, late_max: int = 100_000) -> None:
        self.budget_ms, self.late_max = budget_ms, late_max
        self.held: dict[str, Held] = {}  # device -> its late fixes, oldest device first
        self.count = 0  # fixes held

    def add(self, fix: Fix, partition: int, offset: int) -> None:
        h = self.held.get(fix.device_id)
        if h is None:
            h = self.held[fix.device_id] = Held(partition=partition, hold=offset, since=time.monotonic())
        elif h.partition != partition:  # the device moved partition: hold both (the older offset is the other's)
            h.partition, h.hold = partition, offset
        h.hold = min(h.hold, offset)
        h.fixes.append(fix)
        self.count += 1

    def holds(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for h in self.held.values():
            if h.hold < out.get(h.partition, h.hold + 1):
                out[h.partition] = h.hold
        return out

    def drop(self, partitions: set[int] | None = None) -> None:
        """Forget the held fixes (of these partitions): they were not committed, and are read again."""
        for d in [d for d, h in self.held.items() if partitions is None or h.partition in partitions]:
            self.count -= len(self.held.pop(d).fixes)

    def due(self, flush_due: bool) -> bool:
        return bool(self.held) and (flush_due or self.count > self.late_max)


def hold(p: Processor, fixes: list[Fix], partitions: list[int], late: list[int]) -> None:
    """Hold ``fixes[i]`` for ``i`` in ``late`` (older than their device's newest) that are within their
    farm's window, and their batch's first offsets; the rest are dropped, counted ``too_old``."""
    if not late:
        return
    too_old = 0
    for i in late:
        fix, part = fixes[i], partitions[i]
        state = p.states[fix.device_id]
        if fix.ts_ms < state.last_ts - window_of(p, state.tenant):
            too_old += 1
            continue
        p.late.add(fix, part, p._inflight.get(part, (0, 0))[0])
    if too_old:
        p.metrics.late_fixes.labels("too_old").inc(too_old)
    p.checkpoint.holds = p.late.holds()


async def merge_due(p: Processor) -> None:
    """Flush and wait, then merge held devices until the budget is spent (all of them when more than
    ``late_max`` fixes are held: the worker's memory first). Called with the lock held."""
    late = p.late
    await p.flush()
    started = time.perf_counter()
    budget = late.budget_ms / 1000
    devices = list(late.held)
    events: list[Event] = []
    spent = False
    rewrites = p.checkpoint.pending.rewrites  # empty after the flush: a merge's tracks, as they will be saved
    while devices and not spent:
        chunk, devices = devices[:64], devices[64:]
        raws = await p.store.load_tracks([d for d in chunk if d in p.states and d not in rewrites], p.device_partition)
        for d in chunk:
            h = late.held.pop(d)
            take, rest = h.fixes[:SLICE], h.fixes[SLICE:]
            late.count -= len(take)
            if rest:  # one slice a device a pass: the rest at the next flush, or in the next pass
                late.held[d] = Held(rest, h.partition, h.hold, h.since)
            raw = rewrites.get(d, raws.get(d))  # merged in an earlier pass: its merged track (nothing appended)
            try:
                events.extend(_merge_one(p, d, Held(take, h.partition, h.hold, h.since), raw))
            except Exception:  # a merge that raises must not stop every farm's (counted, logged)
                log.exception("merging %d late fixes of %s failed: dropped", len(take), d)
                p.metrics.late_fixes.labels("failed").inc(len(take))
            if time.perf_counter() - started >= budget and late.count <= late.late_max:
                spent = True
                break
        if not devices and not spent and late.count > late.late_max:
            devices = list(late.held)  # memory first: another slice of each device (a collar's flood)
    await p.outbox.events(events)
    p.checkpoint.holds = late.holds()
    p.metrics.late_merge_seconds.observe(time.perf_counter() - started)


def _merge_one(p: Processor, d: str, h: Held, raw: bytes | None) -> list[Event]:
    """Merge one device's held fixes into the checkpoint; the events to publish."""
    m = p.metrics
    current = p.states.get(d)
    if current is None:  # partition given up and taken back meanwhile: read again from its offsets
        m.late_fixes.labels("too_old").inc(len(h.fixes))
        return []
    track = Track()
    if raw is not None:
        try:
            track = Track.from_bytes(raw).adopted()
        except CorruptRecord as exc:
            m.tracks_corrupt.inc()
            log.warning("track of %s does not read (%s): started again from its state", d, exc)
    tenant = current.tenant
    rules, mob = NO_HERD, NO_MOB
    if p.rules_of is not None:
        rules = p.rules_of(tenant)
        mob = (p.mob_of(d) if p.mob_of is not None else None) or p.index.mob(tenant)
    now_ms = int(p.clock() * 1000)
    out = merge(d, current, track, h.fixes, p.index, rules, mob, now_ms, window_of(p, tenant), p.settings.track_cap)
    merged = len(h.fixes) - out.too_old - out.duplicates - len(out.newer)
    for outcome, n in (("merged", merged), ("duplicate", out.duplicates), ("too_old", out.too_old)):
        if n:
            m.late_fixes.labels(outcome).inc(n)
    if out.newer:  # cannot be: they were older than the state when held, and states only move forward
        m.late_fixes.labels("newer").inc(len(out.newer))
        log.warning("%d held fixes of %s are newer than its state: dropped", len(out.newer), d)
    if not merged:
        return []
    state: DeviceState = out.state
    p.states[d] = state
    pending = p.checkpoint.pending
    p.checkpoint.add({d: state}, out.events, out.grazing)
    pending.rewrites[d] = out.track.to_bytes()
    pending.tracks[d] = bytearray()  # the next live fix appends relative to the merged newest
    pending.anchors[d] = -1  # written whole first: no anchor needed
    # before: the state saved (another merge of the device in this snapshot keeps the first's)
    pending.resets[d] = (pending.resets[d][0] if d in pending.resets else current, state)
    return out.events

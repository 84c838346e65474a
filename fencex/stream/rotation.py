"""The worker's rotation clock: fences that open and close on schedule (:mod:`fencex.schedule`).

A transition (a scheduled fence of a farm opening or closing) re-evaluates the held devices of
that farm at the transition's instant, with no fix needed: those inside a fence that opens enter it,
those inside one that closes exit it, and escapes and returns follow
(:func:`fencex.pipeline.reevaluate_all` with ``at_ms``). The events are at the transition's instant,
so their ids are the same whoever applies it and however often.

*When*: a heap of ``(instant, farm)``, each scheduled farm's next transition on the worker's
clock, laid again when the index is swapped (the changed farms' only, unless it was reloaded in
full). When the clock passes one (checked between batches, under the loop's lock), the checkpoint
is flushed (the events' ids are made of saved state) and the farm's held devices are re-evaluated
at it, once.

*Once, across rebalances and restarts*: a device re-evaluated at a transition keeps its instant
(``DeviceState.sched_ms``, saved with it); a fix keeps its own time. A device has seen every
transition up to the later of the two, and is never re-evaluated at one of those again. When
partitions are loaded, and when the index is swapped (a schedule may have changed under a device),
the transitions each device has not seen, up to now, are applied in order (:func:`catch_up`; at most
``schedule_catchup_s`` back: older ones are left out, the device's fences are right from the first
transition applied; at most :data:`CATCH_UP_MAX` of them, then the latest, so they are right now).
A device whose state was saved with no change at a transition is judged at it
again: with the same state, it gives nothing again.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import TYPE_CHECKING

from fencex.index import FenceIndex
from fencex.pipeline import Processed, reevaluate_all
from fencex.stream import cache

if TYPE_CHECKING:
    from fencex.stream.loop import Processor

MAX_DUE = 1000  # transitions applied in one step at most (a worker asleep for years does not spin)
CATCH_UP_MAX = 1000  # missed transitions applied in order at most (then the latest one: the state now)


class TransitionHeap:
    """The next transition of each farm with a scheduled fence, soonest first.

    ``next`` holds each farm's entry; a farm laid again (:meth:`reschedule`) is pushed anew and its
    older entry, now stale, is dropped when it comes to the top (the heap is laid again from ``next``
    once the stale entries outnumber the live ones: a farm changing its schedule in a loop does not grow it).
    """

    def __init__(self) -> None:
        self.heap: list[tuple[int, str]] = []
        self.next: dict[str, int] = {}  # farm -> the instant of its live entry

    def rebuild(self, index: FenceIndex, now_ms: int) -> None:
        """Every scheduled farm's next transition after ``now_ms`` (a walk over every schedule)."""
        self.next = {farm: t for farm, plan in index.schedules.items() if (t := plan.next_change(now_ms)) is not None}
        self._lay()

    def reschedule(self, index: FenceIndex, farms: Iterable[str], now_ms: int) -> None:
        """These farms' schedules may have changed (or gone): their next transitions after ``now_ms``."""
        for farm in farms:
            plan = index.schedules.get(farm)
            t = plan.next_change(now_ms) if plan is not None else None
            if t is None:
                self.next.pop(farm, None)
            elif self.next.get(farm) != t:
                self.next[farm] = t
                heapq.heappush(self.heap, (t, farm))
        if len(self.heap) > 2 * len(self.next) + 64:
            self._lay()
        self._drop_stale()

    def _lay(self) -> None:
        self.heap = [(t, farm) for farm, t in self.next.items()]
        heapq.heapify(self.heap)

    def _drop_stale(self) -> None:
        heap, live = self.heap, self.next
        while heap and live.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)

    def next_due(self) -> int | None:
        return self.heap[0][0] if self.heap else None

    def due(self, index: FenceIndex, now_ms: int) -> list[tuple[int, str]]:
        """The transitions at or before ``now_ms``, in order (each farm's next one pushed in its place)."""
        out: list[tuple[int, str]] = []
        heap = self.heap
        while heap and heap[0][0] <= now_ms and len(out) < MAX_DUE:
            at, farm = heapq.heappop(heap)
            out.append((at, farm))
            plan = index.schedules.get(farm)
            nxt = plan.next_change(at) if plan is not None else None
            if nxt is not None:
                self.next[farm] = nxt
                heapq.heappush(heap, (nxt, farm))
            else:
                self.next.pop(farm, None)
            self._drop_stale()
        return out


def _by_farm(p: Processor, devices: Iterable[str] | None, farms: Iterable[str]) -> dict[str, list[str]]:
    """The cached ``devices`` (None: every cached device) of ``farms``, by farm."""
    if devices is None:  # by the cache's index, not a scan of every held state
        return {f: ids for f in farms if (ids := p.cache.cached_of((f,)))}
    wanted = set(farms)
    states = p.states
    out: dict[str, list[str]] = {}
    for d in devices:
        s = states.get(d)
        if s is not None and s.tenant in wanted:
            out.setdefault(s.tenant, []).append(d)
    return out


def _reevaluate(p: Processor, devices: list[str], at_ms: int) -> Processed:
    herd = p.rules_of is not None
    return reevaluate_all(p.index, p.states, devices, p.mob_of, herd=herd, at_ms=at_ms, rules_of=p.rules_of)


async def catch_up(p: Processor, devices: Iterable[str] | None = None) -> None:
    """Apply, in order, the transitions up to now that the (named, else all held) devices have not seen."""
    schedules = p.index.schedules
    if not schedules:
        return
    now_ms = int(p.clock() * 1000)
    since = now_ms - int(p.settings.schedule_catchup_s * 1000)
    for farm, ids in _by_farm(p, devices, schedules).items():
        seen = min(max(p.states[d].accepted[0], p.states[d].sched_ms) for d in ids)
        plan = schedules[farm]
        ats = plan.changes(max(seen, since), now_ms, CATCH_UP_MAX)
        if len(ats) == CATCH_UP_MAX and (last := plan.latest_change(ats[-1], now_ms)) is not None:
            ats.append(last)  # more than a catch-up applies: the latest too, so the fences are right now
        for at in ats:
            out = _reevaluate(p, ids, at)
            if out.events or out.dirty:
                await p._publish_reevaluation(out)


async def apply_due(p: Processor) -> None:
    """The transitions the worker's clock has passed: each farm's held devices re-evaluated at each."""
    due = p.rotation.due(p.index, int(p.clock() * 1000))
    if not due:
        return
    await p.flush(wait=True)  # re-evaluated on saved states: a replay gives the same ids
    held = _by_farm(p, None, {farm for _, farm in due})
    for at, farm in due:
        # the farm's cached devices (one evicted by an earlier transition's loads is among the evicted)
        ids = [d for d in dict.fromkeys(held.get(farm, ())) if d in p.states]
        applied = bool(ids)
        if ids:
            await p._publish_reevaluation(_reevaluate(p, ids, at))
        async for loaded in cache.loaded(p, p.cache.of_farms((farm,)), "change"):  # then its evicted ones
            applied = True
            held.setdefault(farm, []).extend(loaded)  # cached now: for the farm's next transitions
            await p._publish_reevaluation(_reevaluate(p, loaded, at))
        if applied:
            p.metrics.schedule_transitions.inc()

"""The worker's silence watch: which of the devices it holds have sent nothing for their farm's silence time.

The rule is :func:`fencex.detector.silence_due` (the worker's clock, from ``seen_ms``: when the
device's last fix *arrived*, saved with its state). Walking every held device on every sweep
would cost a second of the event loop per million devices; instead each assigned partition
keeps a heap of ``(due_ms, device id)``, so a sweep pops only what is due. The heap is lazy:
a fix does not touch it (the hot path stays as it was); a popped device whose ``seen_ms`` moved
on is pushed back at its new due time, so a device has about one entry whatever its fix rate.
When a farm's silence time changes (:func:`retime`), its devices are pushed again at their new due
times; their older entries, of an earlier generation than the farm's re-timing, are dropped when
popped, so a device still has one entry however often its farm changes its settings.

A partition is swept only once its consumer has caught up with it (:func:`caught_up`): after a
restart with a backlog in Kafka, a device whose fixes wait in the backlog was not silent, and
its ``seen_ms`` is only brought up to date when they are read. The silent mark is saved with
the state (``DeviceState.silent``) through the checkpoint, fenced like every save, so a device
whose partition moves is marked once: by the old owner (saved before it gives the partition
up) or by the new one (which loads the state unmarked and finds it due), with the same event id.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Iterable, Mapping
from itertools import chain
from typing import TYPE_CHECKING

from fencex.detector import DeviceState, silence_due, silent_event
from fencex.event import Event
from fencex.pipeline import RulesOf
from fencex.stream import adoption, cache

if TYPE_CHECKING:
    from fencex.stream.loop import Processor


def caught_up(lag: Mapping[int, int], partitions: Iterable[int], max_lag: int) -> list[int]:
    """The partitions whose lag is known (the fetch high watermark) and at most ``max_lag`` records."""
    return [p for p in partitions if p in lag and lag[p] <= max_lag]


Entry = tuple[float, str, int, str]  # (due_ms, device id, generation, tenant)


class SilenceWatch:
    """Per partition, a heap of ``(due_ms, device id, generation, tenant)``; ``rules_of`` None (no herd
    rules): watches nothing. An entry is stale when its tenant was re-timed after it was pushed."""

    def __init__(self, rules_of: RulesOf | None) -> None:
        self.rules_of = rules_of
        self.heaps: dict[int, list[tuple[float, str, int, str]]] = {}
        self.generation = 0  # raised by each re-timing
        self.retimed: dict[str, int] = {}  # tenant -> the generation of its last re-timing
        self.pushed = 0  # entries pushed by re-timings since the heaps were last rid of stale ones
        self.parked: list[tuple[int, Entry]] = []  # due entries of evicted devices (partition, entry): to load

    def _due(self, state: DeviceState, now_ms: int) -> float:
        if state.silent or self.rules_of is None:
            return math.inf  # marked: resumed (and watched again) with its next fix
        if not state.seen_ms:
            state.seen_ms = now_ms  # arrival unknown (saved before it was kept): counted from now
        return state.seen_ms + self.rules_of(state.tenant).silence_s * 1000.0

    def load(self, partition: int, devices: Iterable[str], states: Mapping[str, DeviceState], now_ms: int) -> None:
        """Watch ``partition``'s devices from scratch (assigned, reloaded, or the rules changed)."""
        heap = []
        for d in devices:
            state = states.get(d)
            if state is not None:
                due = self._due(state, now_ms)
                if due != math.inf:
                    heap.append((due, d, self.generation, state.tenant))
        heapq.heapify(heap)
        self.heaps[partition] = heap

    def add(self, partition: int, device_id: str, state: DeviceState, now_ms: int) -> None:
        """One more device, in no order: :meth:`order` the partition's heap before the next sweep."""
        due = self._due(state, now_ms)
        if due != math.inf:
            self.heaps.setdefault(partition, []).append((due, device_id, self.generation, state.tenant))

    def order(self, partition: int) -> None:
        heapq.heapify(self.heaps.setdefault(partition, []))

    def watch(self, partition: int, device_id: str, state: DeviceState, now_ms: int) -> None:
        """One more device (first seen, loaded on its first fix, or resumed)."""
        due = self._due(state, now_ms)
        if due != math.inf:
            heapq.heappush(self.heaps.setdefault(partition, []), (due, device_id, self.generation, state.tenant))

    def retime(
        self,
        tenants: Iterable[str],
        held: Iterable[tuple[int, str, DeviceState]],
        states: Mapping[str, DeviceState],
        now_ms: int,
        where: Mapping[str, int] | None = None,
    ) -> None:
        """``tenants``' silence times changed: watch ``held`` (partition, device id, state: theirs) anew;
        their entries pushed before are stale from now on. Once the re-timings have pushed as many
        entries as half the heaps hold, the stale ones are dropped (amortised: a farm changing its
        settings in a loop does not grow the heaps); those of evicted devices (in ``where``, not in ``states``)
        are kept: judged when they come due, their state loaded then."""
        self.generation += 1
        for t in tenants:
            self.retimed[t] = self.generation
        for partition, d, state in held:
            self.watch(partition, d, state, now_ms)
            self.pushed += 1
        if self.pushed > self.size() // 2:
            self.pushed = 0
            retimed, out = self.retimed, where or {}
            for part, heap in self.heaps.items():
                live = [
                    e
                    for e in heap
                    if ((st := states.get(e[1])) is None and e[1] in out)
                    or (st is not None and not self._stale(e, st, retimed))
                ]
                heapq.heapify(live)
                self.heaps[part] = live

    @staticmethod
    def _stale(entry: tuple[float, str, int, str], state: DeviceState, retimed: Mapping[str, int]) -> bool:
        """Its farm re-timed its silences after it was pushed (and it is still that farm's device)."""
        tenant = entry[3]
        return tenant == state.tenant and entry[2] < retimed.get(tenant, 0)

    def size(self) -> int:
        return sum(len(h) for h in self.heaps.values())

    def sweep(
        self,
        partitions: Iterable[int],
        states: Mapping[str, DeviceState],
        device_partition: Mapping[str, int],
        now_ms: int,
        budget: int,
    ) -> tuple[dict[str, DeviceState], list[Event], bool]:
        """Mark silent the devices of ``partitions`` that are due (at most ``budget`` entries looked
        at); the marked states, their ``silent`` events, and whether the budget ran out first."""
        dirty: dict[str, DeviceState] = {}
        events: list[Event] = []
        if self.rules_of is None:
            return dirty, events, False
        for p in partitions:
            heap = self.heaps.get(p)
            while heap and heap[0][0] <= now_ms and budget > 0:
                budget -= 1
                entry = heapq.heappop(heap)
                state = states.get(entry[1])
                if state is not None:
                    self.judge(p, entry, state, device_partition, now_ms, dirty, events)
                elif entry[1] in device_partition:  # evicted (its state saved): loaded, then judged
                    self.parked.append((p, entry))
        return dirty, events, budget <= 0

    def judge(
        self,
        p: int,
        entry: Entry,
        state: DeviceState,
        device_partition: Mapping[str, int],
        now_ms: int,
        dirty: dict[str, DeviceState],
        events: list[Event],
    ) -> None:
        """A due entry popped from partition ``p``'s heap, with its device's state: marked silent (into
        ``dirty`` and ``events``), or watched again from its new due time, or dropped."""
        if state.silent or self.rules_of is None:
            return  # marked: resumed and watched again with its next fix
        d = entry[1]
        held = device_partition.get(d)
        if held != p:  # its fixes come on another partition now: watched there, if held here
            other = self.heaps.get(held) if held is not None else None
            if other is not None:
                heapq.heappush(other, entry)
            return
        if self._stale(entry, state, self.retimed):
            return  # its farm re-timed its silences since: watched by a newer entry
        if silence_due(state, now_ms, self.rules_of(state.tenant)):
            state.silent = True
            dirty[d] = state
            events.append(silent_event(d, state))
        else:  # a fix arrived since (or the farm's silence time grew): watched from then on
            due = self._due(state, now_ms)
            if now_ms < due != math.inf:
                heapq.heappush(self.heaps.setdefault(p, []), (due, d, self.generation, state.tenant))


# ------------------------------------------------------------------ the worker loop's side
# (called by fencex.stream.loop.Processor with its lock held, as fencex.stream.gauges reads it)


def rewatch(p: Processor, partitions: Iterable[int]) -> None:
    """Watch the held devices of ``partitions`` from scratch (loaded, or the fences or mobs changed)."""
    if p.rules_of is None:
        return
    by_partition: dict[int, list[str]] = {part: [] for part in partitions}
    for d, part in p.device_partition.items():
        if part in by_partition:
            by_partition[part].append(d)
    now_ms = int(p.clock() * 1000)
    for part, devices in by_partition.items():
        p.silence.load(part, devices, p.states, now_ms)


def unwatch(p: Processor, partitions: Iterable[int]) -> None:
    """Watch nothing of ``partitions`` (being loaded: :func:`watch_loaded`, then :func:`order`)."""
    for part in partitions:
        p.silence.heaps[part] = []


def watch_loaded(p: Processor, devices: Iterable[str]) -> None:
    """Devices loaded with their partitions (a chunk of them): watched, in no order yet."""
    if p.rules_of is None:
        return
    now_ms, where, states = int(p.clock() * 1000), p.device_partition, p.states
    for d in devices:
        p.silence.add(where[d], d, states[d], now_ms)


def order(p: Processor, partitions: Iterable[int]) -> None:
    for part in partitions:
        p.silence.order(part)


async def retime(p: Processor, tenants: set[str]) -> None:
    """These farms' silence times changed: watch their held devices anew (the cached ones found by farm,
    :meth:`~fencex.stream.cache.StateCache.cached_of`; the evicted ones loaded a chunk at a time)."""
    if p.rules_of is None:
        return
    held, where = p.generations, p.device_partition
    states = p.states
    theirs = [(where[d], d, states[d]) for d in p.cache.cached_of(tenants) if where.get(d) in held]
    now_ms = int(p.clock() * 1000)
    p.silence.retime(tenants, theirs, p.states, now_ms, where)
    async for ids in cache.loaded(p, p.cache.of_farms(tenants), "change"):
        for d in ids:
            if where.get(d) in held:
                p.silence.watch(where[d], d, p.states[d], now_ms)


def watch_new(p: Processor, loaded: Iterable[str], events: Iterable[Event], now_ms: int) -> None:
    """Devices held from this batch on (first seen, or loaded for their fix), and silent ones resumed."""
    if p.rules_of is None:
        return
    resumed = (e.device_id for e in events if e.type == "resumed")
    for d in chain(loaded, resumed):
        state = p.states.get(d)
        if state is not None:
            p.silence.watch(p.device_partition[d], d, state, now_ms)


async def sweep(p: Processor) -> None:
    """Mark silent the due devices of the partitions the worker has caught up with (a backlog still
    to read may hold their fixes), at most ``chunk_fixes`` a step, so the lock is held ~0.1 s at most;
    the events are published, the marks saved with the next flush."""
    p._swept = time.monotonic()
    if p._fetched != p._epoch or p._fenced:
        return  # nothing fetched since the assignment or the reload: the positions are not settled
    ready = caught_up(await p.consumer.settled_lag(), p.generations, p.settings.silence_max_lag)
    started = time.perf_counter()
    now_ms = int(p.clock() * 1000)
    dirty, events, more = p.silence.sweep(ready, p.states, p.device_partition, now_ms, p.settings.chunk_fixes)
    dirty, events = await adoption.confirm_silent(p, dirty, events)  # not those moved to another partition
    if more:  # a mass silence (a gateway down): the next chunk at the next step, not a sweep period later
        p._swept = 0.0
    await p.outbox.events(events)
    p.checkpoint.add(dirty, events)
    parked: dict[str, list[tuple[int, Entry]]] = {}
    for part, entry in p.silence.parked:
        parked.setdefault(entry[1], []).append((part, entry))
    p.silence.parked = []
    async for ids in cache.loaded(p, parked, "silence"):  # evicted devices due: loaded, then judged
        dirty, events = {}, []
        for d in ids:
            for part, entry in parked[d]:
                p.silence.judge(part, entry, p.states[d], p.device_partition, now_ms, dirty, events)
        dirty, events = await adoption.confirm_silent(p, dirty, events)
        await p.outbox.events(events)
        p.checkpoint.add(dirty, events)  # pinned (unsaved) before the cache evicts again
    p.metrics.silence_sweep.observe(time.perf_counter() - started)

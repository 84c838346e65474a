"""The worker's device states, bounded (issue 15, item 3): at most ``state_cache_max`` cached.

A worker holds the devices of its partitions (``Processor.device_partition``: every one of them,
about 110 bytes a device with its id) but caches at most ``bound`` of their states (about 660 bytes
each, measured: a state with one fence inside, loaded from Redis, plus its dict entry). Past the
bound, the least recently used are *evicted*: dropped from memory, their state being in Redis. A
state is evicted only once it is saved: one in the pending checkpoint or in the snapshot being saved
(dirty), or with late fixes held, is pinned (:func:`evict`). An evicted device that reports again is
a miss, loaded with the other misses of its batch in one ``load_states`` (the loop's ``_apply``).

*Order*: ``states`` is a plain dict in order of use: the loop moves a batch's applied devices to its
end (:meth:`StateCache.touch`), and eviction takes from its front. Below half the bound nothing is
moved (the push path pays nothing for a cache far from evicting: a move is ~80 ns a device).

*What still needs every device*: each evicted device keeps a small record (its farm, its flags
out/silent/low and the fences it is inside: ~150 bytes), so that a farm's devices can be found
(:meth:`StateCache.of_farms`: fence, mob, settings changes and schedule transitions re-evaluate the
evicted ones too, loaded a chunk at a time by :func:`loaded`) and the gauges stay whole (the records'
sums: :attr:`StateCache.flags`, :attr:`StateCache.occupancy`). Silence deadlines stay in the silence
heaps; an evicted device whose deadline comes is loaded then (:func:`fencex.stream.silence.sweep`).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from fencex.detector import DeviceState
from fencex.fix import Fix

if TYPE_CHECKING:
    from fencex.stream.loop import Processor

LOAD_CHUNK = 10_000  # evicted devices loaded from Redis at once (and re-evaluated) at most
MISS_PATHS = ("fix", "silence", "change")  # fencex_state_cache_misses_total's label

Record = tuple[str, int, tuple[str, ...]]  # an evicted device's farm, flags (out 1, silent 2, low 4), fences inside


class StateCache:
    def __init__(self, bound: int) -> None:
        if bound < 1:
            raise ValueError("the state cache holds at least one state")
        self.bound = bound
        self.states: dict[str, DeviceState] = {}
        self.evicted: dict[str, Record] = {}  # held devices whose state is in Redis only
        self.by_farm: dict[str, set[str]] = {}  # farm -> its evicted devices
        self.flags: dict[str, list[int]] = {}  # farm -> [out, silent, low] of its evicted devices
        self.occupancy: Counter[tuple[str, str]] = Counter()  # (farm, fence) -> evicted devices inside

    def ordered(self) -> bool:
        """Whether use moves devices to the recent end (from half the bound on)."""
        return len(self.states) > self.bound >> 1

    def touch(self, devices: Iterable[str]) -> None:
        states = self.states
        for d in devices:
            s = states.pop(d, None)
            if s is not None:
                states[d] = s

    def put(self, asked: Iterable[str], got: Mapping[str, DeviceState]) -> None:
        """States loaded from Redis for ``asked`` (those it did not have are new, or gone): cached."""
        self.states.update(got)
        if self.evicted:
            self._unrecord(asked)

    def evict(self, pinned: Callable[[str], bool]) -> list[str]:
        """Down to the bound (a 64th below it, so as not to come back at every batch), least recently
        used first, skipping the pinned; the devices evicted."""
        states = self.states
        over = len(states) - self.bound
        if over <= 0:
            return []
        want = over + (self.bound >> 6)
        victims: list[str] = []
        for d in states:
            if not pinned(d):
                victims.append(d)
                if len(victims) >= want:
                    break
        flags, occupancy, by_farm, evicted = self.flags, self.occupancy, self.by_farm, self.evicted
        for d in victims:
            s = states.pop(d)
            tenant = sys.intern(s.tenant)
            bits = s.out | s.silent << 1 | s.low << 2
            fences = tuple(sys.intern(f) for f in s.members)
            evicted[d] = (tenant, bits, fences)
            by_farm.setdefault(tenant, set()).add(d)
            if bits:
                c = flags.setdefault(tenant, [0, 0, 0])
                c[0] += s.out
                c[1] += s.silent
                c[2] += s.low
            for f in fences:
                occupancy[(tenant, f)] += 1
        return victims

    def _unrecord(self, devices: Iterable[str]) -> None:
        evicted, by_farm, flags, occupancy = self.evicted, self.by_farm, self.flags, self.occupancy
        for d in devices:
            rec = evicted.pop(d, None)
            if rec is None:
                continue
            tenant, bits, fences = rec
            farm = by_farm[tenant]
            farm.discard(d)
            if not farm:
                del by_farm[tenant]
            if bits:
                c = flags[tenant]
                c[0] -= bits & 1
                c[1] -= bits >> 1 & 1
                c[2] -= bits >> 2 & 1
                if not any(c):
                    del flags[tenant]
            for f in fences:
                key = (tenant, f)
                occupancy[key] -= 1
                if not occupancy[key]:
                    del occupancy[key]

    def forget(self, devices: Iterable[str]) -> None:
        """Devices no longer held (their partitions went): neither cached nor recorded."""
        devices = list(devices)
        for d in devices:
            self.states.pop(d, None)
        if self.evicted:
            self._unrecord(devices)

    def clear(self) -> None:
        self.states.clear()
        self.evicted.clear()
        self.by_farm.clear()
        self.flags.clear()
        self.occupancy.clear()

    def of_farms(self, farms: Iterable[str]) -> list[str]:
        """The evicted devices of these farms (the farm their saved state names)."""
        by_farm = self.by_farm
        return [d for f in farms for d in by_farm.get(f, ())]


# ------------------------------------------------------------------ the worker loop's side
# (called by fencex.stream.loop.Processor and its helpers with the loop's lock held)


def evict(p: Processor) -> None:
    """Evict past the bound what is saved: not a state pending in the checkpoint or in the snapshot
    being saved, nor a device with late fixes held (their merge needs its state)."""
    cache = p.cache
    if len(cache.states) <= cache.bound:
        return
    pending, saving, held = p.checkpoint.pending.states, p._saving, p.late.held
    victims = cache.evict(lambda d: d in pending or d in saving or d in held)
    if victims:
        p.metrics.state_cache_evictions.inc(len(victims))
        if p.tracks is not None:
            p.tracks.forget(victims)


async def relieve(p: Processor) -> None:
    """Evict; if the pinned states alone are past the bound by a chunk (a change that re-decided many
    devices), save them first (a flush) and evict again."""
    evict(p)
    if len(p.cache.states) > p.cache.bound + chunk(p):
        await p.flush(wait=True)
        evict(p)


def chunk(p: Processor) -> int:
    return max(1, min(LOAD_CHUNK, p.cache.bound))


async def loaded(p: Processor, devices: Iterable[str], path: str) -> AsyncIterator[list[str]]:
    """``devices`` (held) a chunk at a time, each chunk's evicted ones loaded from Redis in one call first:
    yielded with their states cached (those Redis does not have left out); after each, the cache is
    brought back to its bound (the chunk's devices that changed stay pinned until saved)."""
    ids = list(devices)
    step = chunk(p)
    for i in range(0, len(ids), step):
        part = ids[i : i + step]
        states = p.cache.states
        absent = [d for d in part if d not in states]
        if absent:
            got = await p.store.load_states(absent, p.device_partition)
            p.cache.put(absent, got)
            if path:
                p.metrics.state_cache_misses.labels(path).inc(len(got))
        yield [d for d in part if d in states]
        await relieve(p)


async def load_missing(
    p: Processor, missing: list[str], fixes: Sequence[Fix], partitions: Sequence[int]
) -> tuple[dict[int, list[str]], list[str]]:
    """A batch's devices not cached, loaded in one call: the new ones per partition (Redis has no
    state), and those the worker did not hold (to watch for silence: an evicted one is watched still)."""
    where = {f.device_id: n for f, n in zip(fixes, partitions, strict=True)}
    p.cache.put(missing, await p.store.load_states(missing, where))
    p.metrics.state_cache_misses.labels("fix").inc(len(missing))
    unknown = set(missing) - p.states.keys()
    new: dict[int, list[str]] = {}
    for f, n in zip(fixes, partitions, strict=True):
        if f.device_id in unknown:
            unknown.discard(f.device_id)
            new.setdefault(n, []).append(f.device_id)
    return new, [d for d in missing if d not in p.device_partition]

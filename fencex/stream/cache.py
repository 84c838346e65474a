"""The worker's device states, bounded (issue 15, item 3): at most ``state_cache_max`` cached.

A worker holds the devices of its partitions (``Processor.device_partition``: every one of them)
but caches at most ``bound`` of their states. Past the bound, the least recently used are *evicted*:
dropped from memory, their state being in Redis. A state is evicted only once it is saved: one in the
pending checkpoint or in the snapshot being saved (dirty), or with late fixes held, is pinned
(:func:`evict`). An evicted device that reports again is a miss, loaded with the other misses of its
batch in one ``load_states`` (the loop's ``_apply``).

*Order*: ``states`` is a plain dict in order of use: the loop moves a batch's applied devices to its
end (:meth:`StateCache.touch`), and eviction takes from its front. Below half the bound nothing is
moved (the push path pays nothing for a cache far from evicting: a move is ~80 ns a device).

*A farm's devices*: a fence, mob or settings change of farm F and F's schedule transitions re-evaluate
F's held devices, found without a scan of every held state: the cached ones in F's set of
:attr:`StateCache.cached` (:meth:`StateCache.cached_of`), the evicted ones in F's set of
:attr:`StateCache.by_farm` (:meth:`StateCache.of_farms`), loaded a chunk at a time (:func:`loaded`).
Both are by the farm the device's state names. ``by_farm`` is exact (a saved state does not change);
``cached`` may hold more (a device gone or moved to another farm by a path that does not tell it), never
less: a state enters ``states`` under a device or another farm only through :meth:`StateCache.put` (loads)
or the pipeline (new devices and transfers, indexed after each batch: :meth:`StateCache.index`), and
:meth:`StateCache.cached_of` keeps a device only if its cached state names the farm (dropping the others).
What an evicted device adds to the gauges (out, silent, low; fences inside) is summed per partition when
it is evicted and taken back when it is loaded (a saved state does not change meanwhile), so the gauges
count every held device. Its silence deadline stays in the silence heaps; when it comes, the device is
loaded (:func:`fencex.stream.silence.sweep`).

*Memory* (measured with tracemalloc, Python 3.11; states as loaded from Redis,
one fence inside, 8-character farm and 15-character device ids): a cached state 663 bytes with its
dict entry (54 bytes less since a state read from Redis shares its farm's string: ``DeviceState.from_obj``);
an evicted device 127 bytes (its farm set's entry, its share of the states dict's table);
every held device, cached or not, also has its id (72), its ``device_partition`` entry (38) and a
silence heap entry (104); a cached one its entry in its farm's :attr:`StateCache.cached` (33).
1,000,000 cached states: about 0.7 GB; 10,000,000 held with 1,000,000 of them cached: about
0.70 + 9 x 0.127 + 10 x 0.214 = 4.0 GB.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Container, Iterable, Mapping
from typing import TYPE_CHECKING

from fencex.detector import DeviceState
from fencex.event import Event
from fencex.fix import Fix
from fencex.stream import adoption

if TYPE_CHECKING:
    from fencex.stream.loop import Processor

LOAD_CHUNK = 10_000  # evicted devices loaded from Redis at once (and re-evaluated) at most
MISS_PATHS = ("fix", "silence", "change")  # fencex_state_cache_misses_total's label

Flags = dict[str, list[int]]  # farm -> [out, silent, low]


class StateCache:
    def __init__(self, bound: int) -> None:
        if bound < 1:
            raise ValueError("the state cache holds at least one state")
        self.bound = bound
        self.states: dict[str, DeviceState] = {}
        self.by_farm: dict[str, set[str]] = {}  # farm -> its evicted devices (held, their state in Redis only)
        self.cached: dict[str, dict[str, None]] = {}  # farm -> its cached devices (in order; more: cached_of)
        # what the evicted devices add to the gauges, per partition (dropped whole when the partition goes)
        self.flags: dict[int, Flags] = {}  # partition -> farm -> [out, silent, low]
        self.occupancy: dict[int, Counter[tuple[str, str]]] = {}  # partition -> (farm, fence) -> devices inside

    def ordered(self) -> bool:
        """Whether use moves devices to the recent end (from half the bound on)."""
        return len(self.states) > self.bound >> 1

    def touch(self, devices: Iterable[str]) -> None:
        states = self.states
        for d in devices:
            s = states.pop(d, None)
            if s is not None:
                states[d] = s

    def put(self, got: Mapping[str, DeviceState], where: Mapping[str, int]) -> None:
        """States loaded from Redis (``where``: each one's partition): cached, no longer evicted."""
        self.states.update(got)
        self.index(got)
        if self.by_farm:
            for d, s in got.items():
                farm = self.by_farm.get(s.tenant)
                if farm is not None and d in farm:  # (saved when evicted, so the same state: its part is taken back)
                    farm.discard(d)
                    if not farm:
                        del self.by_farm[s.tenant]
                    self._count(s, where.get(d, -1), -1)

    def index(self, devices: Iterable[str]) -> None:
        """These devices' cached states (new, loaded, or moved to another farm) under their farms."""
        states, cached = self.states, self.cached
        for d in devices:
            s = states.get(d)
            if s is not None:
                farm = cached.get(s.tenant)
                if farm is None:
                    farm = cached[sys.intern(s.tenant)] = {}
                farm[d] = None

    def cached_of(self, farms: Iterable[str]) -> list[str]:
        """The cached devices of these farms (the farm their state names), in the order they were indexed;
        a device its farm's set holds but not cached with a state of the farm is dropped from the set."""
        states, cached = self.states, self.cached
        out: list[str] = []
        for f in farms:
            ids = cached.get(f)
            if ids is None:
                continue
            stale = [d for d in ids if (s := states.get(d)) is None or s.tenant != f]
            for d in stale:
                del ids[d]
            if not ids:
                del cached[f]
            out.extend(ids)
        return out

    def _count(self, s: DeviceState, partition: int, n: int) -> None:
        if s.out or s.silent or s.low:
            c = self.flags.setdefault(partition, {}).setdefault(s.tenant, [0, 0, 0])
            c[0] += n * s.out
            c[1] += n * s.silent
            c[2] += n * s.low
        if s.members:
            occ = self.occupancy.setdefault(partition, Counter())
            for f in s.members:
                occ[(s.tenant, f)] += n

    def evict(self, pinned: Callable[[str], bool], where: Mapping[str, int]) -> list[str]:
        """Down to the bound (a 64th below it, so as not to come back at every batch), least recently
        used first, skipping the pinned; the devices evicted (``where``: each one's partition)."""
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
        by_farm, cached = self.by_farm, self.cached
        for d in victims:
            s = states.pop(d)
            if (ids := cached.get(s.tenant)) is not None:
                ids.pop(d, None)
                if not ids:
                    del cached[s.tenant]
            farm = by_farm.get(s.tenant)
            if farm is None:
                farm = by_farm[sys.intern(s.tenant)] = set()
            farm.add(d)
            self._count(s, where.get(d, -1), 1)
        return victims

    def forget(self, devices: Iterable[str], keep: Container[int]) -> None:
        """Devices no longer held (their partitions went; those kept: ``keep``): neither cached nor evicted."""
        gone = set(devices)
        for d in gone:
            self.states.pop(d, None)
        for farm, ids in list(self.by_farm.items()):
            if not ids.isdisjoint(gone):
                if left := ids - gone:
                    self.by_farm[farm] = left
                else:
                    del self.by_farm[farm]
        for farm, cached in list(self.cached.items()):
            if not gone.isdisjoint(cached):
                if left_cached := {d: None for d in cached if d not in gone}:
                    self.cached[farm] = left_cached
                else:
                    del self.cached[farm]
        for part in [n for n in self.flags.keys() | self.occupancy.keys() if n not in keep]:
            self.flags.pop(part, None)
            self.occupancy.pop(part, None)

    def clear(self) -> None:
        self.states.clear()
        self.by_farm.clear()
        self.cached.clear()
        self.flags.clear()
        self.occupancy.clear()

    def of_farms(self, farms: Iterable[str]) -> list[str]:
        """The evicted devices of these farms (the farm their saved state names)."""
        by_farm = self.by_farm
        return [d for f in farms for d in by_farm.get(f, ())]

    def farm_flags(self) -> Flags:
        """The evicted devices' [out, silent, low] per farm (for :class:`fencex.stream.gauges.HerdGauges`)."""
        out: Flags = {}
        for part in self.flags.values():
            for farm, c in part.items():
                acc = out.setdefault(farm, [0, 0, 0])
                for i in range(3):
                    acc[i] += c[i]
        return {farm: c for farm, c in out.items() if any(c)}  # (a farm with none: no label taken)

    def fence_occupancy(self) -> Counter[tuple[str, str]]:
        """The evicted devices inside each fence (farm, fence)."""
        out: Counter[tuple[str, str]] = Counter()
        for part in self.occupancy.values():
            out.update(part)
        return out


# ------------------------------------------------------------------ the worker loop's side
# (called by fencex.stream.loop.Processor and its helpers with the loop's lock held)


def evict(p: Processor) -> None:
    """Evict past the bound what is saved: not a state pending in the checkpoint or in the snapshot
    being saved, nor a device with late fixes held (their merge needs its state)."""
    cache = p.cache
    if len(cache.states) <= cache.bound:
        return
    pending, saving, held = p.checkpoint.pending.states, p._saving, p.late.held
    victims = cache.evict(lambda d: d in pending or d in saving or d in held, p.device_partition)
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
            p.cache.put(got, p.device_partition)
            if path:
                p.metrics.state_cache_misses.labels(path).inc(len(got))
        yield [d for d in part if d in states]
        await relieve(p)


def index_batch(p: Processor, missing: list[str], events: list[Event]) -> None:
    """After the pipeline: the batch's devices that were not cached (new ones it created: the loaded ones were
    indexed by :meth:`StateCache.put`) and those it moved to another farm (``transferred``), under their farms
    (:meth:`StateCache.index`). Nothing for a batch of cached devices staying in their farms."""
    if missing:
        p.cache.index(missing)
    if events and (moved := [e.device_id for e in events if e.type == "transferred"]):
        p.cache.index(moved)


async def load_missing(
    p: Processor, missing: list[str], fixes: list[Fix], partitions: list[int]
) -> dict[int, list[str]]:
    """A batch's devices not cached, loaded in one call (the newest copy: :func:`fencex.stream.adoption.load`,
    which takes the fixes of devices moved to a partition not owned here out of ``fixes``, ``partitions``
    and ``missing``); the new ones (Redis has no state) per partition."""
    p.cache.put(await adoption.load(p, missing, fixes, partitions), p.device_partition)
    p.metrics.state_cache_misses.labels("fix").inc(len(missing))
    unknown = set(missing) - p.states.keys()
    new: dict[int, list[str]] = {}
    for f, n in zip(fixes, partitions, strict=True):
        if f.device_id in unknown:
            unknown.discard(f.device_id)
            new.setdefault(n, []).append(f.device_id)
    return new

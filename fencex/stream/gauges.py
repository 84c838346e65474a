"""What a worker's metrics collectors read at scrape time (``fencex.metrics.StateCollector`` and
``fencex.metrics.HerdCollector``): state gauges computed when Prometheus asks, never kept up to
date on the hot path."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from fencex.metrics import HERD_SERIES, FarmLabels

if TYPE_CHECKING:
    from fencex.detector import DeviceState
    from fencex.stream.loop import Processor

WALK_CHUNK = 50_000  # states counted between two yields to the event loop


def worker_gauges(p: Processor, occupancy: Counter[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Partitions, lag, fences, devices and the herd's busiest fences of one running worker. Occupancy
    counts every held device: the cached states walked, plus the evicted ones' sums (:mod:`.cache`:
    an evicted state is saved and unchanged until loaded again, so its part is known); ``occupancy``:
    that count made already (:meth:`HerdGauges.refresh`, in chunks), else it is walked at once."""
    if occupancy is None:
        occupancy = p.cache.fence_occupancy()
        count_members(p.states.values(), occupancy)
    return {
        "partitions": p.consumer.assignment(),
        "lag": p.consumer.lag(),
        "fences": len(p.index),
        "index_version": p.follower.applied,
        "quarantined": len(p.follower.quarantined),
        "feed_reloads": p.follower.reloads,
        "devices": len(p.states),  # cached
        "held": len(p.device_partition),  # cached or evicted
        "cache_bound": p.cache.bound,
        "running": int(p.running),
        "occupancy": occupancy.most_common(HERD_SERIES),
        "fence_events": p.outbox.fence_events.most_common(HERD_SERIES),
    }


def count_members(states: Iterable[DeviceState], into: Counter[tuple[str, str]]) -> None:
    """Add each state's fences (farm, fence) to ``into``."""
    for state in list(states):
        for fid in state.members:
            into[(state.tenant, fid)] += 1


def count_flags(states: Iterable[DeviceState], into: dict[str, list[int]]) -> None:
    """Add each state's ``out``, ``silent`` and ``low`` to its farm's [out, silent, low]."""
    for s in states:
        if s.out or s.silent or s.low:
            c = into.get(s.tenant)
            if c is None:
                c = into[s.tenant] = [0, 0, 0]
            c[0] += s.out
            c[1] += s.silent
            c[2] += s.low


class HerdGauges:
    """Devices out, silent and low on battery per farm label, from the states the worker holds.

    A walk over the cached states when Prometheus scrapes (the states are the truth: loaded after a
    rebalance or a restart, dropped when partitions go, changed by fixes, sweeps and fence
    changes; an evicted one is saved and unchanged, so ``evicted``'s counts, kept by
    :class:`fencex.stream.cache.StateCache`, are added), so nothing is kept up to date on the hot
    path. :meth:`refresh`, awaited by the
    ``/metrics`` page before it renders, walks a snapshot of the states in chunks of
    ``WALK_CHUNK`` and yields between them, so a worker holding a million devices is not
    stalled for the whole walk; :meth:`read` (the collector's) takes that result, or walks
    at once when no refresh came first. Every farm label given so far is reported, zeros included.
    """

    def __init__(
        self,
        states: Callable[[], Mapping[str, DeviceState]],
        farms: FarmLabels,
        evicted: Callable[[], Mapping[str, list[int]]] = dict,
        evicted_occupancy: Callable[[], Counter[tuple[str, str]]] = Counter,
    ) -> None:
        self.states = states
        self.farms = farms
        self.evicted = evicted  # farm -> [out, silent, low] of the devices not cached (StateCache.flags)
        self.evicted_occupancy = evicted_occupancy  # (farm, fence) -> evicted devices inside
        self._fresh: dict[str, list[int]] | None = None
        self._occupancy: Counter[tuple[str, str]] | None = None

    async def refresh(self) -> None:
        """Count the flags and the fences' occupancy in one walk, in chunks (for :meth:`read` and
        :meth:`occupancy`, which take the result once)."""
        values = list(self.states().values())
        counts = self._evicted()
        occupancy = Counter(self.evicted_occupancy())
        for i in range(0, len(values), WALK_CHUNK):
            if i:
                await asyncio.sleep(0)
            chunk = values[i : i + WALK_CHUNK]
            count_flags(chunk, counts)
            count_members(chunk, occupancy)
        self._fresh, self._occupancy = counts, occupancy

    def occupancy(self) -> Counter[tuple[str, str]] | None:
        """The occupancy counted by the last :meth:`refresh` (taken once), else None (walk at once)."""
        got, self._occupancy = self._occupancy, None
        return got

    def read(self) -> dict[str, list[int]]:
        counts, self._fresh = self._fresh, None
        if counts is None:
            counts = self._evicted()
            count_flags(list(self.states().values()), counts)
        return self.labelled(counts)

    def _evicted(self) -> dict[str, list[int]]:
        return {t: list(c) for t, c in self.evicted().items()}

    def labelled(self, counts: Mapping[str, list[int]]) -> dict[str, list[int]]:
        """Per farm label: farms beyond the label limit summed under one."""
        out: dict[str, list[int]] = {}
        for tenant, c in counts.items():
            label = self.farms(tenant)
            acc = out.get(label)
            if acc is None:
                out[label] = list(c)
            else:
                for i, n in enumerate(c):
                    acc[i] += n
        for label in self.farms.labels():
            out.setdefault(label, [0, 0, 0])
        return out

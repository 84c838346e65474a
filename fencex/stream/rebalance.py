"""Partitions assigned to and revoked from a worker (the consumer's rebalance callbacks, awaited by
its coordinator task; each takes the loop's lock).

On assignment the worker claims the partitions (raising their generations, which fences a stalled
former owner's saves) and loads their devices' states, then catches up with what changed while no
worker held them: fence changes (re-evaluation) and schedule transitions. On revocation it flushes
what is pending (or drops it if that fails: not committed, the next owner reads it again) and forgets
the partitions' devices, silences and held late fixes (whose offsets were not committed).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fencex.errors import Fenced
from fencex.retrying import retrying
from fencex.stream import adoption, cache, rotation, silence

if TYPE_CHECKING:
    from fencex.stream.loop import Processor

log = logging.getLogger("fencex.stream.loop")


async def assigned(p: Processor, partitions: list[int]) -> None:
    """Partitions given to this worker: claim them (a new generation), load their devices."""
    async with p.lock:
        p._epoch += 1
        p.metrics.rebalances.inc()
        async for attempt in retrying("claiming partitions", on_error=p._count_error, logger=log):
            with attempt:
                p.generations = await p.store.claim_partitions(p.topics.locations, partitions)
        p._fenced = False
        p.checkpoint.reassigned()
        p._suspect = {n: r for n, r in p._suspect.items() if n in p.generations}
        async for attempt in retrying("loading device state", on_error=p._count_error, logger=log):
            with attempt:
                await load(p, partitions)


async def load(p: Processor, partitions: list[int]) -> None:
    """Load the partitions' devices (not those moved to other partitions: :func:`fencex.stream.adoption.
    load_partitions`), catch up with fence changes and schedules missed, watch silences: a chunk at a
    time, the cache kept to its bound (:func:`fencex.stream.cache.relieve`)."""
    mine = set(partitions)
    gone = [d for d, n in p.device_partition.items() if n not in mine]
    p.cache.forget(gone, mine)
    for d in gone:
        p.device_partition.pop(d, None)
    silence.unwatch(p, partitions)
    n = 0
    async for owned, states in adoption.load_partitions(p, partitions, cache.chunk(p)):
        p.device_partition.update(owned)
        p.cache.put(states, p.device_partition)
        ids = [d for d in owned if d in p.cache.states]
        n += len(ids)
        # A fence may have changed while no worker held these devices: catch up now.
        await p._publish_reevaluation(p._reevaluate(ids))
        await rotation.catch_up(p, ids)  # and a schedule's transitions missed
        silence.watch_loaded(p, ids)
        await cache.relieve(p)
    silence.order(p, partitions)
    log.info("partitions %s: %d devices loaded", partitions, n)


async def revoked(p: Processor, partitions: list[int]) -> None:
    """Partitions taken away: flush what is pending, forget their devices and held late fixes."""
    async with p.lock:
        p._epoch += 1
        try:
            await p.flush()
        except Exception as exc:  # noqa: BLE001 - not committed: the next owner reads it again
            log.warning("flush before revoke failed: %s", exc)
            if isinstance(exc, Fenced):
                p.metrics.saves_fenced.inc()
            p.checkpoint.drop()
            p._reload_needed = True  # what is cached is ahead of what is saved
        gone = set(partitions)
        p.late.drop(gone)
        p.checkpoint.forget(gone)  # an offset kept past a dropped hold must not be committed later
        p.checkpoint.holds = p.late.holds()
        devices = [d for d, n in p.device_partition.items() if n in gone]
        p.cache.forget(devices, set(p.generations) - gone)
        for d in devices:
            p.device_partition.pop(d, None)
        if p.tracks is not None:
            p.tracks.forget(devices)
        for n in gone:
            p.silence.heaps.pop(n, None)
            p.generations.pop(n, None)
            p._suspect.pop(n, None)

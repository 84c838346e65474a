"""Devices whose fixes come on another partition after partitions were added (docs/design/partitions.md).

Kafka maps a device's key to ``murmur2(key) mod partitions``: when the locations topic grows, a device's
fixes go to another partition q from then on, while its state is still saved under its old partition p
(``{p}:dev``, named by its pointer ``{g}:where``). The rule here: **a device's state is the newest copy
(``last_ts``) of the ones under its pointer's partition and under the partition the worker meets it on,
and it lives on the partition of its newest fix.** So:

- q's owner, missing the device, reads both copies (:meth:`~fencex.store.devices.RedisDevices.locate_states`):
  the newest is p's; the fix is newer, so the device *moves* to q: registered on q (``{q}:part``) and its
  pointer moved to q by the next save (which writes the pointer only once the state is saved under q);
- a fix of the device still in p's backlog (sent before the producers knew of the new partitions), read
  by an owner of p that does not hold the device, meets a newer state under q: it is stale by the
  device's ``last_ts`` rule and dropped (counted ``out_of_order``), and nothing is written for the
  device under p (the generation of p does not fence q: p's owner never writes a device held by q);
- p's owner, loading ``{p}:part``, drops the devices whose newest copy is under another partition (no
  silence watch, so no false ``silent``) and deletes its stale copies (:func:`load_partitions`); one
  that held such a device from before the move finds out when the device falls due for silence
  (:func:`confirm_silent`), and does the same;
- a device found under its partition with a pointer that names another (a cluster's save that died
  between its partition step and its pointer step) gets its pointer written again.

A worker holding both partitions sees the move in its own cache (:func:`place`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fencex.detector import DeviceState
from fencex.event import Event
from fencex.fix import Fix

if TYPE_CHECKING:
    from fencex.stream.loop import Processor

log = logging.getLogger("fencex.stream.loop")


async def load(p: Processor, missing: list[str], fixes: list[Fix], partitions: list[int]) -> dict[str, DeviceState]:
    """The states of ``missing`` (devices the worker does not hold) for a chunk of fixes, from the newest
    copy; each found device is held under the partition that copy is under (:func:`place` moves it).
    A device whose state is under a partition this worker does not own, with no fix newer than it, is
    not this worker's (a backlog fix of a device that moved on): its fixes are taken out of ``fixes``,
    ``partitions`` and ``missing`` (in place), counted as out of order, and its state is not held."""
    given = {f.device_id: n for f, n in zip(fixes, partitions, strict=True)}
    found = await p.store.locate_states(missing, given)
    elsewhere = {d for d, n in found.under.items() if n not in p.generations}  # under a partition not owned here
    newest: dict[str, int] = {}
    if elsewhere:
        for f in fixes:
            if f.device_id in elsewhere and f.ts_ms > newest.get(f.device_id, -1):
                newest[f.device_id] = f.ts_ms
    foreign = {d for d in elsewhere if newest[d] <= found.states[d].last_ts}
    for d, n in found.under.items():
        if d not in foreign:
            p.device_partition[d] = n
            if found.where.get(d) != n and n == given[d]:  # its pointer names another partition, or none
                p.checkpoint.register(n, [d])
    if foreign:
        kept = [(f, n) for f, n in zip(fixes, partitions, strict=True) if f.device_id not in foreign]
        dropped = len(fixes) - len(kept)
        fixes[:] = [f for f, _ in kept]
        partitions[:] = [n for _, n in kept]
        missing[:] = [d for d in missing if d not in foreign]
        p.metrics.fixes_consumed.inc(dropped)
        p.metrics.fixes_dropped.labels("out_of_order").inc(dropped)
        log.info("%d fixes of %d devices held by another partition now: stale, dropped", dropped, len(foreign))
    return {d: s for d, s in found.states.items() if d not in foreign}


def place(p: Processor, fixes: list[Fix], partitions: list[int]) -> None:
    """Each fix's device is held under its partition; a held device whose fixes now come on another
    partition moves there if the newest of them is newer than its state (registered there: the next save
    saves it there and moves its pointer); an older one is stale (the pipeline drops it), not a move."""
    dp = p.device_partition
    moved: set[str] | None = None
    for f, n in zip(fixes, partitions, strict=True):
        if dp.setdefault(f.device_id, n) != n:
            if moved is None:
                moved = set()
            moved.add(f.device_id)
    if not moved:
        return
    newest: dict[str, tuple[int, int]] = {}  # device -> (ts, partition) of its newest fix here
    for f, n in zip(fixes, partitions, strict=True):
        got = newest.get(f.device_id)
        if f.device_id in moved and (got is None or f.ts_ms >= got[0]):
            newest[f.device_id] = (f.ts_ms, n)
    for d, (ts, n) in newest.items():
        state = p.states.get(d)
        if n != dp[d] and (state is None or ts > state.last_ts):
            log.info("device %s moves from partition %d to %d", d, dp[d], n)
            dp[d] = n
            p.checkpoint.register(n, [d])


async def load_partitions(
    p: Processor, partitions: list[int], step: int
) -> AsyncIterator[tuple[dict[str, int], dict[str, DeviceState]]]:
    """The devices of ``partitions`` (device -> partition) and their states, ``step`` devices at a time. A
    device listed on one of them whose newest state is under another partition moved there: it is left
    out, and the stale copy deleted (state, track, listing); a device whose pointer names another
    partition than the one its newest state is under gets its pointer written again (a cluster save that
    died before its pointer step)."""
    topic = p.topics.locations
    lists = await p.store.partition_lists(topic, partitions)
    listed: dict[str, list[int]] = {}
    for n, devices in lists.items():
        for d in devices:
            listed.setdefault(d, []).append(n)
    mine = set(partitions)
    ids = list(listed)
    for i in range(0, len(ids), max(1, step)):
        part = ids[i : i + step]
        found = await p.store.locate_states(part, {d: listed[d][-1] for d in part})
        owned: dict[str, int] = {}
        stale: dict[int, dict[str, int]] = {}
        for d in part:
            ns = listed[d]
            under = found.under.get(d, ns[-1])
            for n in ns:
                if n != under and d in found.states:  # listed here, its newest state under another partition: moved
                    stale.setdefault(n, {})[d] = found.states[d].last_ts
            if under in mine:
                owned[d] = under
                if d in found.states and found.where.get(d) != under:
                    p.checkpoint.register(under, [d])
        for n, newer in stale.items():
            gone = await p.store.forget_moved(topic, n, newer)
            log.info("partition %d: %d devices moved to other partitions, %d stale copies deleted", n, len(newer), gone)
        yield owned, {d: s for d, s in found.states.items() if d in owned}


async def confirm_silent(
    p: Processor, dirty: dict[str, DeviceState], events: list[Event]
) -> tuple[dict[str, DeviceState], list[Event]]:
    """Before devices are marked silent: those whose newest state is under another partition moved there
    (their fixes come there now): not silent, no longer held here, their stale copies deleted."""
    if not dirty:
        return dirty, events
    held = {d: p.device_partition[d] for d in dirty if d in p.device_partition}
    found = await p.store.locate_states(list(dirty), held)
    moved = {d: n for d, n in held.items() if found.under.get(d, n) != n}
    if not moved:
        return dirty, events
    by_partition: dict[int, dict[str, int]] = {}
    for d, n in moved.items():
        by_partition.setdefault(n, {})[d] = found.states[d].last_ts
        p.states.pop(d, None)
        p.device_partition.pop(d, None)
    if p.tracks is not None:
        p.tracks.forget(list(moved))
    for n, newer in by_partition.items():
        await p.store.forget_moved(p.topics.locations, n, newer)
    log.info("%d devices due for silence moved to other partitions: dropped, not silent", len(moved))
    return {d: s for d, s in dirty.items() if d not in moved}, [e for e in events if e.device_id not in moved]

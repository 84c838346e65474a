"""What the worker does, between batches and under its lock, when fences, mobs or herd settings change.

A new index (fences changed): the held devices of the farms whose fences changed are re-evaluated
(the index is sharded by farm and says which changed: :attr:`FenceIndex.changed`), and their next
transitions laid again; every held device, silence and transition after a full reload. A farm's mobs
or herd settings changed, no fence: only that farm's held devices are (``Follower.on_mobs`` /
``on_rules`` tell the loop which farms), so one farm putting its settings (or fences) in a loop
costs every other farm a scan of the held states, not their re-evaluation.
Re-evaluation runs on states just saved (the checkpoint is flushed first), so the events' ids,
made of the last saved fix, come out the same when replayed after a crash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fencex.stream import cache, rotation, silence

if TYPE_CHECKING:
    from fencex.stream.loop import Processor


async def swap_index(p: Processor) -> None:
    """Swap the new index in. After a full reload: re-evaluate every held device, re-time every silence,
    lay every farm's next transition again. Else the farms whose fences (or mobs) changed only: their
    held devices re-evaluated, their next transitions laid again and their missed ones applied; the other
    farms' shards are the same objects, so nothing changes for them (a farm saving its fences in a loop
    costs the others no walk over every silence or schedule). Fences never change a silence: the farms
    whose settings changed too have theirs re-timed."""
    assert p._next_index is not None
    farms = _changed(p)
    devices = _held(p, farms)
    # re-evaluated on states just saved; a worker holding none of them (cached or evicted) waits for nothing
    if devices is None or devices or any(f in p.cache.by_farm for f in farms or ()):
        await p.flush(wait=True)
        if (later := _changed(p)) != farms:  # more handed over during the flush (the states it saved are theirs too)
            farms, devices = later, _held(p, later)
    assert p._next_index is not None
    p.index, p._next_index, p._index_farms = p._next_index, None, set()
    now_ms = int(p.clock() * 1000)
    if devices is None:  # a full load: every farm may have changed, its settings too
        p._mobs_changed.clear()
        p._rules_changed.clear()
        out = p._reevaluate(None)
        silence.rewatch(p, list(p.generations))
        await p._publish_reevaluation(out)
        p.rotation.rebuild(p.index, now_ms)  # every schedule may have changed: their transitions up to
        await rotation.catch_up(p)  # now, at the devices' own times, are applied
        await _evicted(p, [d for d in p.device_partition if d not in p.states], rewatch=True)  # and the evicted
        return
    assert farms is not None
    p._mobs_changed.clear()  # their devices are re-evaluated now
    evicted = p.cache.of_farms(farms)  # (taken now: re-timing the silences below loads them)
    if devices:
        await p._publish_reevaluation(p._reevaluate(devices))
    if rules := set(p._rules_changed):  # here, not left to herd_changed: a new index every step would starve it
        p._rules_changed.clear()
        await silence.retime(p, rules)
    p.rotation.reschedule(p.index, farms, now_ms)  # theirs laid again from now: their devices catch up
    if devices:
        await rotation.catch_up(p, devices)
    await _evicted(p, evicted)


async def _evicted(p: Processor, devices: list[str], rewatch: bool = False, schedules: bool = True) -> None:
    """The evicted ``devices`` of a change, loaded a chunk at a time: re-evaluated, their missed
    transitions applied (``schedules``), watched anew for silence (``rewatch``: the heaps were laid
    again from the cached devices)."""
    now_ms = int(p.clock() * 1000)
    async for ids in cache.loaded(p, devices, "change"):
        await p._publish_reevaluation(p._reevaluate(ids))
        if schedules:
            await rotation.catch_up(p, ids)
        if rewatch and p.rules_of is not None:
            for d in ids:
                if (part := p.device_partition.get(d)) in p.generations:
                    p.silence.watch(part, d, p.states[d], now_ms)


def _changed(p: Processor) -> frozenset[str] | None:
    """The farms whose fences (in the indexes handed over) or mobs changed; None: every farm (a full load)."""
    return None if p._index_farms is None else frozenset(p._index_farms | p._mobs_changed)


def _held(p: Processor, farms: frozenset[str] | None) -> list[str] | None:
    """The cached devices of ``farms`` (the cache's index by farm: no scan of every held state); None for
    every farm."""
    return None if farms is None else p.cache.cached_of(farms)


async def herd_changed(p: Processor) -> None:
    """Re-evaluate the escapes and returns of the devices of the farms whose mobs changed (saved first),
    re-time the silences of those of the farms whose settings changed."""
    if p._mobs_changed:
        await p.flush(wait=True)
    mobs, rules = set(p._mobs_changed), set(p._rules_changed)  # the follower adds to these very sets
    p._mobs_changed.clear()
    p._rules_changed.clear()
    if mobs:
        await p._publish_reevaluation(p._reevaluate(p.cache.cached_of(mobs)))
        await _evicted(p, p.cache.of_farms(mobs), schedules=False)
    if rules:
        await silence.retime(p, rules)

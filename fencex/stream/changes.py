"""What the worker does, between batches and under its lock, when fences, mobs or herd settings change.

A new index (fences changed): the held devices of the farms whose fences changed are re-evaluated
(the index is sharded by farm and says which changed: :attr:`FenceIndex.changed`), every held device
after a full reload; every silence is re-timed. A farm's mobs or herd settings changed, no fence: only that farm's held
devices are (``Follower.on_mobs`` / ``on_rules`` tell the loop which farms), so one farm putting
its settings in a loop costs every other farm a scan of the held states, not their re-evaluation.
Re-evaluation runs on states just saved (the checkpoint is flushed first), so the events' ids,
made of the last saved fix, come out the same when replayed after a crash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fencex.stream import rotation, silence

if TYPE_CHECKING:
    from fencex.stream.loop import Processor


async def swap_index(p: Processor) -> None:
    """Swap the new index in: re-evaluate the held devices of the farms whose fences (or mobs) changed,
    or every held device after a full reload; re-time every silence."""
    await p.flush(wait=True)
    assert p._next_index is not None
    p.index, p._next_index = p._next_index, None
    farms, p._index_farms = p._index_farms, set()
    devices = None
    if farms is not None:  # the other farms' fences are the same shards: nothing changes for their devices
        farms |= p._mobs_changed
        devices = [d for d, s in p.states.items() if s.tenant in farms]
    p._mobs_changed.clear()  # their devices are re-evaluated now, and every silence re-timed
    p._rules_changed.clear()
    out = p._reevaluate(devices)
    silence.rewatch(p, list(p.generations))  # a farm's silence time may have changed with it
    await p._publish_reevaluation(out)
    p.rotation.rebuild(p.index, int(p.clock() * 1000))  # schedules may have changed with it: their
    await rotation.catch_up(p)  # transitions up to now, at the devices' own times, are applied (every farm:
    # the heap is laid again from now, so a transition due since the last step is applied here)


async def herd_changed(p: Processor) -> None:
    """Re-evaluate the escapes and returns of the devices of the farms whose mobs changed (saved first),
    re-time the silences of those of the farms whose settings changed."""
    if p._mobs_changed:
        await p.flush(wait=True)
    mobs, rules = set(p._mobs_changed), set(p._rules_changed)  # the follower adds to these very sets
    p._mobs_changed.clear()
    p._rules_changed.clear()
    if mobs:
        await p._publish_reevaluation(p._reevaluate([d for d, s in p.states.items() if s.tenant in mobs]))
    if rules:
        silence.retime(p, rules)

"""Hostile review of issue 11: promises of the herd rules that do not hold."""

from __future__ import annotations

import shapely

from fencex.detector import DeviceState, Membership, reevaluate
from fencex.fix import Fix
from fencex.herd import DEFAULT_RULES, Mob
from fencex.index import FenceIndex
from fencex.pipeline import process
from fencex.store.base import ALERT_OF
from tests.unit.factory import LAT0, LON0, fence


def test_a_device_moved_to_another_farm_leaves_the_old_farms_alert_lists():
    idx = FenceIndex([fence("P", tenant="A"), fence("Q", tenant="B")])
    inside = (LON0 + 0.005, LAT0 + 0.005)
    # farm A's collar: out, silent and low on battery (it is on all three of A's lists)
    old = DeviceState("A", 1_000, LON0 - 0.01, LAT0, {}, out=True, pasture="P", low=True, battery=5.0)
    old.seen_ms, old.silent = 1, True
    lists = {kind: {"cow"} for kind in ("out", "silent", "battery_low")}
    states = {"cow": old}
    got = process([Fix("cow", 2_000, *inside, {"battery": 90.0})], idx, states, lambda d: "B", lambda t: DEFAULT_RULES)
    for e in got.events:
        if e.tenant == "A" and e.type in ALERT_OF:
            for kind, up in ALERT_OF[e.type]:
                (lists[kind].add if up else lists[kind].discard)(e.device_id)
    assert states["cow"].tenant == "B"
    assert lists == {"out": set(), "silent": set(), "battery_low": set()}, "farm A still lists B's collar"


def test_escape_return_escape_by_fence_changes_give_three_distinct_ids():
    mob = Mob(frozenset({"P"}))
    here = (LON0 + 0.005, LAT0 + 0.005)
    state = DeviceState("farm", 1_000, *here, {"P": Membership(1_000, 1)})
    ids = []
    for version, lon in ((2, LON0 + 0.5), (3, LON0), (4, LON0 + 0.5)):  # moved away, back, away again
        p = fence("P", lon=lon, version=version)
        by_id = {"P": p}
        ins = ("P",) if p.shape().contains(shapely.Point(*here)) else ()
        out = reevaluate(state, "cow", ins, (), by_id, mob)
        state = out.state
        ids += [(e.type, e.event_id) for e in out.events if e.type in ("escape", "return")]
    assert [t for t, _ in ids] == ["escape", "return", "escape"]
    assert len({i for _, i in ids}) == 3, ids


def test_a_held_collar_whose_partition_changes_is_still_watched_for_silence():
    # the silence heap is per partition: a collar first held on partition 0 whose fixes now come on
    # partition 1 (held by the same worker) was popped from 0's heap, found on another partition and
    # dropped: never watched again, never silent
    from fencex.herd import HerdRules
    from fencex.stream.silence import SilenceWatch

    watch = SilenceWatch(lambda t: HerdRules(silence_s=10))
    state = DeviceState("farm", 1_000, LON0, LAT0)
    state.seen_ms = 1_000
    states = {"cow": state}
    watch.load(0, ["cow"], states, 1_000)
    watch.load(1, [], states, 1_000)
    where = {"cow": 1}  # its fixes come on partition 1 now
    events = []
    for _ in range(2):  # moved to a heap swept before it (or after it, in the same sweep): silent once
        events += watch.sweep([1, 0], states, where, 11_001, 100)[1]
    assert [e.type for e in events] == ["silent"] and state.silent, "the collar is watched no more"

"""The simulator's scenarios (``--scenarios``) act out every herd alarm, the same for the same seed."""

from __future__ import annotations

import itertools
import math

import numpy as np
import shapely

from fencex.fix import fix_from_obj
from fencex.herd import DEFAULT_RULES
from fencex.index import FenceIndex
from fencex.pipeline import process
from services.simulator.herd import Herd, pastures, records
from services.simulator.scenarios import QUIET_AT, REPLACED_AT, WANDER, Scenarios


def run(seed: int = 1, seconds: int = 700) -> tuple[Scenarios, dict[str, list[tuple[float, dict]]]]:
    """Every animal sends one fix a second for ``seconds``; the fixes each collar sent, by time."""
    fences = pastures(100, seed)
    herd = Herd(200, fences, seed)
    scen = Scenarios(herd, fences, seed, quiet_s=150.0)
    idx = np.arange(len(herd.ids))
    sent: dict[str, list[tuple[float, dict]]] = {d: [] for d in herd.ids}
    for t in range(seconds):
        scen.before_step(float(t))
        batch = scen.apply(records(herd, idx, 1, 1_780_000_000_000 + t * 1000), idx.tolist(), float(t))
        for key, track in batch:
            sent[key].extend((float(t), f) for f in track)
    return scen, sent


def test_the_same_seed_gives_the_same_cast_and_fixes():
    a, sa = run(seconds=60)
    b, sb = run(seconds=60)
    assert a.cast() == b.cast() and sa == sb
    assert run(seed=2, seconds=1)[0].cast() != a.cast()


def test_every_alarm_is_acted_out():
    scen, sent = run()
    ids = scen.herd.ids
    union = shapely.union_all([shapely.geometry.shape(f.geometry) for f in scen.fences])

    def outside(f: dict) -> bool:
        return not union.intersects(shapely.Point(f["lon"], f["lat"]))

    # the first wanderer: out well before it is brought back, back in a pasture after
    (out_at, back_at) = WANDER[0]
    w = sent[ids[scen.wanderers[0]]]
    assert all(outside(f) for t, f in w if out_at + 60 <= t < back_at)
    assert not any(outside(f) for t, f in w if back_at + 120 <= t)
    assert not any(outside(f) for t, f in w if t < out_at)
    # batteries: run down below 20 %, one replaced; the healthy ones stay well above
    low = [min(f["battery"] for _t, f in sent[ids[i]]) for i in scen.run_down]
    assert all(b < 20 for b in low)
    assert all(f["battery"] == 100.0 for t, f in sent[ids[scen.run_down[0]]] if t >= REPLACED_AT)
    healthy = [f["battery"] for i in range(len(ids)) if i not in scen.run_down for _t, f in sent[ids[i]]]
    assert min(healthy) > 50
    # the quiet collar sends nothing for quiet_s, and before and after
    q = [t for t, _f in sent[ids[scen.quiet]]]
    assert not [t for t in q if QUIET_AT <= t < QUIET_AT + 150] and min(q) < QUIET_AT and max(q) >= QUIET_AT + 150
    # jumps of about 2 km, and a few fixes wildly inaccurate
    j = sent[ids[scen.jumper]]
    hops = [
        abs(b["lon"] - a["lon"]) * 111_320 * math.cos(math.radians(a["lat"]))
        for (_, a), (_, b) in itertools.pairwise(j)
    ]
    assert sum(h > 1500 for h in hops) >= 2 * 4  # there and back, at least four times in 700 s
    bad = [f for i in scen.inaccurate for _t, f in sent[ids[i]] if "accuracy_m" in f]
    assert len(bad) >= 5 and all(f["accuracy_m"] > 100 for f in bad)
    # the others: no accuracy field, no jump
    assert not any("accuracy_m" in f for i in range(len(ids)) if i not in scen.inaccurate for _t, f in sent[ids[i]])


def test_the_detector_tells_the_scenarios_apart():
    """The scenario's fixes through the pipeline with the default herd rules: the wanderers'
    escapes and returns, the batteries' alarms, and no escape from a jump or an inaccurate fix."""
    scen, sent = run(seconds=700)
    index = FenceIndex(scen.fences)
    tenants = scen.herd.tenants()
    states: dict = {}
    events, untrusted = [], {}
    by_time: dict[float, list] = {}
    for _device, fixes in sent.items():
        for t, f in fixes:
            by_time.setdefault(t, []).append(fix_from_obj(f))
    for t in sorted(by_time):
        out = process(by_time[t], index, states, tenants.__getitem__, rules_of=lambda _t: DEFAULT_RULES)
        events.extend(out.events)
        for reason, n in out.untrusted.items():
            untrusted[reason] = untrusted.get(reason, 0) + n
    ids = scen.herd.ids
    of = {(e.type, e.device_id) for e in events}
    first = ids[scen.wanderers[0]]
    escape = next(e for e in events if e.type == "escape" and e.device_id == first)
    assert escape.fence_id.startswith("pasture-") and escape.distance_m is not None and escape.distance_m > 10
    assert ("return", first) in of
    assert all(("battery_low", ids[i]) in of for i in scen.run_down)
    assert ("battery_ok", ids[scen.run_down[0]]) in of
    cast = {*(ids[i] for i in scen.wanderers), *(ids[i] for i in scen.run_down)}
    assert {e.device_id for e in events if e.type in ("escape", "battery_low")} <= cast
    assert untrusted.get("jump", 0) >= 4 and untrusted.get("inaccurate", 0) >= 5

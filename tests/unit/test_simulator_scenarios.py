"""The simulator's scenarios (``--scenarios``) act out every herd alarm, the same for the same seed."""

from __future__ import annotations

import itertools
import math

import numpy as np
import shapely

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
        batch = scen.apply(records(herd, idx, 1, 1_000_000 + t * 1000), idx.tolist(), float(t))
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

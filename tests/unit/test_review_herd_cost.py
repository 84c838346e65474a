"""Hostile review of issue 11: what one farm's herd can cost every worker."""

from __future__ import annotations

import math

import fencex.indexshard as index_module
from fencex.fence import Fence
from fencex.herd import boundary_distance_m
from fencex.index import FenceIndex


def ring(lon: float, lat: float, r: float, n: int) -> dict:
    pts = [[lon + r * math.cos(2 * math.pi * i / n), lat + r * math.sin(2 * math.pi * i / n) * 0.5] for i in range(n)]
    return {"type": "Polygon", "coordinates": [[*pts, pts[0]]]}


def test_an_escapes_distance_does_not_measure_every_pasture_of_a_big_farm(monkeypatch):
    # A farm with 1,000 pastures (the default mob: all of them): each escape measured the exact
    # distance to every pasture's boundary (19 ms per escape at 100 vertices a pasture, 44 ms at
    # 1,000; 200 collars walking out cost a worker 4 to 10 s under its lock, every farm waiting).
    # The pastures whose bounding box is farther than the nearest found cannot be nearer: skipped.
    fences = [
        Fence(
            id=f"p{i}", tenant="evil", version=1, geometry=ring(10 + (i % 40) * 0.02, 50 + (i // 40) * 0.02, 0.008, 64)
        )
        for i in range(1000)
    ]
    idx = FenceIndex(fences)
    pastures = idx.mob("evil").pastures
    assert len(pastures) == 1000
    calls = []

    def counted(geom, lon, lat):
        calls.append(1)
        return boundary_distance_m(geom, lon, lat)

    monkeypatch.setattr(index_module, "boundary_distance_m", counted)
    for lon, lat in [(9.99, 49.99), (10.41, 50.25), (10.5, 50.5), (10.02, 50.012)]:
        calls.clear()
        got = idx.farm("evil").distance_m(pastures, lon, lat)
        assert len(calls) <= 10, f"{len(calls)} pastures measured exactly for one escape"
        brute = min(boundary_distance_m(idx.farm("evil").geometry(f.id), lon, lat) for f in fences)
        assert got == round(brute, 1)


def test_a_stored_herd_settings_record_of_the_wrong_types_gives_the_defaults_not_a_failing_worker():
    # rules_from_json took any JSON value for battery_low_pct (HerdRules checks no type and not that
    # field): a record {"battery_low_pct": "20"} (an older writer, a hand edit, a restore) made every
    # fix with a battery reading of that farm raise TypeError in the worker (battery_step compares
    # the reading with "20"): each batch holding one was replayed record by record, every farm's.
    from fencex.fix import Fix
    from fencex.herd import DEFAULT_RULES, battery_step
    from fencex.pipeline import process
    from fencex.store.herd import rules_from_json

    for raw in (
        b'{"battery_low_pct": "20"}',
        b'{"battery_low_pct": null}',
        b'{"confirm_fixes": 2.5}',
        b'{"confirm_fixes": true}',
        b'{"silence_s": "60"}',
        b'{"max_speed_mps": [1]}',
    ):
        rules = rules_from_json("farm", raw)
        assert rules == DEFAULT_RULES, raw
        battery_step(False, 10.0, rules)
    fences = [Fence(id="p", tenant="farm", version=1, geometry=ring(10, 50, 0.01, 8))]
    rules = rules_from_json("farm", b'{"battery_low_pct": "20"}')
    fix = Fix("cow", 1000, 10.0, 50.0, {"battery": 10.0})
    process([fix], FenceIndex(fences), {}, lambda d: "farm", lambda t: rules, None, 1)


def test_one_farms_herd_settings_change_does_not_re_evaluate_every_farms_devices():
    import asyncio

    from fencex.follower import FenceFollower
    from fencex.herd import HerdRules
    from tests.unit.test_follower import FakeFeed

    store = FakeFeed()
    follower = FenceFollower(store, on_index=(handed := []).append, on_rules=(told := []).append)
    asyncio.run(follower.load())
    for i in range(3):  # a farm putting its settings in a loop
        store.put_rules("evil", HerdRules(silence_s=60.0 + i))
        asyncio.run(follower.step(0))
    assert handed == [], f"{len(handed)} full re-evaluations of every farm's devices for one farm's settings"
    assert told == [{"evil"}] * 3  # the worker re-times that farm's silences only

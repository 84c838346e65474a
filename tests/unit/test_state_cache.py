"""The worker's bounded device-state cache (issue 15, item 3): the cache alone (eviction order, pinning,
reloads, the evicted devices' records), then the loop with a tiny bound against the same run unbounded:
the same events whatever is evicted (fixes, silences, fence, mob and settings changes, schedule
transitions, assignment, crashes), and the gauges still counting every held device."""

from __future__ import annotations

import pytest

from fencex.detector import DeviceState, Membership
from fencex.errors import StoreUnavailable
from fencex.event import event_id
from fencex.herd import HerdRules, Mob
from fencex.index import FenceIndex
from fencex.metrics import FarmLabels
from fencex.stream import cache
from fencex.stream.cache import StateCache
from fencex.stream.gauges import HerdGauges, worker_gauges
from tests.unit.factory import fence
from tests.unit.fakes import Broker, FakeStore
from tests.unit.test_loop import (  # noqa: F401
    INSIDE,
    NORTH,
    OUTSIDE,
    SILENT_10S,
    T0,
    Clock,
    Worker,
    fast_retries,
    run,
    steps,
    until,
)
from tests.unit.test_loop_rotation import OPEN, ZONE

COWS = [f"cow-{i}" for i in range(8)]  # farm "farm" (tests.unit.test_loop.TENANTS)


def state(tenant: str = "farm", *, inside: tuple[str, ...] = (), out: bool = False, silent: bool = False):
    return DeviceState(tenant, T0, 0.0, 0.0, {f: Membership(T0, 1) for f in inside}, out=out, silent=silent)


# ---------------------------------------------------------------- the cache alone


def test_the_least_recently_used_go_first_and_the_pinned_stay():
    c = StateCache(3)
    c.put({d: state() for d in "abcd"}, {})
    c.touch(["a"])  # used: to the recent end (b, c, d, a)
    assert c.evict(lambda d: d == "b", {}) == ["c"]  # b pinned (unsaved): c is the least recently used
    assert list(c.states) == ["b", "d", "a"] and c.by_farm == {"farm": {"c"}}
    c.put({"c": state()}, {})  # it reports again: loaded, no longer evicted
    assert "c" in c.states and c.by_farm == {}
    assert c.evict(lambda d: True, {}) == []  # everything pinned: over the bound until saved


def test_below_half_the_bound_use_moves_nothing():
    c = StateCache(8)
    c.put({d: state() for d in "abcd"}, {})
    assert not c.ordered()  # the push path pays nothing for a cache far from evicting
    c.put({"e": state()}, {})
    assert c.ordered()


def test_the_evicted_devices_farms_flags_and_fences_are_kept_per_partition():
    c = StateCache(1)
    where = {"a": 0, "b": 1, "c": 0}
    c.put({"a": state(inside=("north",), out=True), "b": state("other", silent=True), "c": state()}, where)
    assert c.evict(lambda d: False, where) == ["a", "b"]
    assert c.farm_flags() == {"farm": [1, 0, 0], "other": [0, 1, 0]}
    assert c.fence_occupancy() == {("farm", "north"): 1}
    assert sorted(c.of_farms(["farm", "other"])) == ["a", "b"] and c.of_farms(["third"]) == []
    c.put({"a": state(inside=("north",), out=True)}, where)  # a reports again: its part taken back
    assert c.farm_flags() == {"other": [0, 1, 0]} and +c.fence_occupancy() == {}
    c.forget(["b"], keep={0})  # partition 1 went
    assert c.farm_flags() == {} and c.by_farm == {}


def test_the_bound_is_at_least_one():
    with pytest.raises(ValueError):
        StateCache(0)


# ---------------------------------------------------------------- the loop, bounded and not


def cows_crossing(broker: Broker, rounds: int = 8, cows: list[str] = COWS) -> None:
    """Cows crossing the fence's border, not all of them every round (so some are evicted, then report)."""
    for r in range(rounds):
        for i, cow in enumerate(cows):
            if (r + i) % 3:
                broker.fix(cow, T0 + r * 1000, *(INSIDE if (r + i) % 2 else OUTSIDE))


async def drain(w: Worker, broker: Broker, n: int = 40) -> None:
    for _ in range(n):
        await w.proc.step()
    async with w.proc.lock:
        await w.proc.flush()
        cache.evict(w.proc)
    assert sum(broker.committed.values()) == len(broker.records("locations"))


def evictions(w: Worker) -> float:
    return w.metrics.state_cache_evictions._value.get()


def misses(w: Worker, path: str) -> float:
    return w.metrics.state_cache_misses.labels(path)._value.get()


def test_evicted_devices_reporting_again_give_the_same_events_as_unbounded():
    async def once(bound: int) -> tuple[list[str], Worker]:
        broker, store = Broker(partitions=2), FakeStore()
        cows_crossing(broker)
        w = Worker(broker, store, NORTH, state_cache_max=bound, max_records=2)
        await w.start([0, 1])
        await drain(w, broker)
        return [e["event_id"] for e in broker.events()], w

    async def main():
        unbounded, _ = await once(1_000_000)
        bounded, w = await once(2)
        assert bounded == unbounded and len(unbounded) > 10
        assert evictions(w) > 0 and misses(w, "fix") > len(COWS)  # evicted, then loaded when they reported
        assert len(w.proc.states) <= 2 and len(w.proc.device_partition) == len(COWS)
        assert w.proc.silence.size() <= len(COWS)  # a device loaded again is not watched twice
        hits = w.metrics.state_cache_hits._value.get()
        assert hits + misses(w, "fix") == w.metrics.fixes_consumed._value.get()

    run(main())


def test_the_loop_evicts_the_collar_that_reported_least_recently():
    async def main():
        broker, store = Broker(partitions=1), FakeStore()
        w = Worker(broker, store, NORTH, state_cache_max=3)
        await w.start([0])
        for r, cow in enumerate(["cow-1", "cow-2", "cow-3", "cow-1", "cow-4", "cow-5"]):
            broker.fix(cow, T0 + r * 1000, *INSIDE)
            await drain(w, broker, 2)
        assert sorted(w.proc.cache.of_farms(["farm"])) == ["cow-2", "cow-3"]  # cow-1 reported after them

    run(main())


def test_an_unsaved_state_is_not_evicted_until_its_flush_succeeds():
    async def main():
        broker, store = Broker(partitions=1), FakeStore()
        for cow in COWS:
            broker.fix(cow, T0, *INSIDE)
        w = Worker(broker, store, NORTH, state_cache_max=2, flush_interval=3600.0, save_retry_s=0.0)
        await w.start([0])
        await steps(w)
        assert len(w.proc.states) == len(COWS) and evictions(w) == 0  # all pending in the checkpoint: pinned
        store.fail("save_packed", StoreUnavailable("down"), times=1)
        async with w.proc.lock:
            with pytest.raises(StoreUnavailable):
                await w.proc.flush()
            cache.evict(w.proc)
        assert len(w.proc.states) == len(COWS) and evictions(w) == 0  # not saved: pinned still
        await w.proc._reload()  # as the loop does after a failed save: back to the committed offsets
        await steps(w)
        async with w.proc.lock:
            await w.proc.flush()
            cache.evict(w.proc)
        assert len(w.proc.states) == 2 and evictions(w) == len(COWS) - 2 and sorted(store.states) == COWS

    run(main())


def test_an_evicted_collar_still_goes_silent_once_with_the_same_id():
    async def main():
        broker, store, clock = Broker(partitions=1), FakeStore(), Clock()
        broker.fix("cow-1", T0, *INSIDE)
        w = Worker(broker, store, NORTH, clock, SILENT_10S, silence_sweep_s=0.0, state_cache_max=2)
        await w.start([0])
        await steps(w)
        for r, cow in enumerate(COWS[2:]):
            broker.fix(cow, T0 + 1000 + r, *INSIDE)
            await steps(w, 2)
        assert "cow-1" not in w.proc.states  # evicted (saved)
        clock.s += 10.1
        for r, cow in enumerate(COWS[2:]):
            broker.fix(cow, T0 + 9000 + r, *INSIDE)  # the others report: only cow-1 is silent
        await steps(w, 4)
        silent = [e["event_id"] for e in broker.events() if e["type"] == "silent"]
        assert silent == [event_id("cow-1", "", 0, "silent", T0)]
        assert store.states["cow-1"]["sil"] == 1 and misses(w, "silence") == 1
        broker.fix("cow-1", T0 + 20_000, *INSIDE)
        await steps(w, 2)
        assert broker.events()[-1]["type"] == "resumed"

    run(main())


def test_a_farm_shortening_its_silence_time_reaches_its_evicted_collars():
    async def main():
        broker, store, clock = Broker(partitions=1), FakeStore(), Clock()
        broker.fix("cow-1", T0, *INSIDE)
        hour = {"farm": HerdRules(silence_s=3600)}
        w = Worker(broker, store, NORTH, clock, hour, silence_sweep_s=0.0, state_cache_max=2)
        await w.start([0])
        await steps(w)
        for r, cow in enumerate(COWS[2:]):
            broker.fix(cow, T0 + 1000 + r, *INSIDE)
            await steps(w, 2)
        assert "cow-1" not in w.proc.states
        w.follower.put_rules("farm", HerdRules(silence_s=10))  # its entry was due in an hour: now in 10 s
        await steps(w, 2)
        clock.s += 10.1
        for r, cow in enumerate(COWS[2:]):
            broker.fix(cow, T0 + 9000 + r, *INSIDE)
        await steps(w, 4)
        assert [e["event_id"] for e in broker.events() if e["type"] == "silent"] == [
            event_id("cow-1", "", 0, "silent", T0)
        ]

    run(main())


async def held_inside(bound: int, index: FenceIndex, clock: Clock | None = None) -> tuple[Broker, FakeStore, Worker]:
    """Every cow inside north, saved; with a bound of 2 four of them evicted."""
    broker, store = Broker(partitions=1), FakeStore()
    for i, cow in enumerate(COWS):
        broker.fix(cow, T0 + i, *INSIDE)
    w = Worker(broker, store, index, clock or Clock(), state_cache_max=bound, max_records=2)
    await w.start([0])
    await drain(w, broker)
    return broker, store, w


def test_a_fence_change_re_evaluates_the_evicted_devices_too():
    async def once(bound: int) -> list[tuple[str, str]]:
        broker, _, w = await held_inside(bound, NORTH)
        assert len(w.proc.states) == min(bound, len(COWS))
        w.follower.push(NORTH.with_farms({"farm": [fence("north", lon=18.0, version=2)]}, 1))  # moved away
        await steps(w, 2)
        async with w.proc.lock:
            await w.proc.flush()
        return [(e["type"], e["device_id"]) for e in broker.events() if e["type"] == "exit"]

    async def main():
        unbounded = await once(1_000_000)
        assert sorted(unbounded) == [("exit", cow) for cow in COWS]
        assert sorted(await once(2)) == sorted(unbounded)

    run(main())


def test_a_fence_and_a_settings_change_of_one_farm_in_one_swap_re_evaluate_its_evicted_devices():
    """Regression (issue 15 #3): the swap re-timed the farm's silences (which loads its evicted devices) before
    it took the farm's evicted devices to re-evaluate: none were left, so they missed the fence change."""

    async def once(bound: int) -> list[tuple[str, str]]:
        broker, store = Broker(partitions=1), FakeStore()
        broker.fix("cow-0", T0, *INSIDE)
        broker.fix("calf-1", T0 + 1, *INSIDE)  # another farm's (unregistered: the default farm), cached last
        w = Worker(broker, store, NORTH, Clock(), {"farm": HerdRules(silence_s=3600)}, state_cache_max=bound)
        await w.start([0])
        await drain(w, broker)
        w.follower.push(NORTH.with_farms({"farm": [fence("north", lon=18.0, version=2)]}, 1))  # moved away
        w.follower.put_rules("farm", HerdRules(silence_s=600))  # and the farm's silence time, in the same swap
        await drain(w, broker)
        return sorted((e["type"], e["device_id"]) for e in broker.events() if e["type"] == "exit")

    async def main():
        unbounded = await once(1_000_000)
        assert unbounded == [("exit", "cow-0")]
        assert await once(1) == unbounded  # evicted: loaded by the re-timing (the calf evicted), re-evaluated still

    run(main())


def test_a_mob_change_re_evaluates_the_evicted_devices_too():
    async def once(bound: int) -> list[str]:
        index = FenceIndex([fence("north"), fence("south", lat=59.0)])
        _, _, w = await held_inside(bound, index)
        w.follower.put_mobs("farm", {cow: Mob(frozenset({"south"})) for cow in COWS})  # their pasture is south
        await steps(w, 2)
        return sorted(e["device_id"] for e in w.producer.handed_events() if e["type"] == "escape")

    async def main():
        assert await once(1_000_000) == COWS
        assert await once(2) == COWS

    run(main())


def test_a_zone_opening_re_evaluates_the_evicted_devices_at_its_instant():
    async def once(bound: int) -> list[str]:
        clock = Clock()
        broker, _, w = await held_inside(bound, ZONE, clock)
        clock.s = OPEN / 1000
        await steps(w, 2)
        async with w.proc.lock:
            await w.proc.flush()
        return sorted(e["event_id"] for e in broker.events() if e["type"] == "enter")

    async def main():
        expected = sorted(event_id(cow, "north", 1, "enter", OPEN) for cow in COWS)
        assert await once(1_000_000) == expected
        assert await once(2) == expected

    run(main())


def test_assignment_loads_no_more_than_the_bound_and_watches_every_device():
    async def main():
        broker, store, w = await held_inside(1_000_000, NORTH)
        await w.consumer.rebalance([])
        b = Worker(broker, store, NORTH, Clock(), state_cache_max=2)
        asked: list[int] = []
        load = store.load_states
        store.load_states = lambda ids, where=None: asked.append(len(ids)) or load(ids, where)  # type: ignore[method-assign]
        await b.start([0])
        assert max(asked) == 2 and sum(asked) == len(COWS)  # a chunk of the bound at a time
        assert len(b.proc.states) == 2 and len(b.proc.device_partition) == len(COWS)
        assert b.proc.silence.size() == len(COWS)  # the evicted ones watched for silence too
        assert sorted(b.proc.cache.of_farms(["farm"])) == sorted(set(COWS) - set(b.proc.states))

    run(main())


def test_a_crash_and_a_reload_with_evicted_devices_lose_and_change_no_event():
    async def once(bound: int) -> list[str]:
        broker, store = Broker(partitions=1), FakeStore()
        cows_crossing(broker, rounds=10)
        a = Worker(broker, store, NORTH, state_cache_max=bound, max_records=4)
        await a.start([0])
        a.run()
        await until(lambda: broker.committed.get(0, 0) >= 12)
        await a.kill()  # SIGKILL: what was not committed is read again
        b = Worker(broker, store, NORTH, state_cache_max=bound, max_records=4)
        await b.start([0])
        store.fail("load_states", StoreUnavailable("down"), times=1)  # and a reload on the way
        b.run()
        await until(lambda: broker.committed.get(0, 0) == len(broker.records("locations")))
        await b.kill()
        return sorted(set(e["event_id"] for e in broker.events()))

    async def main():
        assert await once(2) == await once(1_000_000)

    run(main())


def test_the_gauges_count_the_evicted_devices_too():
    async def escaped(bound: int) -> Worker:
        index = FenceIndex([fence("north"), fence("south", lat=59.0)])
        broker, _, w = await held_inside(bound, index)
        w.follower.put_mobs("farm", {cow: Mob(frozenset({"south"})) for cow in COWS})  # all out of their pasture
        await drain(w, broker, 2)
        return w

    async def main():
        unbounded, bounded = await escaped(1_000_000), await escaped(2)
        assert len(bounded.proc.cache.of_farms(["farm"])) == len(COWS) - 2
        occupancy = [worker_gauges(w.proc)["occupancy"] for w in (unbounded, bounded)]
        assert occupancy[0] == occupancy[1] == [(("farm", "north"), len(COWS))]
        herd = [
            HerdGauges(lambda w=w: w.proc.states, FarmLabels(10), w.proc.cache.farm_flags) for w in (unbounded, bounded)
        ]
        assert herd[0].read() == herd[1].read() == {"farm": [len(COWS), 0, 0]}
        snap = worker_gauges(bounded.proc)
        assert (snap["devices"], snap["held"], snap["cache_bound"]) == (2, len(COWS), 2)

    run(main())


def test_an_evicted_collars_poisoned_record_leaves_it_held_for_the_next_fence_change(monkeypatch):
    import fencex.stream.loop as loop_module

    real = loop_module.process
    poison = {"cow-0", "cow-1"}  # (the reload after the failure caches one state: the other one is evicted)

    def poisoned(fixes, *args):
        if any(f.device_id in poison and f.ts_ms == T0 + 5000 for f in fixes):
            raise ZeroDivisionError("a bug this record triggers")
        return real(fixes, *args)

    monkeypatch.setattr(loop_module, "process", poisoned)

    async def main():
        broker, _, w = await held_inside(1, NORTH)
        for cow in sorted(poison):  # applied record by record after the failure: dead-lettered
            broker.fix(cow, T0 + 5000, *INSIDE)
        w.run()
        await until(lambda: broker.committed == broker.end_offsets())
        assert len(broker.records("locations.dlq")) == 2
        w.follower.push(NORTH.with_farms({"farm": [fence("north", lon=18.0, version=2)]}, 1))  # moved away
        await until(lambda: len([e for e in broker.events() if e["type"] == "exit"]) == len(COWS))
        await w.kill()

    run(main())


# ---------------------------------------------------------------- a farm's devices, by farm (issue 15 #3)


def test_a_farms_cached_devices_are_found_by_farm_and_follow_eviction_loads_and_moves():
    c = StateCache(2)
    c.put({"a": state(), "b": state("other"), "c": state()}, {})
    assert c.cached_of(["farm"]) == ["a", "c"] and c.cached_of(["other"]) == ["b"] and c.cached_of(["x"]) == []
    assert c.evict(lambda d: False, {}) == ["a"]  # evicted: out of the cached index, into the evicted one
    assert c.cached_of(["farm"]) == ["c"] and c.of_farms(["farm"]) == ["a"]
    c.put({"a": state()}, {})  # it reports again
    assert c.cached_of(["farm"]) == ["c", "a"] and c.of_farms(["farm"]) == []
    c.states["c"] = state("other")  # the pipeline moved it to another farm (a transfer): indexed after the batch
    c.index(["c"])
    assert c.cached_of(["farm"]) == ["a"] and c.cached_of(["other", "farm"]) == ["b", "c", "a"]
    assert list(c.cached["farm"]) == ["a"]  # the old farm's entry dropped when it was read
    c.forget(["b"], keep=set())  # its partition went
    assert c.cached_of(["other"]) == ["c"] and c.cached["other"] == {"c": None}
    c.states.pop("a")  # gone by a path that does not tell the index (a device moved to another partition)
    assert c.cached_of(["farm"]) == [] and "farm" not in c.cached
    c.clear()
    assert c.cached == {}


class Scans(dict):
    """The states, counting the walks over all of them (eviction iterates from the front: not counted)."""

    walks = 0

    def items(self):
        Scans.walks += 1
        return super().items()

    def keys(self):
        Scans.walks += 1
        return super().keys()

    def values(self):
        Scans.walks += 1
        return super().values()


@pytest.mark.parametrize("bound", [1_000_000, 1])
def test_a_farms_change_finds_its_devices_without_walking_every_state_and_after_a_transfer(bound):
    """Issue 15 #3: a fence, mob or settings change of farm F found F's cached devices by walking every
    cached state (a million states: ~0.1 s a change, under the lock). Now by the cache's index by farm,
    which follows a device re-registered to another farm: its new farm's changes reach it, its old farm's
    do not (cached, or evicted with a bound of one)."""

    async def main():
        broker, store = Broker(partitions=1), FakeStore()
        index = FenceIndex([fence("north"), fence("theirs", tenant="other")])
        broker.fix("cow-1", T0, *INSIDE)
        broker.fix("cow-2", T0, *INSIDE)
        rules = {"farm": HerdRules(silence_s=3600), "other": HerdRules(silence_s=3600)}
        w = Worker(broker, store, index, Clock(), rules, state_cache_max=bound, max_records=2)
        w.proc.cache.states = w.proc.states = Scans()
        await w.start([0])
        await drain(w, broker)
        w.follower.tenants["cow-1"] = "other"  # re-registered: its next fix moves it
        broker.fix("cow-1", T0 + 1000, *INSIDE)
        await drain(w, broker)
        assert [e["type"] for e in broker.events() if e["device_id"] == "cow-1"][-2:] == ["transferred", "enter"]
        Scans.walks, seen = 0, {e["event_id"] for e in broker.events()}  # (the events topic is partitioned)
        w.follower.push(index.with_farms({"farm": [fence("north", lon=18.0, version=2)]}, 1))  # north moved away
        w.follower.put_rules("farm", HerdRules(silence_s=600))  # re-timed with the swap
        await drain(w, broker)
        after = [(e["type"], e["device_id"]) for e in broker.events() if e["event_id"] not in seen]
        assert ("exit", "cow-2") in after and not [e for e in after if e[1] == "cow-1"]  # cow-1 is the other farm's
        w.follower.put_mobs("farm", {"cow-2": Mob(frozenset({"north"}))})  # no fence: herd_changed
        w.follower.put_rules("other", HerdRules(silence_s=600))
        await drain(w, broker)
        assert Scans.walks == 0
        seen = {e["event_id"] for e in broker.events()}
        w.follower.push(w.proc.index.with_farms({"other": [fence("theirs", tenant="other", lon=18.0, version=2)]}, 2))
        await drain(w, broker)
        assert Scans.walks == 0
        after = [(e["type"], e["device_id"], e["fence_id"]) for e in broker.events() if e["event_id"] not in seen]
        assert ("exit", "cow-1", "theirs") in after and {d for _, d, _ in after} == {"cow-1"}

    run(main())

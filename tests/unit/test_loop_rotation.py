"""Rotation schedules in the worker loop, with the in-memory fakes: transitions on the worker's clock
with no fix, once, across rebalances, crashes and restarts, with the same ids (issue 12 part 4)."""

from __future__ import annotations

import pytest

from fencex.event import event_id
from fencex.index import FenceIndex
from tests.unit.factory import fence
from tests.unit.fakes import Broker, FakeStore
from tests.unit.test_loop import INSIDE, T0, Clock, Worker, fast_retries, run, steps  # noqa: F401
from tests.unit.test_rotation import window

OPEN, CLOSE = T0 + 120_000, T0 + 240_000  # the zone is active between (the clock starts at T0 + 60 s)
ZONE = FenceIndex([fence("north", kind="zone", schedule=window(OPEN, CLOSE))])


def fence_events(events: list[dict]) -> list[tuple[str, str, str]]:
    return [(e["type"], e["fence_id"], e["ts"]) for e in events if e["type"] in ("enter", "exit")]


def enter_id(at: int = OPEN) -> str:
    return event_id("cow-1", "north", 1, "enter", at)


def ids(events: list[dict], kind: str) -> list[str]:
    return [e["event_id"] for e in events if e["type"] == kind]


def test_a_zone_opens_and_closes_on_the_workers_clock_with_no_fix_once_each():
    async def main():
        broker, store, clock = Broker(partitions=1), FakeStore(), Clock()
        broker.fix("cow-1", T0, *INSIDE)
        w = Worker(broker, store, ZONE, clock)
        await w.start([0])
        await steps(w)
        assert w.producer.handed_events() == []  # inside, but the zone is not active yet
        clock.s = OPEN / 1000 - 0.001
        await steps(w)
        assert w.producer.handed_events() == []  # not yet
        clock.s = OPEN / 1000
        await steps(w)
        assert ids(broker.events(), "enter") == [enter_id()]  # at the transition's instant
        assert store.states["cow-1"]["sched"] == OPEN and store.states["cow-1"]["in"]["north"][0] == OPEN
        clock.s = CLOSE / 1000 + 3600
        await steps(w, 5)
        assert ids(broker.events(), "exit") == [event_id("cow-1", "north", 1, "exit", CLOSE)]
        assert len(broker.events()) == 2  # once each
        assert w.metrics.schedule_transitions._value.get() == 2

    run(main())


def test_a_transition_missed_while_no_worker_ran_is_applied_when_the_partitions_are_loaded_once():
    async def main():
        broker, store, clock = Broker(partitions=1), FakeStore(), Clock()
        broker.fix("cow-1", T0, *INSIDE)
        a = Worker(broker, store, ZONE, clock)
        await a.start([0])
        await steps(a)
        a.run()
        await a.kill()  # down from before the zone opens...
        clock.s = OPEN / 1000 + 60  # ...until after
        b = Worker(broker, store, ZONE, clock)
        await b.start([0])  # the load applies it
        await steps(b)
        assert ids(b.producer.handed_events(), "enter") == [enter_id()]
        await b.consumer.rebalance([])  # saved by the revoke's flush
        c = Worker(broker, store, ZONE, clock)
        await c.start([0])
        await steps(c)
        assert c.producer.handed_events() == []  # applied once
        clock.s = CLOSE / 1000 + 1
        await steps(c)
        assert ids(c.producer.handed_events(), "exit") == [event_id("cow-1", "north", 1, "exit", CLOSE)]

    run(main())


def test_missed_transitions_are_applied_in_order():
    async def main():
        broker, store, clock = Broker(partitions=1), FakeStore(), Clock()
        broker.fix("cow-1", T0, *INSIDE)
        a = Worker(broker, store, ZONE, clock)
        await a.start([0])
        await steps(a)
        a.run()
        await a.kill()
        clock.s = CLOSE / 1000 + 60  # down while the zone opened and closed
        b = Worker(broker, store, ZONE, clock)
        await b.start([0])
        await steps(b)
        assert [(e["type"], e["event_id"]) for e in b.producer.handed_events()] == [
            ("enter", enter_id()),
            ("exit", event_id("cow-1", "north", 1, "exit", CLOSE)),
        ]

    run(main())


@pytest.mark.parametrize("saved", [True, False])
def test_a_transition_across_a_rebalance_or_a_crash_is_published_once_with_one_id(saved):
    """The old owner applies the transition; then either the revoke's flush saves it (the new owner
    must not repeat it), or the worker dies before any flush (the new owner repeats it: same id)."""

    async def main():
        broker, store, clock = Broker(partitions=1), FakeStore(), Clock()
        broker.fix("cow-1", T0, *INSIDE)
        a = Worker(broker, store, ZONE, clock, flush_interval=3600.0)
        await a.start([0])
        await steps(a)
        async with a.proc.lock:
            await a.proc.flush()
        clock.s = OPEN / 1000 + 1
        real = a.proc.flush

        async def no_flush(wait: bool = True) -> None:  # the worker dies before its flush completes
            return None

        if not saved:
            a.proc.flush = no_flush
        await steps(a, 1)
        first = ids(a.producer.handed_events(), "enter")
        assert first == [enter_id()]
        if saved:
            await a.consumer.rebalance([])
            assert store.states["cow-1"]["sched"] == OPEN
        else:
            a.proc.flush = real
            a.producer.crash()
            assert "sched" not in store.states["cow-1"]
        b = Worker(broker, store, ZONE, clock)
        await b.start([0])
        await steps(b)
        again = ids(b.producer.handed_events(), "enter")
        assert again == ([] if saved else first)
        assert ids(broker.events(), "enter") == first  # delivered once, with one id

    run(main())


def test_a_schedule_set_on_a_fence_applies_its_past_transitions_at_the_devices_own_times():
    """A fence with no schedule, a device inside it; then a schedule whose window closed 30 s after
    the device's last fix: the device exits at the closing instant, with no fix."""

    async def main():
        broker, store, clock = Broker(partitions=1), FakeStore(), Clock()
        broker.fix("cow-1", T0, *INSIDE)
        w = Worker(broker, store, FenceIndex([fence("north", kind="zone")]), clock)
        await w.start([0])
        await steps(w)
        assert ids(broker.events(), "enter") == [event_id("cow-1", "north", 1, "enter", T0)]
        w.follower.push(
            FenceIndex([fence("north", kind="zone", version=2, schedule=window(T0 - 3_600_000, T0 + 30_000))])
        )
        await steps(w)
        assert ids(broker.events(), "exit") == [event_id("cow-1", "north", 2, "exit", T0 + 30_000)]
        await steps(w)
        assert len(broker.events()) == 2

    run(main())


def test_a_farm_without_schedules_has_no_transitions():
    async def main():
        broker, store, clock = Broker(partitions=1), FakeStore(), Clock()
        w = Worker(broker, store, FenceIndex([fence("north")]), clock)
        await w.start([0])
        assert w.proc.rotation.heap == []
        w.follower.push(ZONE)
        await steps(w)
        assert w.proc.rotation.heap == [(OPEN, "farm")]

    run(main())


def test_more_missed_transitions_than_a_catch_up_applies_leave_the_device_as_the_latest_one_says():
    """Review 12: a zone of 50 ten-minute windows a day (100 transitions a day) and a worker down for
    13 days, back while the zone is open: the catch-up took the first 1,000 transitions (10 days)
    and stopped, leaving the cow out of the open zone, with no enter, until the zone next opened."""
    from fencex.schedule import Schedule

    windows = [
        {"kind": "daily", "start": f"{m // 60:02d}:{m % 60:02d}", "end": f"{(m + 10) // 60:02d}:{(m + 10) % 60:02d}"}
        for m in range(0, 50 * 20, 20)
    ]
    zone = FenceIndex([fence("north", kind="zone", schedule=Schedule.model_validate({"windows": windows}))])
    day = 86_400_000
    now = (T0 // day + 13) * day + 5 * 60_000  # 00:05 UTC, 13 days on: in the 00:00-00:10 window

    async def main():
        broker, store, clock = Broker(partitions=1), FakeStore(), Clock()
        broker.fix("cow-1", T0, *INSIDE)
        a = Worker(broker, store, zone, clock, schedule_catchup_s=14 * 86_400)
        await a.start([0])
        await steps(a)
        a.run()
        await a.kill()
        clock.s = now / 1000
        b = Worker(broker, store, zone, clock, schedule_catchup_s=14 * 86_400)
        await b.start([0])
        await steps(b)
        last = [e for e in b.producer.handed_events() if e["type"] in ("enter", "exit")][-1]
        assert (last["type"], last["event_id"]) == ("enter", event_id("cow-1", "north", 1, "enter", now - 5 * 60_000))
        assert "north" in store.states["cow-1"]["in"]

    run(main())


def test_one_farms_fence_change_costs_the_worker_that_farm_only(monkeypatch):
    """Review of issue 15 #2: a farm saving its fences in a loop (the API takes thousands of writes a
    second) made every worker, per change, on its event loop, re-watch every held device's silence, ask
    every scheduled farm for its next transition and scan every held device for missed ones (0.43 s a
    change with 200,000 held devices and 10,000 scheduled farms). Now the changed farm's only: the other
    farms' silences and transitions stay as they were, and still fire; the changed farm's new schedule holds."""

    async def main():
        from fencex.herd import HerdRules
        from fencex.schedule import FarmSchedules
        from fencex.stream import rotation

        broker, store, clock = Broker(partitions=1), FakeStore(), Clock()
        theirs = fence("theirs", tenant="other", kind="zone", schedule=window(OPEN + 60_000, CLOSE))
        index = FenceIndex([fence("north", kind="zone", schedule=window(OPEN, CLOSE)), theirs])
        broker.fix("cow-1", T0, *INSIDE)
        broker.fix("sheep-1", T0, *INSIDE)
        rules = {"farm": HerdRules(silence_s=3600), "other": HerdRules(silence_s=3600)}
        w = Worker(broker, store, index, clock, rules)
        w.follower.tenants["sheep-1"] = "other"
        await w.start([0])
        await steps(w)
        watched, asked, scanned = [], [], []
        real_load, real_next, real_by_farm = w.proc.silence.load, FarmSchedules.next_change, rotation._by_farm
        w.proc.silence.load = lambda part, devices, *a: watched.extend(ds := list(devices)) or real_load(part, ds, *a)
        monkeypatch.setattr(FarmSchedules, "next_change", lambda s, at: asked.append(s) or real_next(s, at))
        monkeypatch.setattr(rotation, "_by_farm", lambda p, d, f: scanned.append(d) or real_by_farm(p, d, f))
        later = window(OPEN + 30_000, CLOSE)  # the farm's zone opens 30 s later
        w.follower.push(index.with_farms({"farm": [fence("north", kind="zone", version=2, schedule=later)]}, 1))
        await steps(w, 1)
        assert watched == []  # fences do not change a silence
        assert {id(s) for s in asked} <= {id(w.proc.index.schedules["farm"])}
        assert None not in scanned and all(set(d) <= {"cow-1"} for d in scanned)
        for at in (OPEN, OPEN + 30_000, OPEN + 60_000):
            clock.s = at / 1000
            await steps(w)
        assert ids(broker.events(), "enter") == [
            event_id("cow-1", "north", 2, "enter", OPEN + 30_000),
            event_id("sheep-1", "theirs", 1, "enter", OPEN + 60_000),
        ]

    run(main())


def test_a_farms_new_silence_time_holds_while_another_farm_changes_its_fences_every_step():
    """With the change above: a fence change no longer re-times every silence, so settings changed with
    it are re-timed at the swap, not left to a step with no new index (one farm's loop would starve it)."""

    async def main():
        from fencex.herd import HerdRules

        broker, store, clock = Broker(partitions=1), FakeStore(), Clock()
        index = FenceIndex([fence("north"), fence("theirs", tenant="other")])
        broker.fix("cow-1", T0, *INSIDE)
        broker.fix("sheep-1", T0, *INSIDE)
        rules = {"farm": HerdRules(silence_s=3600), "other": HerdRules(silence_s=3600)}
        w = Worker(broker, store, index, clock, rules, silence_sweep_s=0.0)
        w.follower.tenants["sheep-1"] = "other"
        await w.start([0])
        await steps(w)
        w.follower.put_rules("other", HerdRules(silence_s=10))
        for k in range(1, 5):
            index = index.with_farms({"farm": [fence("north", version=k + 1)]}, k)
            w.follower.push(index)
            clock.s += 5
            await steps(w, 1)
        silent = [e["device_id"] for e in broker.events() if e["type"] == "silent"]
        assert silent == ["sheep-1"]

    run(main())


def test_a_fence_change_of_a_farm_the_worker_holds_no_device_of_waits_for_no_flush():
    """Review of issue 15 #2: a swap waited for the checkpoint to be saved (produced, stored, committed)
    before re-evaluating, whatever the farm: a farm saving its fences in a loop made every worker wait
    for a flush every step. Only a worker holding devices of the changed farm needs their states saved."""

    async def main():
        broker, store, clock = Broker(partitions=1), FakeStore(), Clock()
        index = FenceIndex([fence("north"), fence("theirs", tenant="other")])
        broker.fix("cow-1", T0, *INSIDE)
        w = Worker(broker, store, index, clock)
        await w.start([0])
        await steps(w)
        waited = []
        real = w.proc.flush
        w.proc.flush = lambda wait=True: waited.append(wait) or real(wait)
        w.follower.push(index := index.with_farms({"other": [fence("theirs", tenant="other", version=2)]}, 1))
        await steps(w, 1)
        assert True not in waited
        w.follower.push(index.with_farms({"farm": [fence("north", version=2, lon=18.0)]}, 2))  # cow-1's farm
        await steps(w, 1)
        assert True in waited
        assert ("exit", "cow-1") in [(e["type"], e["device_id"]) for e in w.producer.handed_events()]

    run(main())

"""The worker loop driven with in-memory fakes of its ports: crash points, rebalances,
store errors, poisoned records, fencing and the ids of events re-evaluated after a fence change."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import fencex.stream.loop as loop_module
from fencex.errors import BrokerUnavailable, Fenced, StoreUnavailable
from fencex.event import event_id
from fencex.fix import Fix
from fencex.herd import HerdRules
from fencex.index import FenceIndex
from fencex.metrics import PushMetrics
from fencex.pipeline import default_rules, process
from fencex.retrying import retrying
from fencex.stream import rebalance
from fencex.stream.checkpoint import Checkpoint, OffsetRegression
from fencex.stream.config import LoopSettings
from fencex.stream.loop import Processor
from tests.unit.factory import fence
from tests.unit.fakes import Broker, FakeConsumer, FakeFollower, FakeProducer, FakeStore

T0 = 1_780_000_000_000
# 11 m apart, across the fence's east border: a cow's step (the herd rules distrust a fix
# implying more than 20 m/s, so a track from the middle to 800 m out in a second would be jumps)
INSIDE = (17.6099, 59.805)
OUTSIDE = (17.6101, 59.805)
NORTH = FenceIndex([fence("north")])
TENANTS = {f"cow-{i}": "farm" for i in range(8)}


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    fast = functools.partial(retrying, initial=0.001, max_delay=0.005)
    monkeypatch.setattr(loop_module, "retrying", fast)
    monkeypatch.setattr(rebalance, "retrying", fast)


class Worker:
    def __init__(
        self,
        broker: Broker,
        store: FakeStore,
        index: FenceIndex,
        clock: Callable[[], float] = lambda: T0 / 1000 + 60,
        rules: dict[str, HerdRules] | None = None,
        **settings: Any,
    ) -> None:
        self.consumer = FakeConsumer(broker)
        self.producer = FakeProducer(broker)
        self.follower = FakeFollower(index, TENANTS)
        self.follower.rules.update(rules or {})
        self.metrics = PushMetrics(CollectorRegistry())
        self.proc = Processor(
            store,
            self.consumer,
            self.producer,
            self.follower,
            self.metrics,
            settings=LoopSettings(**{"flush_interval": 0.0, **settings}),
            clock=clock,
        )
        self.task: asyncio.Task[None] | None = None

    async def start(self, partitions: list[int]) -> None:
        await self.proc.start()
        await self.consumer.rebalance(partitions)

    def run(self) -> None:
        self.task = asyncio.create_task(self.proc.run())

    async def kill(self) -> None:
        """SIGKILL: the loop stops where it is; what the producer had not delivered is lost."""
        assert self.task is not None
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        if self.proc._flushing is not None:
            self.proc._flushing.cancel()
        self.producer.crash()


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.002)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


def track(broker: Broker, steps: int = 6) -> list[Fix]:
    """Two cows crossing the fence's border back and forth, one fix a second each."""
    fixes = []
    for step in range(steps):
        for i, cow in enumerate(("cow-1", "cow-2")):
            lon, lat = INSIDE if (step + i) % 2 == 0 else OUTSIDE
            broker.fix(cow, T0 + step * 1000, lon, lat)
            fixes.append(Fix(cow, T0 + step * 1000, lon, lat))
    return fixes


def expected_ids(fixes: list[Fix], index: FenceIndex = NORTH) -> set[str]:
    """What the worker must publish: the pipeline with every farm's default herd rules, as the worker's."""
    return {e.event_id for e in process(fixes, index, {}, lambda d: TENANTS.get(d, "default"), default_rules).events}


def delivered_ids(broker: Broker) -> list[str]:
    return [e["event_id"] for e in broker.events()]


# ---------------------------------------------------------------- checkpoint


def test_checkpoint_offsets_only_move_forward():
    cp = Checkpoint(interval=1.0)
    cp.store_offset(0, 10)
    cp.store_offset(0, 12)
    with pytest.raises(OffsetRegression):
        cp.store_offset(0, 12)  # the same again
    with pytest.raises(OffsetRegression):
        cp.store_offset(0, 11)  # backwards
    pending = cp.take()
    assert pending.offsets == {0: 12} and cp.empty()
    cp.committed(pending.offsets)
    with pytest.raises(OffsetRegression):
        cp.store_offset(0, 12)  # at the committed offset: nothing applied since
    cp.store_offset(1, 1)  # other partitions are independent
    cp.reassigned()  # after a rebalance the committed offsets are the group's, not this worker's
    cp.drop()
    cp.store_offset(0, 5)


# ---------------------------------------------------------------- happy path


def test_events_published_states_saved_offsets_committed():
    async def main():
        broker, store = Broker(), FakeStore()
        fixes = track(broker)
        w = Worker(broker, store, NORTH)
        await w.start([0, 1, 2, 3])
        w.run()
        await until(lambda: broker.committed == broker.end_offsets())
        await w.kill()
        assert set(delivered_ids(broker)) == expected_ids(fixes) and len(delivered_ids(broker)) == len(
            expected_ids(fixes)
        )
        assert store.states["cow-1"]["ts"] == T0 + 5000
        assert {d for devs in store.parts.values() for d in devs} == {"cow-1", "cow-2"}

    run(main())


# ---------------------------------------------------------------- crash points


@pytest.mark.parametrize(
    "point,error",
    [
        ("wait_acked", BrokerUnavailable("no acks")),
        ("save_packed", StoreUnavailable("redis down")),
        ("commit", BrokerUnavailable("commit failed")),
    ],
)
def test_a_crash_at_any_step_of_the_flush_commits_nothing_and_the_replay_gives_the_same_ids(point, error):
    async def main():
        broker, store = Broker(), FakeStore()
        fixes = track(broker)
        target = w = Worker(broker, store, NORTH)
        failing = {"wait_acked": w.producer, "save_packed": store, "commit": w.consumer}[point]
        failing.fail(point, error, times=1000)  # it never comes back: the worker is killed
        await w.start([0, 1, 2, 3])
        w.run()
        await until(lambda: failing.calls[point] >= 2)  # failed, reloaded, failed again
        await target.kill()
        assert broker.committed == {}  # nothing committed
        if point != "commit":
            assert store.saves == 0  # nor saved, when the acks or the save failed
        published_before = set(e["event_id"] for e in w.producer.handed_events())
        failing.fail(point, error, times=0)
        failing._failures.clear()
        # the next worker replays everything from the committed offsets
        b = Worker(broker, store, NORTH)
        await b.start([0, 1, 2, 3])
        b.run()
        await until(lambda: broker.committed == broker.end_offsets())
        await b.kill()
        replayed = set(delivered_ids(broker))
        assert replayed == expected_ids(fixes)  # none lost, none made up
        assert published_before <= replayed  # what the first worker had published has the same ids

    run(main())


def test_transient_errors_are_retried_then_the_loop_goes_on():
    async def main():
        broker, store = Broker(), FakeStore()
        fixes = track(broker)
        w = Worker(broker, store, NORTH)
        await w.start([0, 1, 2, 3])
        store.fail("save_packed", StoreUnavailable("redis down"), times=3)
        store.fail("load_states", StoreUnavailable("redis down"), times=2)
        w.producer.fail("wait_acked", BrokerUnavailable("no acks"), times=2)
        w.run()
        await until(lambda: broker.committed == broker.end_offsets())
        await w.kill()
        assert set(delivered_ids(broker)) == expected_ids(fixes)
        assert w.metrics.store_errors._value.get() >= 3 and w.metrics.broker_errors._value.get() >= 2

    run(main())


def test_store_errors_while_loading_on_assignment_are_retried():
    async def main():
        broker, store = Broker(), FakeStore()
        fixes = track(broker)
        store.fail("partition_devices", StoreUnavailable("redis down"), times=3)
        w = Worker(broker, store, NORTH)
        await w.start([0, 1, 2, 3])  # returns once loaded
        assert store.calls["partition_devices"] == 4
        w.run()
        await until(lambda: broker.committed == broker.end_offsets())
        await w.kill()
        assert set(delivered_ids(broker)) == expected_ids(fixes)

    run(main())


# ---------------------------------------------------------------- rebalances


def test_revoke_flushes_and_a_moved_device_continues_on_its_new_owner():
    async def main():
        broker, store = Broker(), FakeStore()
        p1 = broker.partition_of(b"cow-1")
        broker.fix("cow-1", T0, *INSIDE)
        a = Worker(broker, store, NORTH, flush_interval=3600.0)  # no flush but the revoke's
        await a.start([p1])
        await a.proc.step()
        assert broker.committed == {} and store.states == {}  # applied, not yet flushed
        await a.consumer.rebalance([])  # the partition goes to another worker
        assert broker.committed == {p1: 1} and store.states["cow-1"]["in"].keys() == {"north"}
        assert [e["type"] for e in broker.events()] == ["enter"]
        assert a.proc.states == {}  # the revoked partition's devices are dropped
        b = Worker(broker, store, NORTH)
        await b.start([p1])  # assign loads the device's state
        assert b.proc.states["cow-1"].members.keys() == {"north"}
        broker.fix("cow-1", T0 + 1000, *OUTSIDE)
        b.run()
        await until(lambda: broker.committed == broker.end_offsets())
        await b.kill()
        assert [e["type"] for e in broker.events()] == ["enter", "exit"]  # no second enter

    run(main())


def test_a_batch_fetched_across_a_rebalance_is_read_again():
    async def main():
        broker, store = Broker(), FakeStore()
        fixes = track(broker)
        w = Worker(broker, store, NORTH)
        await w.start([0, 1, 2, 3])
        real = w.consumer.getmany

        async def rebalance_during_fetch(timeout_ms, max_records):
            w.consumer.getmany = real
            await w.consumer.rebalance([0, 1, 2, 3])  # the group rebalanced while getmany waited,
            return await real(timeout_ms, max_records)  # then it fetched from the new positions

        w.consumer.getmany = rebalance_during_fetch
        w.run()
        await until(lambda: broker.committed == broker.end_offsets())
        await w.kill()
        assert set(delivered_ids(broker)) == expected_ids(fixes)

    run(main())


# ---------------------------------------------------------------- poisoned records


def test_a_record_that_fails_after_parsing_is_dead_lettered_once_and_the_loop_goes_on(monkeypatch):
    real = loop_module.process

    def poisoned_process(fixes, *args):
        if any(f.device_id == "cow-3" for f in fixes):
            raise ZeroDivisionError("a bug this record triggers")
        return real(fixes, *args)

    monkeypatch.setattr(loop_module, "process", poisoned_process)

    async def main():
        broker, store = Broker(partitions=1), FakeStore()
        broker.fix("cow-1", T0, *INSIDE)
        poison = broker.fix("cow-3", T0, *INSIDE)
        broker.fix("cow-2", T0, *INSIDE)
        w = Worker(broker, store, NORTH)
        await w.start([0])
        w.run()
        await until(lambda: broker.committed == broker.end_offsets())
        await w.kill()
        assert sorted(e["device_id"] for e in broker.events()) == ["cow-1", "cow-2"]
        (dead,) = broker.records("locations.dlq")
        headers = dict(dead.headers)
        assert headers["reason"] == b"processing_error" and b"ZeroDivisionError" in headers["detail"]
        assert headers["source"] == f"locations/0/{poison.offset}".encode() and dead.value == poison.value
        assert w.metrics.dlq.labels("processing_error")._value.get() == 1

    run(main())


def test_records_the_broker_refuses_for_good_become_stubs_and_the_loop_goes_on():
    async def main():
        broker, store = Broker(), FakeStore()
        fixes = track(broker)
        w = Worker(broker, store, NORTH)
        w.producer.refuse = lambda topic, key, value: topic == "fence-events" and key == b"cow-2"
        await w.start([0, 1, 2, 3])
        w.run()
        await until(lambda: broker.committed == broker.end_offsets())
        await w.kill()
        cow2 = {
            e.event_id for e in process(fixes, NORTH, {}, TENANTS.get, default_rules).events if e.device_id == "cow-2"
        }
        assert set(delivered_ids(broker)) == expected_ids(fixes) - cow2
        stubs = broker.records("locations.dlq")
        assert len(stubs) == len(cow2) and all(dict(s.headers)["reason"] == b"undelivered" for s in stubs)
        assert dict(stubs[0].headers)["topic"] == b"fence-events" and stubs[0].key == b"cow-2"
        assert w.metrics.undelivered.labels("events", "too_large")._value.get() == len(cow2)

    run(main())


# ---------------------------------------------------------------- fence changes (issue 9 #8)


def test_events_of_a_fence_change_have_the_same_ids_after_a_crash():
    """The fence is deleted while the device's last fix is applied but not saved; the worker
    crashes right after publishing the exit. The next owner must publish the same exit."""

    async def main():
        broker, store = Broker(partitions=1), FakeStore()
        broker.fix("cow-1", T0, *INSIDE)
        broker.fix("cow-1", T0 + 1000, *INSIDE)
        a = Worker(broker, store, NORTH, flush_interval=3600.0, max_records=1)
        await a.start([0])
        await a.proc.step()  # T0: enter
        async with a.proc.lock:
            await a.proc.flush()  # saved at T0
        await a.proc.step()  # T0 + 1000: applied, not saved
        gone = FenceIndex([])
        a.follower.push(gone)  # the fence is deleted
        await a.proc.step()  # the exit is published
        exits_a = [e["event_id"] for e in a.producer.handed_events() if e["type"] == "exit"]
        assert len(exits_a) == 1
        a.producer.crash()  # killed before the next flush
        b = Worker(broker, store, gone)
        await b.start([0])
        b.run()
        await until(lambda: broker.committed == broker.end_offsets())
        await b.kill()
        exits_b = [e["event_id"] for e in b.producer.handed_events() if e["type"] == "exit"]
        assert exits_b == exits_a

    run(main())


# ---------------------------------------------------------------- fencing (issue 9 #9)


def test_a_worker_stalled_past_its_session_cannot_overwrite_the_new_owners_state():
    async def main():
        broker, store = Broker(partitions=1), FakeStore()
        broker.fix("cow-1", T0, *INSIDE)
        old = Worker(broker, store, NORTH, flush_interval=3600.0)
        await old.start([0])
        await old.proc.step()  # applied, then the worker stalls before its flush
        new = Worker(broker, store, NORTH)
        await new.start([0])  # the group gave the partition away meanwhile
        broker.fix("cow-1", T0 + 5000, *OUTSIDE)
        new.run()
        await until(lambda: broker.committed == broker.end_offsets())
        await new.kill()
        saved = dict(store.states["cow-1"])
        assert saved["ts"] == T0 + 5000
        # the stalled worker wakes up: its save is refused, nothing committed, its pending work dropped
        committed = dict(broker.committed)
        old.proc.checkpoint.interval = 0.0  # its flush is due when it wakes
        old.run()
        await until(lambda: old.metrics.saves_fenced._value.get() == 1)
        assert store.states["cow-1"] == saved and broker.committed == committed
        assert old.proc.states == {} and old.proc.checkpoint.empty()
        async with old.proc.lock:
            with pytest.raises(Fenced):
                old.proc.checkpoint.add({"cow-1": new.proc.states["cow-1"]}, [])
                await old.proc.flush()
        await old.consumer.rebalance([])  # the rebalance reaches it at last
        await old.kill()
        assert store.states["cow-1"] == saved

    run(main())


# ---------------------------------------------------------------- silence (issue 11 item 4)

SILENT_10S = {"farm": HerdRules(silence_s=10)}


class Clock:
    """The workers' wall clock, moved by the test (seconds)."""

    def __init__(self, s: float = T0 / 1000 + 60) -> None:
        self.s = s

    def __call__(self) -> float:
        return self.s


def silent_ids(events: list[dict], device: str = "cow-1") -> list[str]:
    return [e["event_id"] for e in events if e["type"] == "silent" and e["device_id"] == device]


async def steps(w: Worker, n: int = 3) -> None:
    for _ in range(n):
        await w.proc.step()


def test_a_silent_collar_is_reported_once_then_resumed_with_its_next_fix():
    async def main():
        broker, store, clock = Broker(partitions=1), FakeStore(), Clock()
        broker.fix("cow-1", T0, *INSIDE)
        w = Worker(broker, store, NORTH, clock, SILENT_10S, silence_sweep_s=0.0)
        await w.start([0])
        await steps(w)
        clock.s += 9.9
        await steps(w)
        assert silent_ids(w.producer.handed_events()) == []  # 9.9 s without a fix: not yet
        clock.s += 0.2
        await steps(w)
        first = event_id("cow-1", "", 0, "silent", T0)
        assert silent_ids(broker.events()) == [first]  # published, and
        assert store.states["cow-1"]["sil"] == 1  # the mark saved with the flush
        clock.s += 3600
        await steps(w)
        assert silent_ids(w.producer.handed_events()) == [first]  # once per silence
        broker.fix("cow-1", T0 + 5000, *INSIDE)
        await steps(w)
        assert [e["type"] for e in broker.events()][-1] == "resumed" and "sil" not in store.states["cow-1"]
        clock.s += 10.1
        await steps(w)  # silent again: a new silence, a new id (its last fix's)
        assert silent_ids(broker.events()) == [first, event_id("cow-1", "", 0, "silent", T0 + 5000)]

    run(main())


@pytest.mark.parametrize("swept_before_the_move", [True, False])
def test_a_device_whose_partition_moves_goes_silent_once(swept_before_the_move):
    async def main():
        broker, store, clock = Broker(partitions=1), FakeStore(), Clock()
        broker.fix("cow-1", T0, *INSIDE)
        a = Worker(broker, store, NORTH, clock, SILENT_10S, silence_sweep_s=0.0, flush_interval=3600.0)
        await a.start([0])
        await steps(a)
        if swept_before_the_move:
            clock.s += 11
            await steps(a)  # marked silent by the old owner; saved by the revoke's flush
        await a.consumer.rebalance([])
        b = Worker(broker, store, NORTH, clock, SILENT_10S, silence_sweep_s=0.0)
        await b.start([0])
        clock.s += 11
        await steps(b, 5)
        handed = silent_ids(a.producer.handed_events()) + silent_ids(b.producer.handed_events())
        assert handed == [event_id("cow-1", "", 0, "silent", T0)]  # not zero times, not twice
        assert silent_ids(broker.events()) == handed

    run(main())


def test_a_crash_before_the_mark_is_saved_gives_the_same_silent_id_again():
    async def main():
        broker, store, clock = Broker(partitions=1), FakeStore(), Clock()
        broker.fix("cow-1", T0, *INSIDE)
        a = Worker(broker, store, NORTH, clock, SILENT_10S, silence_sweep_s=0.0, flush_interval=3600.0)
        await a.start([0])
        await steps(a)
        async with a.proc.lock:
            await a.proc.flush()  # the fix is saved
        clock.s += 11
        await steps(a)  # the sweep hands the silent event to the producer...
        (sent,) = silent_ids(a.producer.handed_events())
        a.run()
        await a.kill()  # ...and the worker dies before its flush: neither acked nor the mark saved
        assert "sil" not in store.states["cow-1"] and broker.events() == [broker.events()[0]]
        b = Worker(broker, store, NORTH, clock, SILENT_10S, silence_sweep_s=0.0)
        await b.start([0])
        await steps(b)
        assert silent_ids(broker.events()) == [sent]  # the same id: a replay, not a new silence
        assert store.states["cow-1"]["sil"] == 1

    run(main())


def test_a_backlog_does_not_make_collars_silent():
    """The service was down for two hours while the collars sent fixes: the restarted worker must
    not call a collar silent whose fixes wait in the backlog. It sweeps a partition only once it has
    caught up with it; cow-2, which really sent nothing, goes silent then, once."""

    async def main():
        broker, store, clock = Broker(partitions=1), FakeStore(), Clock()
        broker.fix("cow-1", T0, *INSIDE)
        broker.fix("cow-2", T0, *INSIDE)
        a = Worker(broker, store, NORTH, clock, SILENT_10S, silence_sweep_s=0.0)
        await a.start([0])
        await steps(a)
        a.run()
        await a.kill()
        for k in range(1, 30):  # cow-1 kept sending while no worker ran
            broker.fix("cow-1", T0 + k * 240_000, *INSIDE)
        clock.s += 2 * 3600
        b = Worker(broker, store, NORTH, clock, SILENT_10S, silence_sweep_s=0.0, max_records=2, silence_max_lag=0)
        await b.start([0])
        while broker.committed != broker.end_offsets():
            await b.proc.step()
            if silent_ids(b.producer.handed_events(), "cow-2"):
                assert b.consumer.lag() == {0: 0}  # swept only once caught up
        await steps(b)
        assert silent_ids(b.producer.handed_events(), "cow-1") == []  # its fixes arrived: not silent
        assert silent_ids(broker.events(), "cow-2") == [event_id("cow-2", "", 0, "silent", T0)]
        assert b.metrics.silence_sweep._sum.get() > 0

    run(main())


def test_herd_rules_switched_off_give_the_fence_rules_alone():
    async def main():
        broker, store, clock = Broker(partitions=1), FakeStore(), Clock()
        broker.fix("cow-1", T0, *INSIDE)
        broker.fix("cow-1", T0 + 1000, *OUTSIDE)
        broker.fix("cow-1", T0 + 2000, 17.7, 59.805)  # 5 km in a second: a jump, were the rules on
        broker.fix("cow-1", T0 + 3000, 17.7, 59.805)
        on = Worker(broker, store, NORTH, clock, SILENT_10S, silence_sweep_s=0.0)
        await on.start([0])
        await steps(on)
        clock.s += 11
        await steps(on)
        assert [e["type"] for e in on.producer.handed_events()] == ["enter", "exit", "escape", "silent"]
        assert on.metrics.fixes_untrusted.labels("jump")._value.get() == 1
        off = Worker(Broker(partitions=1), FakeStore(), NORTH, clock, SILENT_10S, herd_rules=False)
        for r in broker.records("locations"):
            off.consumer.broker.append("locations", r.key, r.value)
        await off.start([0])
        await steps(off)
        clock.s += 3600
        await steps(off)
        assert [e["type"] for e in off.producer.handed_events()] == ["enter", "exit"]
        assert off.metrics.fixes_untrusted.labels("jump")._value.get() == 0

    run(main())


def test_one_farms_settings_change_re_times_only_its_devices_and_keeps_the_heaps_small():
    """A farm's new silence time: its collars go silent by it, another farm's do not, no device is
    re-evaluated (no fence or mob changed) and a farm putting its settings in a loop does not grow the heaps."""

    async def main():
        broker, store, clock = Broker(partitions=1), FakeStore(), Clock()
        broker.fix("cow-1", T0, *INSIDE)
        broker.fix("sheep-1", T0, *INSIDE)
        w = Worker(broker, store, NORTH, clock, {"farm": HerdRules(), "other": HerdRules()}, silence_sweep_s=0.0)
        w.follower.tenants["sheep-1"] = "other"
        await w.start([0])
        await steps(w)
        reevaluated = []
        real = w.proc._reevaluate
        w.proc._reevaluate = lambda devices: reevaluated.append(devices) or real(devices)
        for s in (3600.0, 1800.0, 600.0, 300.0, 10.0):  # the last one holds
            w.follower.put_rules("farm", HerdRules(silence_s=s))
            await steps(w, 1)
        assert w.proc.silence.size() <= 4, w.proc.silence.heaps
        assert reevaluated == []
        clock.s += 11
        await steps(w)
        assert silent_ids(w.producer.handed_events()) == [event_id("cow-1", "", 0, "silent", T0)]
        assert silent_ids(w.producer.handed_events(), "sheep-1") == []
        w.follower.put_rules("other", HerdRules(silence_s=3600.0))
        w.follower.put_rules("other", HerdRules(silence_s=10.0))
        await steps(w)
        assert silent_ids(w.producer.handed_events(), "sheep-1") == [event_id("sheep-1", "", 0, "silent", T0)]
        assert silent_ids(w.producer.handed_events()) == [event_id("cow-1", "", 0, "silent", T0)]  # once

    run(main())


def test_one_farms_mob_change_re_evaluates_only_its_devices():
    async def main():
        from fencex.herd import Mob

        broker, store, clock = Broker(partitions=1), FakeStore(), Clock()
        index = FenceIndex([fence("north"), fence("south", lat=59.0), fence("theirs", tenant="other")])
        broker.fix("cow-1", T0, *INSIDE)
        broker.fix("sheep-1", T0, *INSIDE)
        w = Worker(broker, store, index, clock)
        w.follower.tenants["sheep-1"] = "other"
        await w.start([0])
        await steps(w)
        reevaluated = []
        real = w.proc._reevaluate
        w.proc._reevaluate = lambda devices: reevaluated.append(devices) or real(devices)
        w.follower.put_mobs("farm", {"cow-1": Mob(frozenset({"south"}))})  # cow-1's pasture is south now
        await steps(w, 1)
        assert reevaluated == [["cow-1"]]
        assert [(e["type"], e["device_id"]) for e in w.producer.handed_events()][-1] == ("escape", "cow-1")

    run(main())


def test_a_fence_change_re_evaluates_only_the_changed_farms_devices():
    """Issue 15 #2: a fence change re-evaluates the devices of the farms whose fences changed (the index
    says which), not every held device; changes handed over together add up; a full reload, all of them."""

    async def main():
        broker, store, clock = Broker(partitions=1), FakeStore(), Clock()
        index = FenceIndex([fence("north"), fence("theirs", tenant="other"), fence("third", tenant="third")])
        for d in ("cow-1", "sheep-1", "goat-1"):
            broker.fix(d, T0, *INSIDE)
        w = Worker(broker, store, index, clock)
        w.follower.tenants.update({"sheep-1": "other", "goat-1": "third"})
        await w.start([0])
        await steps(w)
        reevaluated = []
        real = w.proc._reevaluate
        w.proc._reevaluate = lambda devices: reevaluated.append(devices) or real(devices)
        moved = index.with_farms({"farm": [fence("north", lon=18.0, version=2)]}, 1)
        w.follower.push(moved)  # north moved away from cow-1
        await steps(w, 1)
        assert reevaluated == [["cow-1"]]
        assert ("exit", "cow-1") in [(e["type"], e["device_id"]) for e in w.producer.handed_events()]
        w.follower.push(second := moved.with_farms({"other": []}, 2))  # two changes before the loop swaps
        w.follower.push(second.with_farms({"third": []}, 3))
        await steps(w, 1)
        assert sorted(reevaluated[1]) == ["goat-1", "sheep-1"]
        w.follower.push(FenceIndex([fence("north")]))  # a full load: every held device
        await steps(w, 1)
        assert reevaluated[2] is None

    run(main())

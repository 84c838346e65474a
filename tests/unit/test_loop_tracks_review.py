"""Review 12b of the worker's tracks and late fixes (issue 12): a hostile farm and an operator under
faults, driven with the in-memory fakes. Each test names the defect it holds."""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping

import msgpack
import pytest

from fencex.detector import DeviceState
from fencex.event import Event
from fencex.fix import Fix
from fencex.index import FenceIndex
from fencex.store.base import SaveWrites
from fencex.store.redis import RedisStore
from fencex.store.save import unpack_save
from fencex.track import Track
from tests.unit.factory import fence
from tests.unit.fakes import Broker, FakeStore
from tests.unit.test_loop import INSIDE, OUTSIDE, T0, Worker, fast_retries, run, steps, until  # noqa: F401
from tests.unit.test_loop_tracks import MIN, at, drained, in_order, send, standing
from tests.unit.test_rotation import window


class MemberStore(FakeStore):
    """The fake store, with the fence memberships and alert lists the real save script keeps: the rows
    :meth:`RedisStore.pack_save` makes (events in order, then the resets of late merges) applied to sorted sets."""

    def __init__(self) -> None:
        super().__init__()
        self.real = RedisStore("redis://127.0.0.1:1/0", "fx")  # no I/O: only its pack_save
        self.zsets: dict[str, dict[str, float]] = {}

    def pack_save(
        self,
        states: Mapping[str, DeviceState],
        events: Iterable[Event],
        new_devices: Mapping[tuple[str, int], list[str]] | None = None,
        generations: Mapping[tuple[str, int], int] | None = None,
        writes: SaveWrites | None = None,
        partitions: Mapping[str, int] | None = None,
    ) -> bytes | None:
        events = list(events)
        fake = super().pack_save(states, events, new_devices, generations, writes, partitions)
        real = self.real.pack_save(states, events, new_devices, generations, writes, partitions)
        return None if fake is None else pickle.dumps((fake, real))

    async def save_packed(self, blob: bytes | None) -> list[tuple[str, int]]:
        if blob is None:
            return await super().save_packed(None)
        fake, real = pickle.loads(blob)
        long = await super().save_packed(fake)
        farm_calls = unpack_save(real)[3]  # each farm group's call (SAVE_FARM): its rows [1]
        for _token, call in farm_calls:
            for op, key, score, member in msgpack.unpackb(call, raw=True)[1]:
                z = self.zsets.setdefault(key.decode(), {})
                if op == 1 or (op == 2 and member.decode() not in z):
                    z[member.decode()] = score
                elif op == 0:
                    z.pop(member.decode(), None)
        return long

    def inside(self, tenant: str, fid: str) -> set[str]:
        return set(self.zsets.get(self.real.keys.inside(tenant, fid), {}))


def test_a_late_fix_inside_a_zone_closed_by_its_schedule_gives_no_enter():
    # The zone was active from T0+2 min to T0+4 min only; the cow is inside it from T0+10 min on: no event
    # in order (a closed zone is as absent). A late fix at 12 min, inside too, must not make an enter up.
    zone = FenceIndex([fence("north", kind="zone", schedule=window(T0 + 2 * MIN, T0 + 4 * MIN))])

    async def main():
        broker, store = Broker(), FakeStore()
        live = [at(10, INSIDE), at(11, INSIDE), at(20, INSIDE)]
        send(broker, live)
        w = Worker(broker, store, zone, clock=lambda: T0 / 1000 + 30 * 60)
        await w.start([0, 1, 2, 3])
        w.run()
        await drained(w, broker)
        assert broker.events() == []  # live: the zone is closed
        send(broker, [at(12, INSIDE)])
        await drained(w, broker)
        await w.kill()
        assert w.metrics.late_fixes.labels("merged")._value.get() == 1
        assert broker.events() == []  # in order: nothing either
        assert "north" not in store.states["cow-1"]["in"]

    run(main())


def test_a_late_fix_from_before_a_transfer_is_not_merged_into_the_new_farms_track():
    async def main():
        broker, store = Broker(), FakeStore()
        send(broker, [at(0, INSIDE), at(10, INSIDE)])
        index = FenceIndex([fence("north"), fence("south", tenant="farm2")])  # over the same ground
        w = Worker(broker, store, index, clock=lambda: T0 / 1000 + 30 * 60)
        await w.start([0, 1, 2, 3])
        w.run()
        await drained(w, broker)
        w.follower.tenants["cow-1"] = "farm2"  # the collar is moved to another farm
        send(broker, [at(20, INSIDE)])
        await drained(w, broker)
        before = len(broker.events())
        send(broker, [at(5, INSIDE)])  # its upload of what it recorded on the old farm, in flight meanwhile
        await drained(w, broker)
        await w.kill()
        track = Track.from_bytes(store.tracks["cow-1"])
        assert T0 + 5 * MIN not in track.ts, "farm2's track shows a fix recorded on farm's land"
        assert [e for e in broker.events()[before:] if e["tenant"] == "farm2"] == []

    run(main())


def test_one_collar_flooding_late_fixes_is_merged_down_to_late_max_every_step():
    async def main():
        broker, store = Broker(partitions=1), FakeStore()
        live = [at(0, INSIDE), at(600, INSIDE)]
        send(broker, live)
        # a backlog of 4,000 fixes a second apart within the window, more than a slice a step
        late = [Fix("cow-1", T0 + MIN + s * 1000, *(OUTSIDE if s % 600 < 60 else INSIDE)) for s in range(4000)]
        send(broker, late)
        index = FenceIndex([fence("north")])
        w = Worker(
            broker, store, index, lambda: T0 / 1000 + 601 * 60, flush_interval=3600.0, late_max=1000, max_records=1000
        )
        await w.start([0])
        peak = 0
        for _ in range(5):
            await w.proc.step()
            peak = max(peak, w.proc.late.count)
        assert peak <= 1000, f"{peak} late fixes held after a step, late_max 1000"
        w.proc.checkpoint.interval = 0.0
        w.run()
        await drained(w, broker)
        await w.kill()
        assert set(standing(broker.events())) == set(in_order(live + late))  # merged a slice a pass, as in order
        assert Track.from_bytes(store.tracks["cow-1"]).ts[-1] == T0 + 600 * MIN

    run(main())


def test_a_live_exit_after_a_late_merge_in_the_same_snapshot_leaves_the_cow_outside():
    async def main():
        broker, store = Broker(partitions=1), MemberStore()
        w = Worker(broker, store, FenceIndex([fence("north")]), flush_interval=3600.0, late_max=0)
        await w.start([0])
        send(broker, [at(0, INSIDE), at(1, INSIDE), at(10, INSIDE)])
        await steps(w, 1)
        send(broker, [at(5, OUTSIDE)])  # late: out at 5, back at 10
        await steps(w, 1)  # held, merged (late_max 0): a membership reset pending
        assert w.metrics.late_fixes.labels("merged")._value.get() == 1
        send(broker, [at(11, OUTSIDE)])  # live, before the next flush: the cow walks out
        await steps(w, 1)
        await w.proc.flush()
        assert "north" not in store.states["cow-1"]["in"]
        assert store.inside("farm", "north") == set(), "GET /fences/north/devices still shows the cow inside"

    run(main())


def test_a_rebalance_while_a_late_fix_is_held_does_not_commit_past_it():
    async def main():
        broker, store = Broker(partitions=1), FakeStore()
        live = [at(0, INSIDE), at(10, INSIDE)]
        late = [at(3, OUTSIDE)]
        w = Worker(broker, store, FenceIndex([fence("north")]), flush_interval=3600.0)
        await w.start([0])
        send(broker, live)
        await steps(w, 1)
        send(broker, late)
        await steps(w, 1)
        assert w.proc.late.count == 1  # held (no flush due)
        await w.consumer.rebalance([0])  # revoked (flushed up to the hold, the held fix dropped), assigned again
        w.proc.checkpoint.interval = 0.0
        await w.proc.flush()  # a flush due before the next fetch
        assert broker.committed[0] <= 2, "committed past the late fix, which is not merged"
        w.run()
        await drained(w, broker)
        await w.kill()
        assert w.metrics.late_fixes.labels("merged")._value.get() == 1
        assert set(standing(broker.events())) == set(in_order(live + late))

    run(main())


def test_a_damaged_track_trimmed_reads_back_with_the_fixes_at_their_times():
    async def main():
        broker, store = Broker(partitions=1), FakeStore()
        send(broker, [at(0, INSIDE), at(1, INSIDE)])
        w = Worker(broker, store, FenceIndex([fence("north")]))
        await w.start([0])
        w.run()
        await drained(w, broker)
        store.tracks["cow-1"] = b"\xfe\x01\x40garbage"  # damaged by hand
        w.proc.tracks.due["cow-1"] = 0  # long: to trim before the next snapshot
        send(broker, [at(2, INSIDE), at(3, INSIDE)])
        await drained(w, broker)
        await w.kill()
        track = Track.from_bytes(store.tracks["cow-1"])
        assert track.orphan and track.ts == [T0 + 2 * MIN, T0 + 3 * MIN], track.ts  # started again, at their times

    run(main())


def test_trims_per_flush_is_the_settings():
    w = Worker(Broker(), FakeStore(), FenceIndex([fence("north")]), trims_per_flush=3)
    assert w.proc.tracks is not None and w.proc.tracks.trims_per_flush == 3


@pytest.mark.xfail(strict=True, reason="review 12b: a merge over a schedule's transition does not replay it")
def test_a_late_fix_after_a_zone_opened_with_the_cow_inside_adds_no_second_enter():
    # The zone opens at 2 min with the cow inside: the worker publishes its enter at 2 min (no fix then).
    # A late fix at 5 min, inside: in order, nothing more; the enter at the opening stands alone.
    from fencex.event import rfc3339
    from tests.unit.test_loop import Clock

    zone = FenceIndex([fence("north", kind="zone", schedule=window(T0 + 2 * MIN, T0 + 60 * MIN))])

    async def main():
        broker, store, clock = Broker(partitions=1), FakeStore(), Clock(T0 / 1000 + 90)
        w = Worker(broker, store, zone, clock)
        await w.start([0])
        send(broker, [at(0, INSIDE), at(1, INSIDE)])
        await steps(w)
        clock.s = T0 / 1000 + 2 * 60 + 1  # the zone opens, on the worker's clock
        await steps(w)
        clock.s = T0 / 1000 + 11 * 60
        send(broker, [at(10, INSIDE)])
        await steps(w)
        enters = [e for e in broker.events() if e["type"] == "enter"]
        assert [e["ts"] for e in enters] == [rfc3339(T0 + 2 * MIN)]  # at the opening
        send(broker, [at(5, INSIDE)])
        await steps(w)
        assert w.metrics.late_fixes.labels("merged")._value.get() == 1
        standing_enters = [e for e in standing(broker.events()).values() if e["type"] == "enter"]
        assert [e["event_id"] for e in standing_enters] == [enters[0]["event_id"]]

    run(main())


@pytest.mark.xfail(strict=True, reason="review 12b: a device's late fixes on a second partition drop the first's hold")
def test_late_fixes_of_one_device_on_two_partitions_hold_both():
    from fencex.stream.latefixes import LateFixes

    late = LateFixes()
    late.add(Fix("cow-1", T0, *INSIDE), partition=0, offset=5)
    late.add(Fix("cow-1", T0 + 1, *INSIDE), partition=1, offset=7)  # the topic grew: its key hashes elsewhere
    assert late.holds() == {0: 5, 1: 7}  # neither partition commits past its held fix


@pytest.mark.xfail(strict=True, reason="review 12b: a merge's state forgets a transition applied after the newest fix")
def test_a_late_fix_does_not_take_back_a_zone_opening_applied_after_the_newest_fix():
    # The zone opens at 2 min with the cow inside (its last fix at 1 min): entered at the opening, sched 2 min.
    # A late fix at 30 s, inside too, is not the newest: the cow's state must stay in the zone since its opening.
    from tests.unit.test_loop import Clock

    zone = FenceIndex([fence("north", kind="zone", schedule=window(T0 + 2 * MIN, T0 + 60 * MIN))])

    async def main():
        broker, store, clock = Broker(partitions=1), FakeStore(), Clock(T0 / 1000 + 90)
        w = Worker(broker, store, zone, clock)
        await w.start([0])
        send(broker, [at(0, INSIDE), at(1, INSIDE)])
        await steps(w)
        clock.s = T0 / 1000 + 2 * 60 + 1
        await steps(w)
        assert store.states["cow-1"]["sched"] == T0 + 2 * MIN and "north" in store.states["cow-1"]["in"]
        send(broker, [at(0.5, INSIDE)])
        await steps(w)
        assert w.metrics.late_fixes.labels("merged")._value.get() == 1
        state = store.states["cow-1"]
        assert state.get("sched") == T0 + 2 * MIN and state["in"]["north"][0] == T0 + 2 * MIN, state

    run(main())


def test_tracks_turned_off_then_on_again_keep_the_fixes_at_their_times_and_merge_late_ones():
    async def main():
        broker, store = Broker(partitions=1), FakeStore()
        index = FenceIndex([fence("north")])
        clock = lambda: T0 / 1000 + 3600  # noqa: E731
        back = [T0 + 20 * MIN + k * 10_000 for k in range(120)]  # tracks on again: 120 fixes, 10 s apart
        phases = ((True, [T0, T0 + MIN]), (False, [T0 + 10 * MIN, T0 + 13 * MIN]), (True, back))
        for tracks, times in phases:
            send(broker, [Fix("cow-1", t, *INSIDE) for t in times])
            w = Worker(broker, store, index, clock, tracks=tracks, max_records=50)  # a snapshot at the 100th
            await w.start([0])
            w.run()
            await drained(w, broker)
            await w.kill()
        track = Track.from_bytes(store.tracks["cow-1"])
        sent = {t for _, times in phases for t in times}
        assert set(track.ts) <= sent, f"fixes at times never sent: {sorted(set(track.ts) - sent)}"
        assert track.ts[-1] == back[-1]
        send(broker, [Fix("cow-1", back[110] + 5_000, *OUTSIDE)])  # a late fix within the window, past a snapshot
        w = Worker(broker, store, index, clock)
        await w.start([0])
        w.run()
        await drained(w, broker)
        await w.kill()
        assert w.metrics.late_fixes.labels("merged")._value.get() == 1

    run(main())


def test_a_worker_restarted_with_tracks_on_throughout_appends_to_the_whole_track():
    async def main():
        broker, store = Broker(partitions=1), FakeStore()
        for minutes in ((0, 1), (2, 3), (4, 5)):
            send(broker, [at(m, INSIDE) for m in minutes])
            w = Worker(broker, store, FenceIndex([fence("north")]), clock=lambda: T0 / 1000 + 3600)
            await w.start([0])
            w.run()
            await drained(w, broker)
            await w.kill()
        track = Track.from_bytes(store.tracks["cow-1"])
        assert track.ts == [T0 + m * MIN for m in range(6)] and not track.orphan  # each first append's anchor checked

    run(main())

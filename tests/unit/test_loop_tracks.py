"""The worker loop keeps tracks and merges late fixes (issue 12), driven with the in-memory fakes:
the stored track reads back as the fixes applied, late fixes give the events of in-order arrival
(late ones, retractions), offsets are held until a late fix is merged, replays change nothing."""

from __future__ import annotations

from fencex.event import RETRACT
from fencex.fix import Fix
from fencex.pipeline import default_rules, process
from fencex.track import Track
from tests.unit.fakes import Broker, FakeStore
from tests.unit.test_loop import INSIDE, NORTH, OUTSIDE, T0, TENANTS, Worker, run, until

MIN = 60_000


def send(broker: Broker, fixes: list[Fix]) -> None:
    for f in fixes:
        broker.fix(f.device_id, f.ts_ms, f.lon, f.lat)


def at(minute: float, place: tuple[float, float], cow: str = "cow-1") -> Fix:
    return Fix(cow, T0 + int(minute * MIN), *place)


def in_order(fixes: list[Fix]) -> set[str]:
    """The ids of the events of the fixes sorted by time: what in-order arrival publishes."""
    out = process(sorted(fixes, key=lambda f: f.ts_ms), NORTH, {}, lambda d: TENANTS[d], default_rules)
    return {e.event_id for e in out.events}


def standing(published: list[dict]) -> dict[str, dict]:
    """The published events, retractions applied (a retracted id may come back later)."""
    out: dict[str, dict] = {}
    for e in published:
        if e["type"] == RETRACT:
            out.pop(e["retracts"], None)
        else:
            out[e["event_id"]] = e
    return out


async def drained(w: Worker, broker: Broker) -> None:
    await until(lambda: broker.committed == broker.end_offsets() and not w.proc.late.held)


def test_the_stored_track_holds_the_applied_fixes_and_the_ids_published_at_them():
    async def main():
        broker, store = Broker(), FakeStore()
        live = [at(m, INSIDE if m % 2 == 0 else OUTSIDE) for m in range(6)]
        send(broker, live)
        w = Worker(broker, store, NORTH)
        await w.start([0, 1, 2, 3])
        w.run()
        await drained(w, broker)
        await w.kill()
        track = Track.from_bytes(store.tracks["cow-1"])
        assert track.ts == [f.ts_ms for f in live] and not track.orphan  # a new device: its track from its first fix
        published = {bytes.fromhex(e["event_id"]) for e in broker.events() if e["type"] in ("enter", "exit")}
        assert {i for ids in track.ids.values() for i in ids} == published

    run(main())


def test_late_fixes_give_the_events_of_in_order_arrival_and_hold_the_commit_until_merged():
    # The cow was inside at 0 and 10 min (live); offline in between it walked out at 2 and back at 4 min.
    async def main():
        broker, store = Broker(), FakeStore()
        live = [at(0, INSIDE), at(1, INSIDE), at(10, INSIDE)]
        late = [at(2, OUTSIDE), at(3, OUTSIDE), at(4, INSIDE)]
        send(broker, live)
        w = Worker(broker, store, NORTH)
        await w.start([0, 1, 2, 3])
        w.run()
        await drained(w, broker)
        before = len(broker.events())
        send(broker, late)
        await drained(w, broker)
        await w.kill()
        published = broker.events()
        new = published[before:]
        assert new and all(e.get("late") for e in new), new  # the exits and enters of 2 and 4 min, marked late
        assert set(standing(published)) == set(in_order(live + late))
        assert store.states["cow-1"]["ts"] == T0 + 10 * MIN and "north" in store.states["cow-1"]["in"]  # now: inside
        assert Track.from_bytes(store.tracks["cow-1"]).ts == sorted(f.ts_ms for f in live + late)
        assert w.metrics.late_fixes.labels("merged")._value.get() == 3

    run(main())


def test_a_late_fix_that_moves_an_exit_earlier_retracts_the_published_one_and_replacing_it():
    # Live: inside at 0, outside at 5 (exit published at 5). Late: outside at 3 already: the exit was at 3.
    async def main():
        broker, store = Broker(), FakeStore()
        live = [at(0, INSIDE), at(5, OUTSIDE), at(6, OUTSIDE)]
        send(broker, live)
        w = Worker(broker, store, NORTH)
        await w.start([0, 1, 2, 3])
        w.run()
        await drained(w, broker)
        first = broker.events()
        exit_at_5 = [e["event_id"] for e in first if e["type"] == "exit"]
        send(broker, [at(3, OUTSIDE)])
        await drained(w, broker)
        await w.kill()
        published = broker.events()
        retracts = [e for e in published if e["type"] == RETRACT]
        # the exit at 5 and the escape it confirmed at 6 (two fixes out) were too late
        assert {r["retracts"] for r in retracts} == {e["event_id"] for e in first if e["type"] in ("exit", "escape")}
        assert len(exit_at_5) == 1
        assert set(standing(published)) == set(in_order([*live, at(3, OUTSIDE)]))

    run(main())


def test_the_same_late_upload_sent_again_changes_nothing():
    async def main():
        broker, store = Broker(), FakeStore()
        live = [at(0, INSIDE), at(10, INSIDE)]
        late = [at(2, OUTSIDE), at(3, OUTSIDE), at(4, INSIDE)]
        send(broker, live)
        w = Worker(broker, store, NORTH)
        await w.start([0, 1, 2, 3])
        w.run()
        await drained(w, broker)
        send(broker, late)
        await drained(w, broker)
        once = len(broker.events())
        stored = store.tracks["cow-1"]
        send(broker, late)  # the gateway resends the upload
        await drained(w, broker)
        await w.kill()
        assert len(broker.events()) == once and store.tracks["cow-1"] == stored
        assert w.metrics.late_fixes.labels("duplicate")._value.get() == 3

    run(main())


def test_a_late_fix_behind_the_window_is_dropped_and_counted():
    async def main():
        broker, store = Broker(), FakeStore()
        send(broker, [at(0, INSIDE), at(25 * 60, INSIDE)])  # 25 hours later
        w = Worker(broker, store, NORTH, clock=lambda: T0 / 1000 + 26 * 3600)
        await w.start([0, 1, 2, 3])
        w.run()
        await drained(w, broker)
        before = len(broker.events())
        send(broker, [at(30, OUTSIDE)])  # 24.5 hours behind the newest: outside the default 24 h window
        await drained(w, broker)
        await w.kill()
        assert len(broker.events()) == before
        assert w.metrics.late_fixes.labels("too_old")._value.get() == 1

    run(main())


def test_a_crash_before_the_merge_commits_nothing_past_the_late_fix_and_the_next_worker_merges_it():
    async def main():
        broker, store = Broker(), FakeStore()
        live = [at(0, INSIDE), at(10, INSIDE)]
        late = [at(2, OUTSIDE), at(3, OUTSIDE), at(4, INSIDE)]
        send(broker, live)
        a = Worker(broker, store, NORTH, late_budget_ms=0.0)
        await a.start([0, 1, 2, 3])
        a.run()
        await drained(a, broker)
        store.fail("load_tracks", RuntimeError("killed mid-merge"), times=1000)  # the merge never happens
        send(broker, late)
        part = next(p for p, log in broker.logs["locations"].items() if log)
        await until(lambda: store.calls["load_tracks"] >= 1)
        await a.kill()
        assert broker.committed[part] <= broker.end_offsets()[part] - len(late)  # held before the late fixes
        store._failures.clear()
        b = Worker(broker, store, NORTH)
        await b.start([0, 1, 2, 3])
        b.run()
        await drained(b, broker)
        await b.kill()
        assert set(standing(broker.events())) == set(in_order(live + late))

    run(main())


def test_a_collar_with_state_but_no_track_starts_one_that_no_merge_replays_from_its_unknown_start():
    async def main():
        broker, store = Broker(), FakeStore()
        send(broker, [at(0, INSIDE), at(1, INSIDE)])
        w = Worker(broker, store, NORTH)
        await w.start([0, 1, 2, 3])
        w.run()
        await drained(w, broker)
        del store.tracks["cow-1"]  # kept before tracks were, or lost
        send(broker, [at(5, INSIDE)])
        await drained(w, broker)
        assert Track.from_bytes(store.tracks["cow-1"]).orphan
        before = len(broker.events())
        send(broker, [at(3, OUTSIDE)])  # late, but the track cannot replay from before its first fix
        await drained(w, broker)
        await w.kill()
        assert len(broker.events()) == before  # no enter made up at the orphan's first fix
        assert w.metrics.late_fixes.labels("too_old")._value.get() == 1

    run(main())


def test_tracks_off_drops_late_fixes_as_before():
    async def main():
        broker, store = Broker(), FakeStore()
        send(broker, [at(0, INSIDE), at(10, INSIDE), at(3, OUTSIDE)])
        w = Worker(broker, store, NORTH, tracks=False)
        await w.start([0, 1, 2, 3])
        w.run()
        await drained(w, broker)
        await w.kill()
        assert store.tracks == {} and w.metrics.fixes_dropped.labels("out_of_order")._value.get() == 1

    run(main())


def test_a_long_upload_is_merged_a_slice_at_a_time_and_gives_the_events_of_in_order_arrival():
    async def main():
        broker, store = Broker(), FakeStore()
        live = [at(0, INSIDE), at(30, INSIDE)]
        # 1,200 fixes a second apart from minute 1: out for a minute every five
        late = [Fix("cow-1", T0 + MIN + s * 1000, *(OUTSIDE if (s // 60) % 5 == 1 else INSIDE)) for s in range(1200)]
        send(broker, live)
        w = Worker(broker, store, NORTH, clock=lambda: T0 / 1000 + 3600)
        await w.start([0, 1, 2, 3])
        w.run()
        await drained(w, broker)
        send(broker, late)
        await drained(w, broker)
        await w.kill()
        assert set(standing(broker.events())) == set(in_order(live + late))
        assert w.metrics.late_fixes.labels("merged")._value.get() == len(late)
        samples = w.metrics.late_merge_seconds.collect()[0].samples
        assert next(s.value for s in samples if s.name.endswith("_count")) >= 3  # 500 fixes of a device a merge

    run(main())


def test_a_farm_with_a_one_hour_window_drops_a_late_fix_two_hours_behind():
    from fencex.herd import HerdRules

    async def main():
        broker, store = Broker(), FakeStore()
        send(broker, [at(0, INSIDE), at(180, INSIDE)])
        w = Worker(
            broker, store, NORTH, clock=lambda: T0 / 1000 + 4 * 3600, rules={"farm": HerdRules(track_window_s=3600)}
        )
        await w.start([0, 1, 2, 3])
        w.run()
        await drained(w, broker)
        send(broker, [at(60, OUTSIDE), at(150, OUTSIDE)])  # 2 h behind: dropped; 30 min behind: merged
        await drained(w, broker)
        await w.kill()
        assert w.metrics.late_fixes.labels("too_old")._value.get() == 1
        assert w.metrics.late_fixes.labels("merged")._value.get() == 1

    run(main())

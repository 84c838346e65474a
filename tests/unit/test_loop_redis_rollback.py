"""A worker after Redis lost its last writes (issue 14, item 11: a host crash loses up to a second
of an AOF fsynced every second; a restore loses everything since its snapshot): when the lost
writes include the worker's own partition claim, Redis holds a generation *older* than the
worker's. No other worker can own the partition then (a newer owner raises the generation past
it), so the worker claims it again and goes on, as after Redis restarted empty; it is not fenced
off waiting for a rebalance that never comes."""

from __future__ import annotations

from fencex.index import FenceIndex
from tests.unit.factory import fence
from tests.unit.fakes import Broker, FakeStore
from tests.unit.test_loop import INSIDE, OUTSIDE, T0, Worker, fast_retries, run, until  # noqa: F401
from tests.unit.test_loop_tracks import MIN, at, drained, send


def test_a_worker_goes_on_after_redis_lost_its_partition_claim():
    async def main():
        broker, store = Broker(partitions=1), FakeStore()
        send(broker, [at(0, INSIDE), at(1, INSIDE)])
        w = Worker(broker, store, FenceIndex([fence("north")]), clock=lambda: T0 / 1000 + 3600)
        await w.start([0])
        w.run()
        await drained(w, broker)
        for tp in store.gens:
            store.gens[tp] -= 1  # the claim was in the second a host crash lost
        send(broker, [at(2, OUTSIDE), at(3, OUTSIDE)])
        try:
            await until(lambda: store.states.get("cow-1", {}).get("ts") == T0 + 3 * MIN, timeout=2.0)
        finally:
            await w.kill()
        assert w.metrics.saves_fenced._value.get() >= 1  # refused once, then claimed again

    run(main())


def test_a_worker_behind_a_newer_owner_is_still_fenced():
    async def main():
        broker, store = Broker(partitions=1), FakeStore()
        send(broker, [at(0, INSIDE), at(1, INSIDE)])
        w = Worker(broker, store, FenceIndex([fence("north")]), clock=lambda: T0 / 1000 + 3600)
        await w.start([0])
        w.run()
        await drained(w, broker)
        for tp in store.gens:
            store.gens[tp] += 1  # another worker claimed the partition since
        send(broker, [at(2, OUTSIDE), at(3, OUTSIDE)])
        try:
            await until(lambda: w.metrics.saves_fenced._value.get() >= 1, timeout=2.0)
            assert store.states["cow-1"]["ts"] == T0 + 1 * MIN  # nothing of the fenced worker's written
        finally:
            await w.kill()

    run(main())


def test_a_save_refused_for_a_while_is_sent_again_not_replayed():
    """Redis at its maxmemory (or restarting) refuses a save: the checkpoint, serialised and
    idempotent (its token), is sent again with backoff while the worker waits, instead of going
    back to the committed offsets and publishing every event since then again (measured with a
    60 s limit: eleven copies of each event on average). Same events, each once."""
    from fencex.errors import StoreUnavailable
    from tests.unit.test_loop import NORTH, delivered_ids, expected_ids, track

    async def main():
        broker, store = Broker(), FakeStore()
        fixes = track(broker)
        w = Worker(broker, store, NORTH)
        await w.start([0, 1, 2, 3])
        store.fail("save_packed", StoreUnavailable("OOM command not allowed"), times=5)
        w.run()
        await until(lambda: broker.committed == broker.end_offsets())
        await w.kill()
        delivered = delivered_ids(broker)
        assert set(delivered) == expected_ids(fixes)
        assert sorted(delivered) == sorted(set(delivered)), "an event published twice"
        assert w.metrics.store_errors._value.get() >= 5
        assert w.metrics.reconnects.labels("redis")._value.get() == 0  # no reload: nothing replayed

    run(main())

"""A worker after Redis lost its last writes (issue 14, item 11: a host crash loses up to a second
of an AOF fsynced every second; a restore loses everything since its snapshot): when the lost
writes include the worker's own partition claim, Redis holds a generation *older* than the
worker's. No other worker can own the partition then (a newer owner raises the generation past
it), so the worker claims it again and goes on, as after Redis restarted empty; it is not fenced
off waiting for a rebalance that never comes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fencex.index import FenceIndex
from tests.unit.factory import fence
from tests.unit.fakes import Broker, FakeStore
from tests.unit.test_loop import INSIDE, OUTSIDE, T0, Worker, fast_retries, run, until  # noqa: F401
from tests.unit.test_loop_tracks import MIN, at, drained, send


def _restarted_empty(store: FakeStore) -> None:  # no persistence, or a new instance
    for kept in (store.states, store.parts, store.gens, store.tracks):
        kept.clear()


def _claim_lost(store: FakeStore) -> None:  # the claim was in the second a host crash lost
    for tp in store.gens:
        store.gens[tp] -= 1


def _newer_owner(store: FakeStore) -> None:  # another worker claimed the partition since
    for tp in store.gens:
        store.gens[tp] += 1


# (what became of Redis after the worker's first saves, does the worker go on saving)
LOSSES = [
    pytest.param(_restarted_empty, True, id="redis-restarted-empty: claims again"),
    pytest.param(_claim_lost, True, id="claim-lost-in-a-crash-or-restore: claims again"),
    pytest.param(_newer_owner, False, id="a-newer-owner: fenced, writes nothing"),
]


@pytest.mark.parametrize(("lose", "goes_on"), LOSSES)
def test_a_worker_after_redis_lost_writes(lose: Callable[[FakeStore], None], goes_on: bool):
    async def main():
        broker, store = Broker(partitions=1), FakeStore()
        send(broker, [at(0, INSIDE), at(1, INSIDE)])
        w = Worker(broker, store, FenceIndex([fence("north")]), clock=lambda: T0 / 1000 + 3600)
        await w.start([0])
        w.run()
        await drained(w, broker)
        lose(store)
        send(broker, [at(2, OUTSIDE), at(3, OUTSIDE)])
        try:
            if goes_on:
                await until(lambda: store.states.get("cow-1", {}).get("ts") == T0 + 3 * MIN, timeout=2.0)
            else:
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

"""Partitions added to a running system (issue 15 item 4; docs/design/partitions.md), with in-memory
fakes: a device's key moved by hand to another partition, as Kafka's partitioner does after growth.
The store keeps a copy of a state per partition and the pointer (``where``), as Redis does."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Iterable, Mapping

import orjson

from fencex.detector import DeviceState
from fencex.errors import Fenced, GenerationsLost
from fencex.event import Event, event_id
from fencex.fix import Fix
from fencex.store.base import Located, SaveWrites
from tests.unit.fakes import Broker, FakeStore
from tests.unit.test_loop import INSIDE, NORTH, OUTSIDE, SILENT_10S, T0, Clock, Worker, expected_ids, run, steps

P, Q = 0, 1  # the device's partition before the growth, and after


class MovingBroker(Broker):
    """Two partitions; ``moved``: keys whose partition is set by the test (the partitioner after growth)."""

    def __init__(self) -> None:
        super().__init__(partitions=2)
        self.moved: dict[bytes, int] = {}

    def partition_of(self, key: bytes | None) -> int:
        return self.moved.get(key or b"", P)


class PartitionedStore(FakeStore):
    """A state per (partition, device), the pointer of each device, the partitions' device sets."""

    def __init__(self) -> None:
        super().__init__()
        self.copies: dict[tuple[int, str], dict] = {}
        self.where: dict[str, int] = {}

    async def load_states(self, device_ids: list[str], partitions: Mapping[str, int] | None = None):
        return (await self.locate_states(device_ids, partitions)).states

    async def locate_states(self, device_ids: list[str], partitions: Mapping[str, int] | None = None) -> Located:
        self._maybe_fail("load_states")
        given, out = partitions or {}, Located()
        for d in device_ids:  # as RedisDevices.locate_states: the newer copy, the pointer's on a tie
            if d in self.where:
                out.where[d] = self.where[d]
            for n in (given.get(d), self.where.get(d)):
                obj = self.copies.get((n, d)) if n is not None else None
                if obj is not None and (d not in out.states or obj["ts"] >= out.states[d].last_ts):
                    out.states[d], out.under[d] = DeviceState.from_obj(copy.deepcopy(obj)), n
        return out

    async def forget_moved(self, topic: str, partition: int, newer: Mapping[str, int]) -> int:
        gone = 0
        for d, ts in newer.items():
            obj = self.copies.get((partition, d))
            if obj is None or obj["ts"] <= ts:
                self.copies.pop((partition, d), None)
                self.parts[(topic, partition)].discard(d)
                gone += 1
        return gone

    def pack_save(
        self,
        states: Mapping[str, DeviceState],
        events: Iterable[Event],
        new_devices: Mapping[tuple[str, int], list[str]] | None = None,
        generations: Mapping[tuple[str, int], int] | None = None,
        writes: SaveWrites | None = None,
        partitions: Mapping[str, int] | None = None,
    ) -> bytes | None:
        blob = super().pack_save(states, events, new_devices, generations, writes, partitions)
        return None if blob is None else pickle.dumps((blob, dict(partitions or {})))

    async def save_packed(self, blob: bytes | None) -> list[tuple[str, int]]:
        if blob is None:
            return []
        inner, partitions = pickle.loads(blob)
        objs, new, gens, *_ = pickle.loads(inner)
        if any(self.gens.get(tp, -1) > g for tp, g in gens.items()):
            raise Fenced("fenced")
        if any(self.gens.get(tp, -1) < g for tp, g in gens.items()):
            raise GenerationsLost("lost")
        got = await super().save_packed(inner)  # tracks, grazing, the device sets; and the flat states
        for d, obj in objs.items():
            self.copies[(partitions[d], d)] = obj
        for (_, n), devices in new.items():
            for d in devices:
                self.where[d] = partitions.get(d, n)  # as pack_save's pointer rows
        return got


def walk(broker: MovingBroker, steps_: range, cow: str = "cow-1") -> list[Fix]:
    """The cow across the fence's border and back, one fix a second."""
    out = []
    for step in steps_:
        lon, lat = INSIDE if step % 2 == 0 else OUTSIDE
        broker.fix(cow, T0 + step * 1000, lon, lat)
        out.append(Fix(cow, T0 + step * 1000, lon, lat))
    return out


def types_of(broker: Broker, cow: str = "cow-1") -> list[tuple[str, int]]:
    return [(e["type"], e["ts"]) for e in broker.events() if e["device_id"] == cow]


async def drained(*workers: Worker) -> None:
    for _ in range(4):
        for w in workers:
            await steps(w, 2)


def test_a_device_moved_to_a_new_partition_is_adopted_there_with_the_events_of_a_run_without_the_move():
    async def main():
        broker, store = MovingBroker(), PartitionedStore()
        a, b = Worker(broker, store, NORTH), Worker(broker, store, NORTH)
        await a.start([P])
        await b.start([Q])
        before = walk(broker, range(0, 3))
        await drained(a, b)
        assert store.where["cow-1"] == P and store.parts[("locations", P)] == {"cow-1"}
        broker.moved[b"cow-1"] = Q  # partitions added: the key maps to Q from now on
        after = walk(broker, range(3, 6))
        await drained(a, b)
        ids = [e["event_id"] for e in broker.events()]
        assert sorted(ids) == sorted(expected_ids(before + after))  # none lost, none twice
        assert [t for t, _ in types_of(broker)] == ["enter", "exit"] * 3  # one per crossing, in order
        assert store.where["cow-1"] == Q and "cow-1" in store.parts[("locations", Q)]  # registered on Q
        assert store.copies[(Q, "cow-1")]["ts"] == T0 + 5000
        assert b.metrics.fixes_dropped.labels("out_of_order")._value.get() == 0
        # P's owner, loading P again, leaves the device out and deletes the stale copy and listing
        await a.consumer.rebalance([P])
        assert "cow-1" not in a.proc.states and "cow-1" not in a.proc.device_partition
        assert (P, "cow-1") not in store.copies and "cow-1" not in store.parts[("locations", P)]
        # and Q's owner loads it from Q
        await b.consumer.rebalance([Q])
        assert b.proc.states["cow-1"].last_ts == T0 + 5000 and b.proc.device_partition["cow-1"] == Q

    run(main())


def test_a_worker_holding_both_partitions_moves_the_device_in_its_cache():
    async def main():
        broker, store = MovingBroker(), PartitionedStore()
        w = Worker(broker, store, NORTH)
        await w.start([P, Q])
        before = walk(broker, range(0, 3))
        await drained(w)
        broker.moved[b"cow-1"] = Q
        after = walk(broker, range(3, 6))
        await drained(w)
        assert sorted(e["event_id"] for e in broker.events()) == sorted(expected_ids(before + after))
        assert w.proc.device_partition["cow-1"] == Q
        assert store.where["cow-1"] == Q and "cow-1" in store.parts[("locations", Q)]
        assert store.copies[(Q, "cow-1")]["ts"] == T0 + 5000
        await w.consumer.rebalance([P, Q])  # loaded again: held under Q, P's copy deleted
        assert w.proc.device_partition["cow-1"] == Q and w.proc.states["cow-1"].last_ts == T0 + 5000
        assert (P, "cow-1") not in store.copies and "cow-1" not in store.parts[("locations", P)]

    run(main())


def test_a_fix_left_in_the_old_partitions_backlog_is_stale_once_the_new_partition_adopted_the_device():
    """Kafka orders a key's records within a partition only: a fix sent before the growth may be read
    from P after Q's owner adopted the device from P's last save. P's owner (not holding the device)
    finds the newer state under Q: the fix is stale (the device's last_ts rule), dropped and counted;
    nothing is written under P; the events are those of the run without that fix, none twice."""

    async def main():
        broker, store = MovingBroker(), PartitionedStore()
        a, b = Worker(broker, store, NORTH), Worker(broker, store, NORTH)
        await a.start([P])
        await b.start([Q])
        saved = walk(broker, range(0, 2))
        await drained(a, b)
        await a.consumer.rebalance([])  # P's owner goes (or lags); a fix of the cow waits in P's backlog
        backlog = walk(broker, range(2, 3))
        broker.moved[b"cow-1"] = Q
        after = walk(broker, range(3, 6))
        await drained(b)
        await a.consumer.rebalance([P])  # P's owner reads its backlog now
        await drained(a)
        assert a.metrics.fixes_dropped.labels("out_of_order")._value.get() == 1
        ids = [e["event_id"] for e in broker.events()]
        assert sorted(ids) == sorted(expected_ids(saved + after)) and len(set(ids)) == len(ids)
        assert expected_ids(saved + after) != expected_ids(saved + backlog + after)  # the fix had a transition
        assert (P, "cow-1") not in store.copies and store.where["cow-1"] == Q
        assert store.copies[(Q, "cow-1")]["ts"] == T0 + 5000
        assert "cow-1" not in a.proc.states
        assert broker.committed[P] == len(broker.logs["locations"][P])  # read past, not stuck on it

    run(main())


def test_the_old_owner_holding_the_device_from_before_the_move_raises_no_silence_for_it():
    async def main():
        broker, store, clock = MovingBroker(), PartitionedStore(), Clock()
        a = Worker(broker, store, NORTH, clock, SILENT_10S, silence_sweep_s=0.0)
        b = Worker(broker, store, NORTH, clock, SILENT_10S, silence_sweep_s=0.0)
        await a.start([P])
        await b.start([Q])
        walk(broker, range(0, 2))
        await drained(a, b)
        broker.moved[b"cow-1"] = Q
        walk(broker, range(2, 4))
        clock.s += 3  # Q's fixes arrive later than P's
        await drained(b)
        assert "cow-1" in a.proc.states  # P's owner still holds it: no rebalance since the move
        clock.s += 8  # 11 s after P's last fix, 8 s after Q's: due on P only
        await drained(a, b)
        assert [e for e in broker.events() if e["type"] == "silent"] == []
        assert "cow-1" not in a.proc.states and (P, "cow-1") not in store.copies
        clock.s += 3  # and when the cow does fall silent, Q's owner says so, once
        await drained(a, b)
        silent = [e["event_id"] for e in broker.events() if e["type"] == "silent"]
        assert silent == [event_id("cow-1", "", 0, "silent", T0 + 3000)]

    run(main())


def test_a_pointer_left_behind_by_a_save_that_died_before_its_pointer_step_is_written_again():
    """On a cluster the pointer is written after the partition's state: a save that dies between the
    two leaves the state under Q and the pointer on P. Q's owner, loading Q, writes the pointer again."""

    async def main():
        broker, store = MovingBroker(), PartitionedStore()
        store.copies[(P, "cow-1")] = {"tenant": "farm", "ts": T0, "lon": INSIDE[0], "lat": INSIDE[1], "in": {}}
        store.copies[(Q, "cow-1")] = {"tenant": "farm", "ts": T0 + 1000, "lon": OUTSIDE[0], "lat": OUTSIDE[1], "in": {}}
        store.parts[("locations", P)].add("cow-1")
        store.parts[("locations", Q)].add("cow-1")
        store.where["cow-1"] = P
        a, b = Worker(broker, store, NORTH), Worker(broker, store, NORTH)
        await b.start([Q])
        await steps(b, 2)  # a flush (nothing to read)
        assert store.where["cow-1"] == Q
        await a.start([P])  # and P's owner leaves it out, deleting its copy
        assert "cow-1" not in a.proc.states and (P, "cow-1") not in store.copies
        assert orjson.dumps(store.copies[(Q, "cow-1")])  # Q's copy kept

    run(main())

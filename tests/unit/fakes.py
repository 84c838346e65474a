"""In-memory fakes of the worker loop's ports (``fencex.stream.ports``), for unit tests.

A :class:`Broker` holds the topics' logs and the consumer group's committed offsets; a
:class:`FakeStore` holds what Redis would (device states, partitions' devices, generations)
and refuses fenced saves as the real save script does. Each fake can be told to fail its
next calls (``fail(name, exc, times)``), to try the loop's crash and retry paths.
"""

from __future__ import annotations

import asyncio
import copy
import pickle
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import orjson

from fencex.detector import DeviceState
from fencex.errors import Fenced, GenerationsLost
from fencex.event import Event
from fencex.herd import DEFAULT_RULES, HerdRules, Mob
from fencex.index import FenceIndex
from fencex.kafka.producer import Outgoing, Undelivered
from fencex.store.base import Located, SaveWrites
from fencex.stream.ports import PartitionsCallback
from fencex.trackbytes import MAGIC, ORPHAN, anchor


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()


class Failing:
    """Calls that fail on demand: ``fail("save_packed", StoreUnavailable("down"), times=2)``."""

    def __init__(self) -> None:
        self._failures: dict[str, list[BaseException]] = defaultdict(list)
        self.calls: dict[str, int] = defaultdict(int)

    def fail(self, name: str, exc: BaseException, times: int = 1) -> None:
        self._failures[name].extend([exc] * times)

    def _maybe_fail(self, name: str) -> None:
        self.calls[name] += 1
        if self._failures[name]:
            raise self._failures[name].pop(0)


class Broker:
    def __init__(self, partitions: int = 4) -> None:
        self.partitions = partitions
        self.logs: dict[str, dict[int, list[Rec]]] = defaultdict(lambda: defaultdict(list))
        self.committed: dict[int, int] = {}  # the group's committed offsets (of the consumed topic)

    def partition_of(self, key: bytes | None) -> int:
        return zlib.crc32(key or b"") % self.partitions

    def append(self, topic: str, key: bytes | None, value: bytes, headers: Iterable[tuple[str, bytes]] = ()) -> Rec:
        p = self.partition_of(key) if topic.endswith("locations") else 0
        log = self.logs[topic][p]
        rec = Rec(topic, p, len(log), key, value, 0, tuple(headers))
        log.append(rec)
        return rec

    def fix(self, device: str, ts: int, lon: float, lat: float, topic: str = "locations") -> Rec:
        obj = {"device_id": device, "ts": ts, "lon": lon, "lat": lat}
        return self.append(topic, device.encode(), orjson.dumps(obj))

    def records(self, topic: str) -> list[Rec]:
        return [r for p in sorted(self.logs[topic]) for r in self.logs[topic][p]]

    def events(self) -> list[dict]:
        return [orjson.loads(r.value) for r in self.records("fence-events") if r.value]

    def end_offsets(self, topic: str = "locations") -> dict[int, int]:
        return {p: len(log) for p, log in self.logs[topic].items() if log}


class FakeConsumer(Failing):
    def __init__(self, broker: Broker, topic: str = "locations") -> None:
        super().__init__()
        self.broker = broker
        self.topic = topic
        self.assigned: list[int] = []
        self.positions: dict[int, int] = {}
        self.on_assign: PartitionsCallback | None = None
        self.on_revoke: PartitionsCallback | None = None

    def listen(self, on_assign: PartitionsCallback, on_revoke: PartitionsCallback) -> None:
        self.on_assign, self.on_revoke = on_assign, on_revoke

    async def start(self) -> None:
        self._maybe_fail("start")

    async def stop(self) -> None:
        pass

    async def rebalance(self, partitions: list[int]) -> None:
        """As the group coordinator does it: revoke everything, then assign ``partitions``."""
        assert self.on_revoke is not None and self.on_assign is not None
        await self.on_revoke(self.assigned)
        self.assigned = sorted(partitions)
        self.positions = {p: self.broker.committed.get(p, 0) for p in self.assigned}
        await self.on_assign(self.assigned)

    async def getmany(self, timeout_ms: int, max_records: int) -> Mapping[int, Sequence[Rec]]:
        self._maybe_fail("getmany")
        out: dict[int, Sequence[Rec]] = {}
        left = max_records
        for p in self.assigned:
            log = self.broker.logs[self.topic][p]
            got = log[self.positions[p] : self.positions[p] + left]
            if got:
                out[p] = got
                self.positions[p] += len(got)
                left -= len(got)
        if not out:
            await asyncio.sleep(0.001)
        return out

    async def commit(self, offsets: Mapping[int, int]) -> None:
        self._maybe_fail("commit")
        self.broker.committed.update({p: o for p, o in offsets.items() if p in self.assigned})

    async def seek_to_committed(self) -> None:
        self._maybe_fail("seek_to_committed")
        self.positions = {p: self.broker.committed.get(p, 0) for p in self.assigned}

    def assignment(self) -> list[int]:
        return list(self.assigned)

    def lag(self) -> dict[int, int]:
        return {p: len(self.broker.logs[self.topic][p]) - self.positions.get(p, 0) for p in self.assigned}

    async def settled_lag(self) -> dict[int, int]:
        return self.lag()


class FakeProducer(Failing):
    """Queues records; ``wait_acked`` delivers them to the broker (unless told to fail).
    ``refuse``: a predicate on (topic, key, value) for records the broker refuses for good."""

    def __init__(self, broker: Broker) -> None:
        super().__init__()
        self.broker = broker
        self.queued: list[tuple[str, Outgoing]] = []
        self.handed: list[tuple[str, Outgoing]] = []  # everything ever handed to send()
        self.refuse = lambda topic, key, value: False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(self, topic: str, records: Iterable[Outgoing]) -> int:
        got = [(topic, r) for r in records]
        self.queued.extend(got)
        self.handed.extend(got)
        return len(got)

    async def wait_acked(self) -> list[Undelivered]:
        self._maybe_fail("wait_acked")
        undelivered = []
        queued, self.queued = self.queued, []
        for topic, (key, value, headers) in queued:
            if self.refuse(topic, key, value):
                undelivered.append(Undelivered(topic, key, list(headers or ()), "too_large", "MSG_SIZE_TOO_LARGE"))
            else:
                self.broker.append(topic, key, value, headers or ())
        return undelivered

    def crash(self) -> None:
        """The process died: what was queued and not acknowledged is lost."""
        self.queued.clear()

    def handed_events(self) -> list[dict]:
        return [orjson.loads(v) for t, (_k, v, _h) in self.handed if t == "fence-events"]


class FakeStore(Failing):
    def __init__(self) -> None:
        super().__init__()
        self.states: dict[str, dict] = {}
        self.parts: dict[tuple[str, int], set[str]] = defaultdict(set)
        self.gens: dict[tuple[str, int], int] = defaultdict(int)
        self.tracks: dict[str, bytes] = {}
        self.grazing: dict[tuple[str, str, str, str], int] = {}
        self.saves = 0

    async def connect(self) -> None:
        self._maybe_fail("connect")

    async def close(self) -> None:
        pass

    async def ping(self) -> bool:
        return True

    async def claim_partitions(self, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        self._maybe_fail("claim_partitions")
        for p in partitions:
            self.gens[(topic, p)] += 1
        return {p: self.gens[(topic, p)] for p in partitions}

    async def partition_devices(self, topic: str, partitions: Iterable[int]) -> dict[str, int]:
        self._maybe_fail("partition_devices")
        return {d: p for p in partitions for d in self.parts[(topic, p)]}

    async def partition_lists(self, topic: str, partitions: Iterable[int]) -> dict[int, list[str]]:
        self._maybe_fail("partition_devices")  # the same read, and its failures
        return {p: sorted(self.parts[(topic, p)]) for p in partitions}

    async def load_states(
        self, device_ids: list[str], partitions: Mapping[str, int] | None = None
    ) -> dict[str, DeviceState]:
        self._maybe_fail("load_states")
        return {d: DeviceState.from_obj(copy.deepcopy(self.states[d])) for d in device_ids if d in self.states}

    async def locate_states(self, device_ids: list[str], partitions: Mapping[str, int] | None = None) -> Located:
        """As :meth:`load_states` (its failures too), each state under the partition given for it: one
        copy a device (``tests/unit/test_adoption.py`` has a store with a copy per partition)."""
        states = await self.load_states(device_ids, partitions)
        under = {d: (partitions or {}).get(d, 0) for d in states}
        return Located(states, under, dict(under))

    async def forget_moved(self, topic: str, partition: int, newer: Mapping[str, int]) -> int:
        return 0

    def pack_save(
        self,
        states: Mapping[str, DeviceState],
        events: Iterable[Event],
        new_devices: Mapping[tuple[str, int], list[str]] | None = None,
        generations: Mapping[tuple[str, int], int] | None = None,
        writes: SaveWrites | None = None,
        partitions: Mapping[str, int] | None = None,
    ) -> bytes | None:
        w = writes or SaveWrites()
        if not states and not new_devices and not generations and not (w.tracks or w.rewrites or w.grazing):
            return None
        objs = {d: s.to_obj() for d, s in states.items()}
        tracks = {
            d: (w.rewrites.get(d), bytes(w.tracks.get(d, b"")), w.anchors.get(d, -1))
            for d in w.rewrites.keys() | w.tracks.keys()
        }
        grazing = dict(w.grazing)
        packed = (objs, dict(new_devices or {}), dict(generations or {}), tracks, grazing, w.long_bytes)
        return pickle.dumps(packed)

    async def save_packed(self, blob: bytes | None) -> list[tuple[str, int]]:
        """As the save script: fenced, or everything at once; the tracks appended (the magic first
        on a new one) or written whole; the devices whose tracks are now long."""
        self._maybe_fail("save_packed")
        if blob is None:
            return []
        objs, new, gens, tracks, grazing, long_bytes = pickle.loads(blob)
        stored = {tp: self.gens.get(tp, -1) for tp in gens}
        if any(stored[tp] > g for tp, g in gens.items()):
            raise Fenced("the save was refused: another worker owns these partitions now")
        if any(stored[tp] < g for tp, g in gens.items()):  # gone, or behind the saver's own claim
            raise GenerationsLost("the save was refused: the partitions' generations are gone or behind")
        self.states.update(objs)
        for tp, devices in new.items():
            self.parts[tp].update(devices)
        long = []
        for d, (whole, more, at) in tracks.items():
            if whole is not None:
                self.tracks[d] = whole
            orphan = MAGIC + bytes((ORPHAN,)) + (anchor(at) if at >= 0 else b"")
            self.tracks[d] = self.tracks.get(d, orphan) + more
            if len(self.tracks[d]) >= long_bytes:  # (the script knows a list's length every 64 segments)
                long.append((d, len(self.tracks[d])))
        for key, ms in grazing.items():  # (tenant, fence, mob, day) -> ms, summed
            self.grazing[key] = self.grazing.get(key, 0) + ms
        self.saves += 1
        return long

    async def load_tracks(self, device_ids: list[str], partitions: Mapping[str, int] | None = None) -> dict[str, bytes]:
        self._maybe_fail("load_tracks")
        return {d: self.tracks[d] for d in device_ids if d in self.tracks}


class FakeFollower:
    def __init__(self, index: FenceIndex, tenants: dict[str, str] | None = None) -> None:
        self.index = index
        self.tenants = dict(tenants or {})
        self.applied = 0
        self.reloads = 0
        self.quarantined: dict[str, object] = {}
        self.on_index = None
        self.on_rules = None
        self.on_mobs = None
        self.rules: dict[str, HerdRules] = {}
        self.mobs: dict[str, Mob] = {}

    def rules_of(self, tenant: str) -> HerdRules:
        return self.rules.get(tenant, DEFAULT_RULES)

    def mob_of(self, device_id: str) -> Mob | None:
        return self.mobs.get(device_id)

    async def load(self) -> FenceIndex:
        return self.index

    async def follow(self) -> None:
        await asyncio.Event().wait()

    def push(self, index: FenceIndex) -> None:
        """A fence change arrived: the new index is handed over."""
        self.index = index
        self.applied += 1
        if self.on_index is not None:
            self.on_index(index)

    def put_rules(self, tenant: str, rules: HerdRules) -> None:
        """A farm's herd settings changed (and no fence): the worker is told which farm."""
        self.rules[tenant] = rules
        self.applied += 1
        if self.on_rules is not None:
            self.on_rules({tenant})

    def put_mobs(self, tenant: str, mobs: dict[str, Mob]) -> None:
        """A farm's mobs changed (and no fence): its devices' mobs now, and the worker is told which farm."""
        self.mobs = {d: m for d, m in self.mobs.items() if d not in mobs} | mobs
        self.applied += 1
        if self.on_mobs is not None:
            self.on_mobs({tenant})

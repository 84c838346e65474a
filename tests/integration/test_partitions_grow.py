"""Partitions added to a running system (issue 15 item 4; docs/design/partitions.md), against the real
broker and Redis (one, or a 3-master cluster with ``FENCEX_TEST_REDIS=cluster``).

The local broker cannot add partitions (no CreatePartitions), so the growth is done by hand: the topic
has its 4 partitions from the start, and a cow's first fixes are produced to partition p, its later ones
to partition q (held by the other worker), as a producer does once it knows of the new partitions. A
control cow sends the same walk on p all along: the moved cow's transitions must be exactly its own
(none lost, none twice), its state adopted under q (registered there, its pointer moved), the stale
copy under p deleted, and no false ``silent`` from p's owner, which held the cow from before the move.
"""

from __future__ import annotations

import re
import signal
import time

import orjson
import pytest

from fencex.event import event_id
from fencex.fence import Fence
from fencex.store.redis import RedisStore
from tests.integration.conftest import events_of, read, run, wait_ready

pytestmark = pytest.mark.integration

SQUARE = {
    "type": "Polygon",
    "coordinates": [[[17.60, 59.80], [17.61, 59.80], [17.61, 59.81], [17.60, 59.81], [17.60, 59.80]]],
}
T0 = 1_780_000_000_000
INSIDE, OUTSIDE = (17.6099, 59.805), (17.6101, 59.805)  # 11 m apart, across the east border
COWS = ("moved", "stay")
STEPS = 6  # fixes 0-2 before the growth, 3-5 after
LOADED = re.compile(r"partitions \[([\d, ]*)\]: \d+ devices loaded")


async def _seed(live) -> None:
    store = RedisStore(live.redis_url, live.prefix)
    await store.connect()
    try:
        await store.put_fences([Fence(id="north", tenant="farm", geometry=SQUARE)])
        await store.register_devices({c: "farm" for c in COWS})
    finally:
        await store.close()


def _assignments(live) -> tuple[set[int], set[int]]:
    """The partitions each of the two workers loaded last (their logs)."""
    out = []
    for n in (0, 1):
        found = LOADED.findall(live.log(n))
        out.append({int(x) for x in found[-1].split(",") if x.strip()} if found else set())
    return out[0], out[1]


def _split(live, timeout: float = 60.0) -> tuple[int, int]:
    """Wait for the two workers to share the 4 partitions; p (worker 0's) and q (worker 1's)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        a, b = _assignments(live)
        if a and b and not a & b and a | b == {0, 1, 2, 3}:
            return min(a), min(b)
        time.sleep(0.2)
    raise AssertionError(f"the workers did not share the partitions: {_assignments(live)}")


def _produce(live, step: int, partitions: dict[str, int]) -> None:
    lon, lat = INSIDE if step % 2 == 0 else OUTSIDE
    p = live.producer()
    for cow, n in partitions.items():
        value = orjson.dumps({"device_id": cow, "ts": T0 + step * 10_000, "lon": lon, "lat": lat})
        p.produce(live.locations, value, key=cow.encode(), partition=n)
    assert p.flush(10) == 0


async def _saved(live, partition: int, cow: str) -> dict | None:
    store = RedisStore(live.redis_url, live.prefix)
    await store.connect()
    try:
        raw = await store.redis.get(store.keys.device(partition, cow))
        return orjson.loads(raw) if raw is not None else None
    finally:
        await store.close()


async def _where(live, cow: str) -> int | None:
    store = RedisStore(live.redis_url, live.prefix)
    await store.connect()
    try:
        return await store.device_partition(cow)
    finally:
        await store.close()


async def _listed(live, partition: int, cow: str) -> bool:
    store = RedisStore(live.redis_url, live.prefix)
    await store.connect()
    try:
        return bool(await store.redis.sismember(store.keys.partition(live.locations, partition), cow))
    finally:
        await store.close()


def _transitions(events: list[dict], cow: str) -> list[tuple[str, int]]:
    return [(e["type"], e["ts"]) for e in events if e["device_id"] == cow and e["type"] != "silent"]


def _until_saved(live, partition: int, cow: str, ts: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = run(_saved(live, partition, cow))
        if got is not None and got["ts"] == ts:
            return
        time.sleep(0.1)
    raise AssertionError(f"{cow}'s state at {ts} was not saved under partition {partition}")


@pytest.mark.parametrize("old_owner_finds_out", ["at_silence", "at_load"])
def test_a_device_whose_key_moves_to_a_new_partition_keeps_its_transitions(live, old_owner_finds_out):
    """``at_silence``: p's owner holds the cow until it falls due for silence on p (4 s), while the cow
    reports on q; ``at_load``: p's owner stops, and the other worker loads p and finds the copy stale."""
    silence = old_owner_finds_out == "at_silence"
    env = {"FENCEX_DEFAULT_SILENCE_S": "4", "FENCEX_SILENCE_SWEEP_S": "0.5"} if silence else {}
    run(_seed(live))
    a, port_a = live.start_worker(**env)
    wait_ready(port_a, a)
    b, port_b = live.start_worker(**env)
    wait_ready(port_b, b)
    p, q = _split(live)
    reader = live.consumer(live.events)
    for step in range(3):  # before the growth: both cows on p
        _produce(live, step, {"moved": p, "stay": p})
    got = read(reader, lambda g: len(_transitions(events_of(g), "moved")) >= 3)
    _until_saved(live, p, "moved", T0 + 20_000)  # p's owner saved it (the backlog case is the unit tests')
    for step in range(3, STEPS):  # after: the moved cow's key maps to q, the control cow's still to p
        _produce(live, step, {"moved": q, "stay": p})
        time.sleep(2.0 if silence else 0.0)  # at_silence: p's owner falls due for the cow meanwhile
    got += read(reader, lambda g: len(_transitions(events_of(got + g), "moved")) >= STEPS, timeout=30)
    _until_saved(live, q, "moved", T0 + (STEPS - 1) * 10_000)
    if silence:  # both cows fall silent now, once each, by their last fix; none before
        got += read(reader, lambda g: sum(e["type"] == "silent" for e in events_of(got + g)) >= 2, timeout=30)
        time.sleep(5.0)
    else:  # p's owner goes: the other worker loads p and q
        a.send_signal(signal.SIGTERM)
        a.wait(30)
        deadline = time.monotonic() + 60
        while _assignments(live)[1] != {0, 1, 2, 3}:
            assert time.monotonic() < deadline, "the remaining worker did not take every partition"
            time.sleep(0.2)
    got += read(reader, lambda g: False, timeout=2.0)
    events = events_of(got)
    moved, stay = _transitions(events, "moved"), _transitions(events, "stay")
    assert len(stay) >= STEPS - 1 and moved == stay  # the same walk: the same transitions, none lost or twice
    assert len({e["event_id"] for e in events}) == len(events)  # nothing published twice
    if silence:
        silent = {c: [e["event_id"] for e in events if e["type"] == "silent" and e["device_id"] == c] for c in COWS}
        last = T0 + (STEPS - 1) * 10_000
        assert silent == {c: [event_id(c, "", 0, "silent", last)] for c in COWS}  # no false silent from p
    assert run(_where(live, "moved")) == q  # adopted: the pointer moved, listed on q
    assert run(_listed(live, q, "moved")) and not run(_listed(live, p, "moved"))
    assert run(_saved(live, p, "moved")) is None  # the stale copy deleted
    assert run(_saved(live, q, "moved"))["ts"] == T0 + (STEPS - 1) * 10_000
    assert run(_listed(live, p, "stay")) and run(_saved(live, p, "stay"))["ts"] == T0 + (STEPS - 1) * 10_000

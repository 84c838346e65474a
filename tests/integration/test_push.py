"""The push path against the real broker and redis-server: fixes in, events out."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import jsonschema
import orjson
import pytest

from fencex.detector import DeviceState
from fencex.errors import Fenced
from fencex.event import EVENT_SCHEMA, Event
from fencex.fence import Fence
from fencex.fix import Fix
from fencex.index import FenceIndex
from fencex.kafka.admin import ensure_topics
from fencex.kafka.producer import Producer
from fencex.pipeline import default_rules, process
from fencex.store.redis import RedisStore
from services.simulator.herd import Herd, pastures
from tests.integration.conftest import events_of, metric, read, run, wait_ready

pytestmark = pytest.mark.integration

SQUARE = {
    "type": "Polygon",
    "coordinates": [[[17.60, 59.80], [17.61, 59.80], [17.61, 59.81], [17.60, 59.81], [17.60, 59.80]]],
}
# 11 m apart across the east border: a cow's step (the herd rules, on by default, hold back a
# fix that implies more than 20 m/s as a jump)
INSIDE = (17.6099, 59.805)
OUTSIDE = (17.6101, 59.805)
T0 = 1_780_000_000_000


async def _seed(live, fences: list[Fence], devices: dict[str, str]) -> None:
    store = RedisStore(live.redis_url, live.prefix)
    await store.connect()
    try:
        if fences:
            await store.put_fences(fences)
        if devices:
            await store.register_devices(devices)
    finally:
        await store.close()


def fix(device: str, ts, lon_lat) -> dict:
    return {"device_id": device, "ts": ts, "lon": lon_lat[0], "lat": lon_lat[1]}


def test_enter_dwell_exit_end_to_end(live):
    run(_seed(live, [Fence(id="north", tenant="farm", name="North", dwell_s=2, geometry=SQUARE)], {"cow-1": "farm"}))
    proc, port = live.start_worker()
    wait_ready(port, proc)
    live.produce(
        [
            ("cow-1", orjson.dumps(fix("cow-1", T0, OUTSIDE))),
            # a gateway's packed record, with an RFC 3339 time in it
            ("cow-1", orjson.dumps([fix("cow-1", "2026-05-28T20:26:41Z", INSIDE), fix("cow-1", T0 + 4000, INSIDE)])),
            ("cow-1", orjson.dumps(fix("cow-1", T0 + 5000, OUTSIDE))),
            ("cow-1", orjson.dumps(fix("cow-1", T0 + 2000, INSIDE))),  # late: merged into its track, no event
            # an unregistered collar belongs to the default tenant, which has no fences
            ("stray", orjson.dumps(fix("stray", T0, INSIDE))),
        ]
    )
    events = events_of(read(live.consumer(live.events), lambda got: len(got) >= 3))
    assert [(e["type"], e["device_id"], e["fence_id"]) for e in events] == [
        ("enter", "cow-1", "north"),
        ("dwell", "cow-1", "north"),
        ("exit", "cow-1", "north"),
    ]
    for e in events:
        jsonschema.validate(e, EVENT_SCHEMA)
        assert e["tenant"] == "farm" and e["fence_version"] == 1
    assert events[0]["ts"] == "2026-05-28T20:26:41.000Z" and events[1]["dwell_s"] == 2
    assert (events[2]["lon"], events[2]["lat"]) == OUTSIDE
    time.sleep(1.0)
    assert metric(port, 'fencex_late_fixes_total{outcome="merged"}') == 1  # inside, as the fixes around it
    assert metric(port, 'fencex_fixes_dropped_total{reason="out_of_order"}') == 0
    assert metric(port, "fencex_fixes_processed_total") == 5

    async def stored():
        store = RedisStore(live.redis_url, live.prefix)
        await store.connect()
        try:
            return await store.device_state("farm", "cow-1"), await store.history("farm")
        finally:
            await store.close()

    state, history = run(stored())
    assert state.last_ts == T0 + 5000 and state.members == {}
    assert [h["type"] for _, h in history] == ["enter", "dwell", "exit"]


def test_bad_records_go_to_the_dead_letter_topic(live):
    run(_seed(live, [Fence(id="north", tenant="default", geometry=SQUARE)], {}))
    proc, port = live.start_worker()
    wait_ready(port, proc)
    bad = [
        b"not json at all",
        orjson.dumps({"ts": T0, "lon": 1, "lat": 2}),
        orjson.dumps(fix("c", T0, (17.6, 91))),
        orjson.dumps(fix("c", "last tuesday", INSIDE)),
        b'{"device_id": "c", "ts": 1, "lon": NaN, "lat": 1}',
        orjson.dumps([fix("good", T0, INSIDE), fix("c", T0, (200, 0))]),
    ]
    live.produce([("k", v) for v in bad])
    dead = read(live.consumer(live.dlq), lambda got: len(got) >= 6)
    assert [m.value() for m in dead] == bad  # the original bytes
    reasons = [dict(m.headers())["reason"].decode() for m in dead]
    assert reasons == ["not_json", "bad_device_id", "bad_lat", "bad_ts", "not_json", "bad_lon"]
    assert "fix 1 of 2" in dict(dead[5].headers())["detail"].decode()
    # the good fix packed beside a bad one still counts
    events = events_of(read(live.consumer(live.events), lambda got: len(got) >= 1))
    assert [(e["type"], e["device_id"]) for e in events] == [("enter", "good")]
    time.sleep(1.0)
    assert metric(port, "fencex_dlq_records_total") == 6
    assert proc.poll() is None  # the worker is still there


def test_fence_changes_reach_running_workers_within_a_second(live):
    run(_seed(live, [Fence(id="north", tenant="farm", geometry=SQUARE)], {"cow-1": "farm"}))
    proc, port = live.start_worker()
    wait_ready(port, proc)
    events = live.consumer(live.events)
    live.produce([("cow-1", orjson.dumps(fix("cow-1", T0, INSIDE)))])
    assert [e["type"] for e in events_of(read(events, lambda g: len(g) >= 1))] == ["enter"]

    async def change(op):
        store = RedisStore(live.redis_url, live.prefix)
        await store.connect()
        try:
            await op(store)
        finally:
            await store.close()

    def timed(op, expected):
        started = time.monotonic()
        run(change(op))
        got = events_of(read(events, lambda g: len(g) >= len(expected), timeout=5))
        assert [(e["type"], e["fence_id"], e["fence_version"]) for e in got] == expected
        return time.monotonic() - started

    far = {"type": "Polygon", "coordinates": [[[18.0, 60.0], [18.01, 60.0], [18.01, 60.01], [18.0, 60.0]]]}
    # reshaped so the cow is now outside: exit at the new version, and (a pasture) escape at once
    north = Fence(id="north", tenant="farm", geometry=far)
    t1 = timed(lambda s: s.put_fences([north]), [("exit", "north", 2), ("escape", "north", 2)])
    # a new pasture drawn around the cow: enter and return, without a new fix
    south = Fence(id="south", tenant="farm", geometry=SQUARE)
    t2 = timed(lambda s: s.put_fences([south]), [("enter", "south", 1), ("return", "south", 1)])
    # deleted: exit, and out of its pastures again (escape names the deleted one, version 0)
    t3 = timed(lambda s: s.delete_fence("farm", "south"), [("exit", "south", 1), ("escape", "south", 0)])
    assert max(t1, t2, t3) < 1.0, (t1, t2, t3)


def expected_events(fences, herd: Herd, fixes: list[Fix]) -> set[str]:
    index = FenceIndex(fences)
    states: dict[str, DeviceState] = {}
    tenants = herd.tenants()
    out = process(fixes, index, states, lambda d: tenants.get(d, "default"), default_rules)  # the worker's rules
    return {e.event_id for e in out.events}


def test_sigkill_loses_no_event(live):
    """Two workers; one is killed with SIGKILL mid-stream and restarted.
    Every event the pure pipeline predicts must be published; duplicates are allowed."""
    fences = pastures(40, seed=3, dwell_s=20)
    herd = Herd(300, fences, seed=3, roam=1.0)
    steps = 50
    fixes: list[Fix] = []
    for step in range(steps):
        lon, lat = herd.step()
        fixes.extend(  # a fix every 5 s: the simulator's steps are a walk at that pace (at 1 s, half are jumps)
            Fix(d, T0 + step * 5000, float(x), float(y)) for d, x, y in zip(herd.ids, lon.tolist(), lat.tolist())
        )
    expected = expected_events(fences, herd, fixes)
    assert len(expected) > 200  # a stream with real crossings
    run(_seed(live, fences, herd.tenants()))
    workers = [live.start_worker() for _ in range(2)]
    for proc, port in workers:
        wait_ready(port, proc, timeout=90)

    def produce():
        p = live.producer()
        for k, f in enumerate(fixes):
            p.produce(live.locations, orjson.dumps(fix(f.device_id, f.ts_ms, (f.lon, f.lat))), key=f.device_id)
            if k % 500 == 0:
                p.poll(0)
                time.sleep(0.1)  # about 5,000 fixes/s: the kill lands mid-stream
        p.flush(30)

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(1.2)
    victim, victim_port = workers[0]
    assert producer.is_alive(), "the kill must land mid-stream"
    assert metric(victim_port, "fencex_fixes_processed_total") > 0  # it was working when killed
    victim.send_signal(signal.SIGKILL)
    victim.wait(5)
    time.sleep(1.0)
    live.start_worker()
    producer.join()
    seen = [
        e["event_id"]
        for e in events_of(
            read(
                live.consumer(live.events),
                lambda g: expected <= {orjson.loads(m.value())["event_id"] for m in g},
                timeout=120,
            )
        )
    ]
    missing = expected - set(seen)
    assert not missing, f"{len(missing)} of {len(expected)} events lost"
    assert set(seen) == expected  # and nothing that should not be there
    print(f"\nSIGKILL: {len(expected)} events expected, {len(seen)} received, {len(seen) - len(set(seen))} duplicates")


def test_fixes_packed_under_another_key_are_rerouted_to_their_devices_partition(live):
    """A gateway packs fixes of several collars under its own key: each fix is sent back to the topic
    under its device's key, so a device is only ever processed from one partition."""
    run(_seed(live, [Fence(id="north", tenant="farm", geometry=SQUARE)], {"cow-1": "farm", "cow-2": "farm"}))
    proc, port = live.start_worker()
    wait_ready(port, proc)
    packed = [fix("cow-1", T0, INSIDE), fix("cow-2", T0, INSIDE), fix("cow-2", T0 + 1000, OUTSIDE)]
    live.produce([("gateway-7", orjson.dumps(packed))])
    events = events_of(read(live.consumer(live.events), lambda got: len(got) >= 3))
    assert sorted((e["device_id"], e["type"]) for e in events) == [
        ("cow-1", "enter"),
        ("cow-2", "enter"),
        ("cow-2", "exit"),
    ]
    time.sleep(1.0)
    assert metric(port, "fencex_fixes_rerouted_total") == 3


def test_bad_timestamps_go_to_the_dead_letter_topic_and_the_partition_moves_on(live):
    """Issue 9 #2: each of these once stalled its partition (or froze the device); now each is one
    dead letter (bad_ts) and the good fix behind it on the same partition gives its event."""
    run(_seed(live, [Fence(id="north", tenant="farm", geometry=SQUARE)], {"cow-1": "farm"}))
    proc, port = live.start_worker()
    wait_ready(port, proc)
    now = int(time.time() * 1000)
    bad = [now * 1000, now * 1_000_000, 1e20, "0001-01-01T00:00:00+14:00", "2100-01-01T00:00:00Z"]
    live.produce([("cow-1", orjson.dumps(fix("cow-1", ts, INSIDE))) for ts in bad])
    live.produce([("cow-1", orjson.dumps(fix("cow-1", now, INSIDE)))])
    dead = read(live.consumer(live.dlq), lambda got: len(got) >= len(bad))
    assert [dict(m.headers())["reason"] for m in dead] == [b"bad_ts"] * len(bad)
    events = events_of(read(live.consumer(live.events), lambda got: len(got) >= 1))
    assert [(e["type"], e["device_id"]) for e in events] == [("enter", "cow-1")]
    time.sleep(1.0)
    assert metric(port, 'fencex_dlq_records_total{reason="bad_ts"}') == len(bad)
    assert proc.poll() is None


def test_generations_fence_a_stale_save_in_redis(live):
    """Issue 9 #9, against the real save script: a save carrying a partition generation that a
    newer owner has raised is refused whole; the newer owner's save goes through."""

    async def main():
        store = RedisStore(live.redis_url, live.prefix)
        await store.connect()
        try:
            old = await store.claim_partitions(live.locations, [0, 1])
            new = await store.claim_partitions(live.locations, [1])  # partition 1 changed hands
            assert new[1] == old[1] + 1
            newer = DeviceState("farm", T0 + 5000, *OUTSIDE)
            blob = store.pack_save(
                {"cow-1": newer}, [], {(live.locations, 1): ["cow-1"]}, {(live.locations, 1): new[1]}
            )
            await store.save_packed(blob)
            stale = DeviceState("farm", T0, *INSIDE)
            gens = {(live.locations, p): g for p, g in old.items()}
            with pytest.raises(Fenced):
                await store.save_packed(store.pack_save({"cow-1": stale, "cow-9": stale}, [], None, gens))
            states = await store.load_states(["cow-1", "cow-9"])
            assert states["cow-1"].last_ts == T0 + 5000 and "cow-9" not in states  # nothing written
            assert await store.partition_devices(live.locations, [1]) == {"cow-1": 1}
        finally:
            await store.close()

    run(main())


def test_a_save_fenced_after_its_generations_were_read_writes_no_farm_step(live):
    """A newer owner claims a partition between the save's read of the generations and its steps (on one
    Redis they go in one pipeline): the partition's step is refused, and so is every farm step (no
    membership, position or grazing of the stale snapshot), as when the farm steps wait for the partitions'."""

    async def main():
        store = RedisStore(live.redis_url, live.prefix)
        await store.connect()
        try:
            old = await store.claim_partitions(live.locations, [2])
            gens = {(live.locations, 2): old[2]}
            inside = DeviceState("farm-race", T0, *INSIDE)
            enter = Event("enter", "farm-race", "cow-r", "race-fence", 1, T0, *INSIDE)
            blob = store.pack_save({"cow-r": inside}, [enter], {(live.locations, 2): ["cow-r"]}, gens)
            await store.claim_partitions(live.locations, [2])  # partition 2 changed hands after the read below
            read = store._gets
            store._gets = lambda keys: asyncio.sleep(0, [str(old[2]).encode()] * len(keys))  # the read before it
            with pytest.raises(Fenced):
                await store.save_packed(blob)
            store._gets = read
            assert await store.devices_inside("farm-race", "race-fence") == []
            assert "cow-r" not in await store.load_states(["cow-r"], {"cow-r": 2})
        finally:
            await store.close()

    run(main())


def test_every_producer_puts_a_key_where_a_java_client_would(live):
    """Issue 9 #11: murmur2 (aiokafka's partitioner is the Java-compatible reference), 1,000 keys, 12 partitions."""
    from aiokafka.partitioner import DefaultPartitioner

    topic = f"{live.name}.keys"
    ensure_topics(live.bootstrap, {topic: 12})
    keys = [f"collar-{i}".encode() for i in range(1000)]

    async def ours():
        p = Producer(live.bootstrap, idempotence=True)
        await p.start()
        try:
            await p.send_all(topic, [(k, b"ours", None) for k in keys])
        finally:
            await p.stop()

    run(ours())
    live.produce([(k.decode(), b"raw") for k in keys], topic=topic)  # the tests' (and simulator's) raw client
    got = read(live.consumer(topic), lambda g: len(g) >= 2000, timeout=60)
    java = DefaultPartitioner()
    parts = list(range(12))
    assert len(got) == 2000
    assert all(m.partition() == java(m.key(), parts, parts) for m in got)


def test_a_record_the_broker_refuses_for_good_is_reported_not_retried(live):
    """Issue 9 #3: too large for the broker: an Undelivered the loop dead-letters as a stub."""

    async def main():
        p = Producer(live.bootstrap)
        await p.start()
        try:
            await p.send(live.dlq, [(b"k", b"x" * 2_000_000, [("source", b"locations/0/1")])])
            (u,) = await p.wait_acked()
            assert u.reason == "too_large" and u.topic == live.dlq and dict(u.headers)["source"] == b"locations/0/1"
            assert await p.wait_acked() == []  # reported once
        finally:
            await p.stop()

    run(main())

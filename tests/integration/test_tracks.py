"""Tracks and late fixes through the real broker and redis-server (issue 12): a collar offline for a
while uploads what it recorded when coverage returns, and the farm gets the events in-order arrival
would have given (marked late), the device's state stays that of its newest fix, and its stored
track holds every fix in time order."""

from __future__ import annotations

import time

import orjson
import pytest

from fencex.errors import CorruptRecord
from fencex.fence import Fence
from fencex.fix import Fix
from fencex.index import FenceIndex
from fencex.pipeline import default_rules, process
from fencex.store.redis import RedisStore
from fencex.track import Track
from tests.integration.conftest import events_of, read, run, wait_ready

pytestmark = pytest.mark.integration

SQUARE = {
    "type": "Polygon",
    "coordinates": [[[17.60, 59.80], [17.61, 59.80], [17.61, 59.81], [17.60, 59.81], [17.60, 59.80]]],
}
NORTH = Fence(id="north", tenant="farm", geometry=SQUARE)
IN, OUT = (17.6095, 59.805), (17.6105, 59.805)  # 58 m apart across the east border: a walk, not a jump
MIN = 60_000


async def _setup(live) -> None:
    store = RedisStore(live.redis_url, live.prefix)
    await store.connect()
    try:
        await store.put_fences([NORTH])
        await store.register_devices({"cow-1": "farm"})
    finally:
        await store.close()


async def _stored(live) -> tuple[dict, Track]:
    store = RedisStore(live.redis_url, live.prefix)
    await store.connect()
    try:
        state = (await store.device_state("farm", "cow-1")).to_obj()
        raw = (await store.load_tracks(["cow-1"]))["cow-1"]
        return state, Track.from_bytes(raw)
    finally:
        await store.close()


def _send(live, fixes: list[Fix]) -> None:
    live.produce(
        [
            (f.device_id, orjson.dumps({"device_id": f.device_id, "ts": f.ts_ms, "lon": f.lon, "lat": f.lat}))
            for f in fixes
        ]
    )


def _standing(events: list[dict]) -> set[str]:
    out: dict[str, dict] = {}
    for e in events:
        if e["type"] == "retract":
            out.pop(e["retracts"], None)
        else:
            out[e["event_id"]] = e
    return set(out)


def test_a_collar_back_from_an_outage_uploads_its_fixes_and_the_escape_it_missed_is_reported(live):
    run(_setup(live))
    worker, port = live.start_worker()
    wait_ready(port, worker)
    reader = live.consumer(live.events)
    t0 = (int(time.time()) - 30 * 60) * 1000  # half an hour ago
    live_fixes = [Fix("cow-1", t0 + m * MIN, *IN) for m in (0, 1)]
    _send(live, live_fixes)
    got = read(reader, lambda g: len(events_of(g)) >= 1)
    assert [e["type"] for e in events_of(got)] == ["enter"]
    # offline from minute 2 to 25; coverage is back at minute 26 (inside again)
    back = [Fix("cow-1", t0 + 26 * MIN, *IN)]
    _send(live, back)
    time.sleep(1.0)
    # then the collar uploads what it recorded: out from 10 to 14 minutes, back at 15
    offline = [Fix("cow-1", t0 + m * MIN, *(OUT if 10 <= m < 15 else IN)) for m in range(2, 26)]
    _send(live, offline)
    every = live_fixes + back + offline
    expected = process(sorted(every, key=lambda f: f.ts_ms), FenceIndex([NORTH]), {}, lambda d: "farm", default_rules)
    want = {e.event_id for e in expected.events}
    assert {e.type for e in expected.events} >= {"exit", "escape", "enter", "return"}
    got += read(reader, lambda g: _standing(events_of(got + g)) == want, timeout=60)
    events = events_of(got)
    assert _standing(events) == want
    assert all(e.get("late") for e in events[1:]), events  # everything after the first enter came late
    deadline = time.monotonic() + 10  # the events are published before the merge's save lands
    while (track := run(_stored(live))[1]).ts != sorted(f.ts_ms for f in every) and time.monotonic() < deadline:
        time.sleep(0.2)
    state, track = run(_stored(live))
    assert state["ts"] == t0 + 26 * MIN and "north" in state["in"]  # its state now: its newest fix, inside
    assert track.ts == sorted(f.ts_ms for f in every)
    assert worker.poll() is None


async def _save_twice(live) -> tuple[Track, dict, list, list]:
    from fencex.detector import DeviceState
    from fencex.store.base import SaveWrites
    from fencex.track import append_bytes

    store = RedisStore(live.redis_url, live.prefix)
    await store.connect()
    try:
        t = 1_790_000_000_000
        fixes = [Fix("cow-9", t + 1000, 17.61, 59.8), Fix("cow-9", t + 2000, 17.62, 59.8)]
        key = store.keys.grazing("farm", "2026-11-20")
        writes = SaveWrites(
            tracks={"cow-9": append_bytes(t, fixes, [])},
            anchors={"cow-9": t},
            grazing={("farm", "north", "", "2026-11-20"): 5_000},
            long_bytes=20,
        )
        blob = store.pack_save({"cow-9": DeviceState("farm", t + 2000, 17.62, 59.8)}, [], None, None, writes)
        first = await store.save_packed(blob)
        again = await store.save_packed(blob)  # as redis-py resends a script whose reply was lost
        raw = (await store.load_tracks(["cow-9"]))["cow-9"]
        grazing = {k.decode(): int(v) for k, v in (await store.redis.hgetall(key)).items()}
        named = []
        for i in range(3, 70):  # one fix a save: joined at 64 segments, and named then (over 20 bytes)
            more = SaveWrites(
                tracks={"cow-9": append_bytes(t + (i - 1) * 1000, [Fix("cow-9", t + i * 1000, 17.6, 59.8)], [])},
                long_bytes=20,
            )
            named.append(await store.save_packed(store.pack_save({}, [], None, None, more)))
        joined = await store.redis.llen(store.keys.track(await store.device_partition("cow-9") or 0, "cow-9"))
        whole = Track.from_bytes((await store.load_tracks(["cow-9"]))["cow-9"])
        assert whole.ts == [t + i * 1000 for i in range(1, 70)] and joined < 64
        return Track.from_bytes(raw), grazing, first, again, named
    finally:
        await store.close()


def test_a_save_sent_twice_appends_and_adds_once_and_a_missing_track_starts_as_an_orphan(live):
    track, grazing, first, again, named = run(_save_twice(live))
    assert track.orphan and track.ts == [1_790_000_001_000, 1_790_000_002_000]
    assert grazing == {"north\t": 5_000}
    assert first == [] and again == []  # the second run wrote nothing
    # the first save made two segments (the orphan's header, its fixes); the 62nd after it makes the 64th,
    # which joins them
    assert [i for i, got in enumerate(named) if got] == [61] and named[61][0][0] == "cow-9"


@pytest.fixture
def prefix(redis_url):
    import uuid

    return f"fx{uuid.uuid4().hex[:8]}"


async def _wrong_type(url: str, prefix: str) -> tuple[dict, Track, Track]:
    from fencex.detector import DeviceState
    from fencex.store.base import SaveWrites
    from fencex.track import append_bytes

    store = RedisStore(url, prefix)
    await store.connect()
    try:
        t = 1_790_000_000_000
        await store.save_packed(store.pack_save({"cow-7": DeviceState("farm", t, 17.61, 59.8)}, [], None, None))
        p = await store.device_partition("cow-7") or 0  # saved by hand: under partition 0, and written down
        await store.redis.set(store.keys.track(p, "cow-7"), b"not a list")  # set by hand (or a track of an old format)
        loaded = await store.load_tracks(["cow-7"])  # a merge's or a trim's read
        with pytest.raises(CorruptRecord, match="cow-7"):  # the API's read: a 500 problem that says so
            await store.device_track("farm", "cow-7")
        fix = Fix("cow-7", t + 1000, 17.61, 59.8)
        writes = SaveWrites(tracks={"cow-7": append_bytes(t, [fix], [])}, anchors={"cow-7": t})
        await store.save_packed(
            store.pack_save({"cow-7": DeviceState("farm", t + 1000, 17.61, 59.8)}, [], None, None, writes)
        )
        served = await store.device_track("farm", "cow-7")
        return loaded, Track.from_bytes((await store.load_tracks(["cow-7"]))["cow-7"]), served
    finally:
        await store.close()


async def _grazing(live, days: list[str]) -> int:
    store = RedisStore(live.redis_url, live.prefix)
    await store.connect()
    try:
        return sum(r.ms for r in await store.grazing("farm", days, ["north"]))
    finally:
        await store.close()


def test_a_track_key_of_another_type_is_no_track_and_the_save_starts_one(redis_url, prefix):
    loaded, track, served = run(_wrong_type(redis_url, prefix))
    assert loaded == {}  # no track to merge with or trim, rather than an error every flush
    assert track.orphan and track.ts == [1_790_000_001_000]
    assert served.ts == track.ts


def test_grazing_time_is_the_hand_computed_time_inside_and_a_late_fix_corrects_it(live):
    run(_setup(live))
    worker, port = live.start_worker()
    wait_ready(port, worker)
    t0 = (int(time.time()) - 50 * 60) * 1000
    # in at 0 and 10 min, out at 20, in at 30 and 40: inside from 0 to 20 and from 30 to 40 (its exit at 20,
    # its enter at 30): 30 minutes of one animal
    _send(live, [Fix("cow-1", t0 + m * MIN, *(OUT if m == 20 else IN)) for m in (0, 10, 20, 30, 40)])
    days = sorted({time.strftime("%Y-%m-%d", time.gmtime(t / 1000)) for t in (t0, t0 + 40 * MIN)})
    deadline = time.monotonic() + 30
    while run(_grazing(live, days)) != 30 * MIN and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run(_grazing(live, days)) == 30 * MIN
    # the collar's upload: it was out already at 15 min (its exit then, not at 20): 25 minutes
    _send(live, [Fix("cow-1", t0 + 15 * MIN, *OUT)])
    deadline = time.monotonic() + 30
    while run(_grazing(live, days)) != 25 * MIN and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run(_grazing(live, days)) == 25 * MIN
    assert worker.poll() is None

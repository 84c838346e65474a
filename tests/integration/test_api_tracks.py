"""Tracks and late events through the real API and Redis: a device's track written as the worker
writes it (``Track.to_bytes`` for a rewrite, ``append_bytes`` appended by the live path, through the save script) into
``Keys.track``, read back as GeoJSON; the history written as the history agent writes it, read back
with its retracts and late events in order."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from fencex.detector import DeviceState
from fencex.event import RETRACT, Event, rfc3339
from fencex.fix import Fix
from fencex.metrics import HistoryMetrics
from fencex.store.base import SaveWrites
from fencex.store.redis import RedisStore
from fencex.stream.history import HistoryWriter
from fencex.track import Track, append_bytes
from tests.integration.conftest import run, two_farms
from tests.integration.test_api import is_problem

pytestmark = pytest.mark.integration
HOUR = 3_600_000
T0 = 1_780_000_000_000


@pytest.fixture
def api(live):
    with two_farms(live) as client:
        yield client


async def _write(live: Any, device: str, tenant: str, state_ts: int, *blobs: bytes) -> None:
    """The device's state (its farm) and its track, written by the worker's save script: the first blob
    as a rewrite (with the state), the rest appended, a save each."""
    store = RedisStore(live.redis_url, live.prefix)
    await store.connect()
    try:
        state = {device: DeviceState(tenant, state_ts, 17.6, 59.8)}
        first = SaveWrites(rewrites={device: blobs[0]}) if blobs else None
        await store.save_packed(store.pack_save(state, [], None, None, first))
        for blob in blobs[1:]:
            await store.save_packed(store.pack_save({}, [], None, None, SaveWrites(tracks={device: blob})))
    finally:
        await store.close()


def fixes(times: list[int], device: str = "cow") -> list[Fix]:
    return [
        Fix(device, t, 17.6 + k * 1e-4, 59.8 + k * 1e-4, {"accuracy_m": 4.0, "battery": 80.5} if k == 0 else None)
        for k, t in enumerate(times)
    ]


def stored(times: list[int], appended: list[int]) -> tuple[bytes, bytes]:
    """A track rewritten whole with ``times``, and what the live path appends for ``appended``."""
    track = Track()
    for f in fixes(times):
        track.add_fix(f)
    more = fixes([*times, *appended])[len(times) :]
    return track.to_bytes(), append_bytes(times[-1] if times else -1, more, [])


def test_a_track_written_as_the_worker_writes_it_reads_back_as_geojson(api):
    times = [T0 - 30 * HOUR, T0 - 2 * HOUR, T0 - HOUR]  # the first older than the window (24 h of the newest)
    whole, appended = stored(times, [T0 - 60_000, T0])
    run(_write(api.live, "cow", "farm-a", T0, whole, appended))
    served = [T0 - 2 * HOUR, T0 - HOUR, T0 - 60_000, T0]

    r = api.get("/devices/cow/track", headers=api.a)
    assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json", r.text
    body = r.json()
    assert body["type"] == "Feature" and body["geometry"]["type"] == "LineString"
    assert body["properties"]["times"] == [rfc3339(t) for t in served]
    assert body["geometry"]["coordinates"] == [[17.6 + k * 1e-4, 59.8 + k * 1e-4] for k in range(1, 5)]
    assert body["next_cursor"] is None

    pts = api.get("/devices/cow/track", params={"format": "points", "limit": 3}, headers=api.a).json()
    assert [f["properties"]["time"] for f in pts["features"]] == [rfc3339(t) for t in served[:3]]
    assert pts["next_cursor"] == str(served[3])
    rest = api.get(
        "/devices/cow/track", params={"format": "points", "limit": 3, "cursor": pts["next_cursor"]}, headers=api.a
    ).json()
    assert [f["properties"]["time"] for f in rest["features"]] == [rfc3339(served[3])] and rest["next_cursor"] is None

    ranged = api.get(
        "/devices/cow/track", params={"from": rfc3339(T0 - HOUR), "to": rfc3339(T0 - 60_000)}, headers=api.a
    )
    assert ranged.json()["properties"]["times"] == [rfc3339(T0 - HOUR), rfc3339(T0 - 60_000)], ranged.text


def test_the_extras_of_a_fix_reach_its_point(api):
    whole, _ = stored([T0 - 1000, T0], [])
    run(_write(api.live, "cow", "farm-a", T0, whole))
    got = api.get("/devices/cow/track", params={"format": "points"}, headers=api.a).json()["features"]
    assert got[0]["properties"] == {"time": rfc3339(T0 - 1000), "accuracy_m": 4.0, "battery": 80.5}
    assert got[1]["properties"] == {"time": rfc3339(T0)}


def test_another_farms_device_and_an_unknown_one_are_not_found_alike(api):
    whole, _ = stored([T0 - 1000, T0], [])
    run(_write(api.live, "cow", "farm-a", T0, whole))
    is_problem(api.get("/devices/cow/track", headers=api.b), 404, "no device 'cow'")
    is_problem(api.get("/devices/nobody/track", headers=api.b), 404, "no device 'nobody'")
    assert "17.6" not in api.get("/devices/cow/track", headers=api.b).text


def test_a_device_without_a_kept_track_has_an_empty_one(api):
    run(_write(api.live, "cow", "farm-a", T0))
    r = api.get("/devices/cow/track", headers=api.a)
    assert r.status_code == 200 and r.json()["geometry"] is None and r.json()["properties"]["times"] == [], r.text


@pytest.mark.parametrize("blob", [b"garbage", Track().to_bytes() + b"\x00\x01"])
def test_a_track_that_does_not_read_is_a_problem_that_says_so(api, blob):
    run(_write(api.live, "cow", "farm-a", T0, blob))
    r = api.get("/devices/cow/track", headers=api.a)
    is_problem(r, 500, "the stored track of device 'cow' does not read")
    assert api.get("/devices/cow", headers=api.a).status_code == 200  # the rest of the device still answers
    metrics = api.get("/metrics").text
    assert 'fencex_api_corrupt_records_total{kind="track"} 1.0' in metrics


# -- late events and retracts in the history ------------------------------------------------------

ENTER = Event("enter", "farm-a", "cow", "north", 2, T0, 17.605, 59.805)
EXIT = Event("exit", "farm-a", "cow", "north", 2, T0 + 40 * 60_000, 17.62, 59.8)  # live: the fix at 02:40
GONE = Event(RETRACT, "farm-a", "cow", "", 0, EXIT.ts_ms, EXIT.lon, EXIT.lat, retracts=EXIT.event_id)
LATE = Event("exit", "farm-a", "cow", "north", 2, T0 + 10 * 60_000, 17.611, 59.8, late=True)  # in order: 02:10


async def _history(live: Any, events: list[Event]) -> None:
    """As the history agent writes them: the records of fence-events, a batch at a time."""
    store = RedisStore(live.redis_url, live.prefix)
    writer = HistoryWriter(store, HistoryMetrics(CollectorRegistry()))
    try:
        await writer.write([e.to_json(T0 + 41 * 60_000) for e in events])
    finally:
        await store.close()


def _sse(api: httpx.Client, **params: str) -> list[tuple[str, dict[str, Any]]]:
    frames: list[tuple[str, dict[str, Any]]] = []
    kind = ""
    with api.stream("GET", "/events/stream", params=params, headers={**api.a, "Last-Event-ID": "0-0"}, timeout=3) as s:
        try:
            for line in s.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    frames.append((kind, orjson.loads(line[6:])))
                    if len(frames) == 4:
                        break
        except httpx.ReadTimeout:
            pass
    return frames


@pytest.mark.parametrize("params", [{}, {"fence": "north"}, {"device": "cow"}])
def test_a_retract_and_its_replacement_reach_the_history_and_the_stream_in_order(api, params):
    run(_history(api.live, [ENTER, EXIT]))
    run(_history(api.live, [GONE, LATE]))  # a late upload: the retract, then the late event
    want = [("enter", None, None), ("exit", None, None), ("retract", EXIT.event_id, None), ("exit", None, True)]
    got = api.get("/events", params=params, headers=api.a).json()
    assert [(e["type"], e.get("retracts"), e.get("late")) for e in got] == want
    assert got[2]["ts"] == rfc3339(EXIT.ts_ms) and got[3]["ts"] == rfc3339(LATE.ts_ms)
    frames = _sse(api, **params)
    assert [(k, e["type"], e.get("retracts"), e.get("late")) for k, e in frames] == [(w[0], *w) for w in want]


def test_an_event_retracted_and_brought_back_is_in_the_history_again(api):
    run(_history(api.live, [ENTER, EXIT]))
    run(_history(api.live, [GONE, LATE]))
    back = Event("retract", "farm-a", "cow", "", 1, LATE.ts_ms, LATE.lon, LATE.lat, retracts=LATE.event_id)
    run(_history(api.live, [back, EXIT]))  # a later upload: the exit at 02:40 was right after all
    got = api.get("/events", headers=api.a).json()
    assert [e["type"] for e in got] == ["enter", "exit", "retract", "exit", "retract", "exit"]

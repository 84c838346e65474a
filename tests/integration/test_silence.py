"""Silent collars against the real broker and redis-server (issue 11 item 4): one ``silent`` event id
per silence across a rebalance and across a SIGKILL of the worker holding the devices.

The workers run with a 4 s silence time for farms without their own herd settings
(``FENCEX_DEFAULT_SILENCE_S``) and sweep every half second (``FENCEX_SILENCE_SWEEP_S``).
"""

from __future__ import annotations

import signal
import time
from collections import defaultdict

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
COWS = [f"cow-{i}" for i in range(8)]  # spread over the 4 partitions
SILENCE = {"FENCEX_DEFAULT_SILENCE_S": "4", "FENCEX_SILENCE_SWEEP_S": "0.5"}


async def _seed(live) -> None:
    store = RedisStore(live.redis_url, live.prefix)
    await store.connect()
    try:
        await store.put_fences([Fence(id="north", tenant="farm", geometry=SQUARE)])
        await store.register_devices({c: "farm" for c in COWS})
    finally:
        await store.close()


def _fixes(live, ts: int) -> None:
    fix = lambda c: orjson.dumps({"device_id": c, "ts": ts, "lon": 17.605, "lat": 59.805})  # noqa: E731
    live.produce([(c, fix(c)) for c in COWS])


def _silent_by_device(events: list[dict]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for e in events:
        if e["type"] == "silent":
            out[e["device_id"]].append(e["event_id"])
    return out


def test_silence_across_a_rebalance_is_reported_once(live):
    run(_seed(live))
    a, port_a = live.start_worker(**SILENCE)
    wait_ready(port_a, a)
    reader = live.consumer(live.events)
    _fixes(live, T0)
    got = read(reader, lambda g: len(g) >= len(COWS))
    assert sorted(e["type"] for e in events_of(got)) == ["enter"] * len(COWS)
    b, port_b = live.start_worker(**SILENCE)  # a rebalance moves about half the devices while they fall silent
    wait_ready(port_b, b)
    got += read(reader, lambda g: len(_silent_by_device(events_of(g))) >= len(COWS), timeout=60)
    time.sleep(8.0)  # two more silence times: nobody reports them again
    got += read(reader, lambda g: False, timeout=2.0)
    silent = _silent_by_device(events_of(got))
    assert silent == {c: [event_id(c, "", 0, "silent", T0)] for c in COWS}  # each once, by its last fix
    # the next fix resumes the collar; a new silence is a new event with a new id
    _fixes(live, T0 + 60_000)
    got += read(reader, lambda g: len(_silent_by_device(events_of(g))["cow-1"]) >= 2, timeout=60)
    events = events_of(got)
    assert sorted(e["device_id"] for e in events if e["type"] == "resumed") == sorted(COWS)
    assert _silent_by_device(events)["cow-1"] == [
        event_id("cow-1", "", 0, "silent", T0),
        event_id("cow-1", "", 0, "silent", T0 + 60_000),
    ]


def test_silence_across_a_sigkill_keeps_its_id(live):
    """The worker is killed as soon as the first silent events are out (before or after their marks
    were saved): its successor reports the silences it had not saved, with the same ids."""
    run(_seed(live))
    a, port_a = live.start_worker(**SILENCE)
    wait_ready(port_a, a)
    reader = live.consumer(live.events)
    _fixes(live, T0)
    got = read(reader, lambda g: any(e["type"] == "silent" for e in events_of(g)), timeout=60)
    a.send_signal(signal.SIGKILL)
    a.wait(5)
    b, port_b = live.start_worker(**SILENCE)
    wait_ready(port_b, b, timeout=90)
    got += read(reader, lambda g: len(_silent_by_device(events_of(got + g))) >= len(COWS), timeout=60)
    time.sleep(8.0)
    got += read(reader, lambda g: False, timeout=2.0)
    silent = _silent_by_device(events_of(got))
    expected = {c: event_id(c, "", 0, "silent", T0) for c in COWS}
    assert {c: set(ids) for c, ids in silent.items()} == {c: {i} for c, i in expected.items()}  # one id each
    # at least once: a silence reported before the kill may be reported again, with its id, never a third time
    assert all(len(ids) <= 2 for ids in silent.values()), silent

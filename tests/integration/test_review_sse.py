"""Found in review: the live-event reader of an API process started each farm's read at the
Last-Event-ID of that farm's first client. A client sending an id ahead of the history (or far
behind it) decided what every later stream of the farm received: nothing, or the whole history
again, pushed through their queues."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tests.integration.test_api_limits import _append, farm, listen, start

pytestmark = pytest.mark.integration

EVENT = {
    "event_id": "e1",
    "type": "enter",
    "tenant": "farm-a",
    "device_id": "cow",
    "fence_id": "f",
    "fence_version": 1,
    "ts": "2026-05-28T20:26:41.000Z",
    "lon": 1.0,
    "lat": 2.0,
    "detected_at": "2026-05-28T20:26:41.000Z",
}


def test_one_clients_last_event_id_does_not_steer_the_others(live):
    with start(live) as api:
        a = farm(api, "farm-a")
        stop = threading.Event()
        first: list = []
        second: list = []
        ahead = {**a, "Last-Event-ID": "9999999999999-0"}  # ahead of anything in the history
        threading.Thread(target=listen, args=(str(api.base_url), ahead, first, stop), daemon=True).start()
        deadline = time.monotonic() + 10
        while ": connected" not in first and time.monotonic() < deadline:
            time.sleep(0.1)
        threading.Thread(target=listen, args=(str(api.base_url), a, second, stop), daemon=True).start()
        while ": connected" not in second and time.monotonic() < deadline:
            time.sleep(0.1)
        assert first[:1] == [200] and second[:1] == [200]
        asyncio.run(_append(live, [EVENT]))
        deadline = time.monotonic() + 10
        while not any(str(x).startswith("data:") for x in second) and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        assert any(str(x).startswith("data:") for x in second), second
        assert not any(str(x).startswith("data:") for x in first), first  # it asked for what comes after its id

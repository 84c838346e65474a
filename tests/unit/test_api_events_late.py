"""Late events and retracts through the API's read side, without servers: the history's filters
(a table, one rule a row) and GET /events over a history that holds a retract and its replacement."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from fencex.event import RETRACT, Event
from services.api.app import create_app
from services.api.routers.events import _matches
from services.api.settings import Settings

T = 1_780_000_000_000
EXIT = Event("exit", "farm", "cow", "north", 2, T + 40 * 60_000, 17.62, 59.8)  # published live at 02:40
LATE_EXIT = Event("exit", "farm", "cow", "north", 2, T + 10 * 60_000, 17.611, 59.8, late=True)  # in order: 02:10
GONE = Event(RETRACT, "farm", "cow", "", 0, EXIT.ts_ms, EXIT.lon, EXIT.lat, retracts=EXIT.event_id)
ENTER = Event("enter", "farm", "cow", "north", 2, T, 17.605, 59.805)
OTHER = Event("enter", "farm", "cow-2", "south", 1, T, 18.0, 60.0)


def as_dict(e: Event) -> dict[str, Any]:
    return e.to_dict(T + 41 * 60_000)


MATCH_ROWS = [
    # (event, device, fence, since) -> passes
    (GONE, None, None, None, True),  # no filter
    (GONE, None, "north", None, True),  # a retract names no fence: it passes a fence filter
    (GONE, None, "south", None, True),  # any fence's: the client drops one whose id it does not hold
    (GONE, "cow-2", None, None, False),  # it names its device: the device filter applies
    (GONE, None, None, "2026-05-28T21:10:00.000Z", False),  # its ts is the withdrawn event's fix time
    (LATE_EXIT, None, "north", None, True),  # a late event is an event of its fence
    (LATE_EXIT, None, "south", None, False),
    (OTHER, None, "north", None, False),  # other events keep their fence
]


@pytest.mark.parametrize(("event", "device", "fence", "since", "passes"), MATCH_ROWS)
def test_filters(event, device, fence, since, passes):
    assert _matches(as_dict(event), device, fence, since) is passes


class History:
    def __init__(self, events: list[Event]) -> None:
        self.entries = [(f"{T + k}-0", as_dict(e)) for k, e in enumerate(events)]

    async def tenant_for_key(self, key: str) -> str | None:
        return "farm" if key == "key-a" else None

    async def history(self, tenant: str, after: str = "-", count: int = 1000) -> list[tuple[str, dict[str, Any]]]:
        start = 0 if after == "-" else next(k for k, (i, _) in enumerate(self.entries) if i == after) + 1
        return self.entries[start : start + count]

    async def history_back(self, tenant: str, before: str = "+", count: int = 1000) -> list[tuple[str, dict[str, Any]]]:
        end = len(self.entries) if before == "+" else next(k for k, (i, _) in enumerate(self.entries) if i == before)
        return self.entries[max(0, end - count) : end][::-1]


def get(history: History, url: str) -> httpx.Response:
    edge = create_app(Settings(key_cache_s=0))
    edge.state.store.tenant_for_key = history.tenant_for_key  # type: ignore[method-assign]
    edge.state.store.history = history.history  # type: ignore[method-assign]
    edge.state.store.history_back = history.history_back  # type: ignore[method-assign]
    edge.state.ready = True

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=edge), base_url="http://api") as client:
            return await client.get(url, headers={"Authorization": "Bearer key-a"})

    return asyncio.run(call())


@pytest.mark.parametrize("query", ["", "?fence=north", "?device=cow"])
def test_the_history_shows_the_retract_before_its_replacement(query):
    r = get(History([ENTER, EXIT, GONE, LATE_EXIT, OTHER]), f"/events{query}")
    assert r.status_code == 200, r.text
    got = [(e["type"], e.get("retracts"), e.get("late")) for e in r.json() if e["device_id"] == "cow"]
    assert got == [("enter", None, None), ("exit", None, None), ("retract", EXIT.event_id, None), ("exit", None, True)]
    assert r.json()[3]["ts"] == "2026-05-28T20:36:40.000Z"  # the late exit at its own fix's time


def test_a_limit_gives_the_newest_events_of_a_long_history():
    """The web app's feed starts with GET /events?limit=50: the farm's newest 50, however long its
    history (it held 2,000 entries and more: the 50 after the oldest 1,950 came back)."""
    events = [Event("enter", "farm", f"cow-{k}", "north", 1, T + k * 1000, 17.6, 59.8) for k in range(4500)]
    r = get(History(events), "/events?limit=50")
    assert r.status_code == 200, r.text
    assert [e["device_id"] for e in r.json()] == [f"cow-{k}" for k in range(4450, 4500)]
    assert len(get(History(events[:30]), "/events?limit=50").json()) == 30

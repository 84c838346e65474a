"""./dev stack's lines: each event type in the farm's words (a table of events -> lines)."""

from __future__ import annotations

import pytest

from devtools.stack.words import COLOURS, RESET, line
from fencex.event import EVENT_TYPES, Event

NAMES = {"north": "North paddock", "pond": "Duck pond"}
TS = 1_780_000_000_000 + 14 * 3600_000  # 2026-05-28 ...; the lines show UTC


def ev(type_: str, device: str = "ewe-17", fence: str = "", **extra) -> dict:
    return Event(type_, "hillside", device, fence, 1 if fence else 0, TS, 17.6, 59.8, **extra).to_dict(TS)


HH_MM_SS = ev("enter")["ts"][11:19]

ROWS = [
    # the fence events
    (ev("enter", fence="north"), "ewe-17 went into North paddock"),
    (ev("exit", fence="north"), "ewe-17 left North paddock"),
    (ev("dwell", fence="north", dwell_s=300.0), "ewe-17 has been in North paddock for 5 min"),
    # escape: the pasture it left, and how far out it is
    (ev("escape", fence="north", distance_m=40.4), "ewe-17 escaped from North paddock, 40 m out"),
    # escape into an exclusion zone: the zone is named
    (ev("escape", fence="pond", distance_m=3.0), "ewe-17 escaped from Duck pond, 3 m out"),
    # a fence with no name known: its id
    (ev("escape", fence="pasture-000042", distance_m=12.0), "ewe-17 escaped from pasture-000042, 12 m out"),
    # no pasture named, no distance (a fence change with no pasture left)
    (ev("escape"), "ewe-17 escaped"),
    (ev("return", fence="north"), "ewe-17 is back in North paddock"),
    (ev("return"), "ewe-17 is back in its pasture"),
    # collar health
    (ev("battery_low", "ewe-3", battery=18.0), "collar ewe-3: battery low (18%)"),
    (ev("battery_ok", "ewe-3", battery=100.0), "collar ewe-3: battery ok again (100%)"),
    # silent: since the last fix's time (the event's ts), hours and minutes
    (ev("silent", "ewe-9"), f"collar ewe-9 silent since {HH_MM_SS[:5]}"),
    (ev("resumed", "ewe-9"), "collar ewe-9 is sending again"),
    (ev("transferred", "ewe-9"), "collar ewe-9 is registered to another farm now"),
    # late fixes showed an event published earlier did not happen: withdrawn, by its id
    (ev("retract", retracts="0123456789abcdef0123456789abcdef"), "ewe-17: event 01234567 withdrawn (late fixes)"),
    # a device named after its collar is not called "collar collar-..."
    (ev("silent", "collar-000057"), f"collar-000057 silent since {HH_MM_SS[:5]}"),
]


@pytest.mark.parametrize("event,words", ROWS, ids=[f"{e['type']}-{i}" for i, (e, _w) in enumerate(ROWS)])
def test_each_event_in_the_farms_words(event, words):
    assert line(event, NAMES) == f"{HH_MM_SS} hillside: {words}"


def test_every_event_type_has_its_words_and_colour():
    assert {e["type"] for e, _w in ROWS} == set(EVENT_TYPES)
    assert set(COLOURS) == set(EVENT_TYPES)
    coloured = line(ev("escape", fence="north", distance_m=40.0), NAMES, colour=True)
    assert coloured == f"{HH_MM_SS} hillside: {COLOURS['escape']}ewe-17 escaped from North paddock, 40 m out{RESET}"

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from fencex.event import EVENT_SCHEMA, Event, rfc3339

SCHEMA_FILE = Path(__file__).parents[2] / "schema" / "fence-event.schema.json"


def test_published_schema_file_is_current():
    assert json.loads(SCHEMA_FILE.read_text()) == EVENT_SCHEMA


def test_events_validate_against_schema():
    for e in (
        Event("enter", "farm", "cow", "north", 2, 1700000000123, 17.6, 59.8),
        Event("dwell", "farm", "cow", "north", 2, 1700000000123, 17.6, 59.8, dwell_s=600.0),
    ):
        jsonschema.validate(e.to_dict(1700000000200.0), EVENT_SCHEMA, format_checker=jsonschema.FormatChecker())
    bad = Event("teleport", "farm", "cow", "north", 2, 1, 0.0, 0.0).to_dict(2.0)
    try:
        jsonschema.validate(bad, EVENT_SCHEMA)
    except jsonschema.ValidationError:
        return
    raise AssertionError("an unknown event type passed the schema")


def _valid(obj: dict) -> bool:
    try:
        jsonschema.validate(obj, EVENT_SCHEMA, format_checker=jsonschema.FormatChecker())
    except jsonschema.ValidationError:
        return False
    return True


def test_herd_events_validate_and_fence_events_keep_their_fence():
    escape = Event("escape", "farm", "cow", "north", 2, 1700000000123, 17.6, 59.8, distance_m=40.5)
    low = Event("battery_low", "farm", "cow", "", 0, 1700000000123, 17.6, 59.8, battery=19.0)
    assert _valid(escape.to_dict(1700000000200.0))
    assert _valid(low.to_dict(1700000000200.0))
    assert _valid(Event("return", "farm", "cow", "", 0, 1, 17.6, 59.8).to_dict(2.0))
    # enter, exit and dwell still name a fence and its version
    assert not _valid(Event("enter", "farm", "cow", "", 0, 1, 17.6, 59.8).to_dict(2.0))
    assert not _valid(Event("exit", "farm", "cow", "north", 0, 1, 17.6, 59.8).to_dict(2.0))
    assert not _valid({**low.to_dict(2.0), "mood": "grumpy"})  # additionalProperties stays false


def test_herd_event_ids_leave_the_fence_version_out():
    a = Event("escape", "farm", "cow", "north", 2, 1700000000123, 17.6, 59.8, distance_m=40.5)
    b = Event("escape", "farm", "cow", "north", 3, 1700000000123, 17.6, 59.8, distance_m=41.0)
    assert a.event_id == b.event_id  # a reshaped pasture does not make a replayed escape new
    assert a.event_id != Event("return", "farm", "cow", "north", 2, 1700000000123, 17.6, 59.8).event_id
    enter = Event("enter", "farm", "cow", "north", 2, 1, 17.6, 59.8)
    assert enter.event_id != Event("enter", "farm", "cow", "north", 3, 1, 17.6, 59.8).event_id  # as before


def test_rfc3339():
    assert rfc3339(1700000000123) == "2023-11-14T22:13:20.123Z"


def test_late_events_keep_their_id_and_retracts_name_what_they_withdraw():
    enter = Event("enter", "farm", "cow", "north", 2, 1700000000123, 17.6, 59.8)
    late = Event("enter", "farm", "cow", "north", 2, 1700000000123, 17.6, 59.8, late=True)
    assert late.event_id == enter.event_id  # the id in-order arrival gives it
    assert _valid(late.to_dict(1700000000200.0)) and late.to_dict(1.0)["late"] is True
    assert "late" not in enter.to_dict(1.0)
    retract = Event("retract", "farm", "cow", "", 0, 1700000000123, 17.6, 59.8, retracts=enter.event_id)
    assert _valid(retract.to_dict(1700000000200.0))
    assert retract.event_id != enter.event_id
    # a second retraction of the same id (after it came back) has another id; the same one the same
    again = Event("retract", "farm", "cow", "", 0, 1700000000123, 17.6, 59.8, turn=1, retracts=enter.event_id)
    assert again.event_id != retract.event_id
    assert (
        retract.event_id
        == Event("retract", "farm", "cow", "", 0, 1700000000123, 17.6, 59.8, retracts=enter.event_id).event_id
    )
    # a retract must name its event; no other type may
    assert not _valid({k: v for k, v in retract.to_dict(2.0).items() if k != "retracts"})
    assert not _valid({**enter.to_dict(2.0), "retracts": enter.event_id})
    assert not _valid({**enter.to_dict(2.0), "late": False})

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


def test_rfc3339():
    assert rfc3339(1700000000123) == "2023-11-14T22:13:20.123Z"

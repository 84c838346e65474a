"""Fence events: what fencex publishes on ``fence-events``.

The vocabulary follows Tile38's: ``enter`` and ``exit`` when a device's set of
fences changes, plus ``dwell`` once a device has stayed inside a fence for the
fence's ``dwell_s``. The herd's words come in the same envelope: ``escape`` and
``return`` (a device out of every pasture of its mob, or in one of its exclusion
zones, and back), ``battery_low`` and ``battery_ok`` (a collar's battery across
the farm's threshold), ``silent`` and ``resumed`` (no fix has arrived from a collar for the
farm's silence time, judged on the worker's clock; and its next fix), and ``transferred``
(the collar is registered to another farm now: sent to the farm it left, which takes it off all
its alert lists). Collar events have ``fence_id`` ``""`` and ``fence_version`` 0; ``silent``'s and
``transferred``'s ``ts``, ``lon`` and ``lat`` are those of the last fix the farm had.
``event_id`` is a hash of what the event is about, so the same fix processed
twice yields the same id and consumers can drop duplicates; a herd event's id
leaves the fence's version out (device, fence or ``""``, type, fix time), so a
fence reshaped meanwhile does not make a replayed escape new. In its place, an
escape's or return's id holds the device's count of escapes and returns so far
(``turn``, saved with its state): fence changes that turn a device out, in and out
again at one accepted fix give three ids, and a replay from the saved state the same three.

Late fixes (:mod:`fencex.late`): an event that in-order arrival gives and that was not published when
its fixes came is published when they do, with ``late`` true and the id in-order arrival gives it; an event
published that in-order arrival would not have given is withdrawn by a ``retract`` naming its id
(``retracts``). A consumer that drops duplicate ids forgets an id when it is retracted: a later late fix
can bring the same event back (the same id), and a second retraction of it has another id (``turn``:
how many times that id was retracted before).
The JSON Schema is ``schema/fence-event.schema.json``; a test keeps it true.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

FENCE_TYPES: tuple[str, ...] = ("enter", "exit", "dwell")
HERD_TYPES: tuple[str, ...] = (
    "escape",
    "return",
    "battery_low",
    "battery_ok",
    "silent",
    "resumed",
    "transferred",
)
RETRACT = "retract"
EVENT_TYPES: tuple[str, ...] = FENCE_TYPES + HERD_TYPES + (RETRACT,)


def rfc3339(ms: int | float) -> str:
    """Epoch milliseconds as an RFC 3339 UTC timestamp with milliseconds."""
    dt = datetime.fromtimestamp(ms / 1000.0, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ms) % 1000:03d}Z"


def event_id(device_id: str, fence_id: str, fence_version: int, type_: str, ts_ms: int) -> str:
    key = f"{device_id}\x1f{fence_id}\x1f{fence_version}\x1f{type_}\x1f{ts_ms}".encode()
    return hashlib.blake2b(key, digest_size=16).hexdigest()


@dataclass(slots=True, frozen=True)
class Event:
    type: str
    tenant: str
    device_id: str
    fence_id: str
    fence_version: int
    ts_ms: int
    lon: float
    lat: float
    dwell_s: float | None = None
    distance_m: float | None = None  # escape: metres to the nearest pasture boundary of the mob
    battery: float | None = None  # battery_low / battery_ok: the reading, in percent
    turn: int = 0  # escape / return: the device's count of them, this one included; retract: the earlier ones
    late: bool = False  # published after later fixes' events (a late fix): not in the id
    retracts: str = ""  # retract: the event_id withdrawn

    @property
    def event_id(self) -> str:
        if self.type == RETRACT:
            return event_id(self.device_id, self.retracts, self.turn, RETRACT, self.ts_ms)
        version = self.fence_version if self.type in FENCE_TYPES else self.turn
        return event_id(self.device_id, self.fence_id, version, self.type, self.ts_ms)

    def to_dict(self, detected_at_ms: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "type": self.type,
            "tenant": self.tenant,
            "device_id": self.device_id,
            "fence_id": self.fence_id,
            "fence_version": self.fence_version,
            "ts": rfc3339(self.ts_ms),
            "lon": self.lon,
            "lat": self.lat,
            "detected_at": rfc3339(detected_at_ms),
        }
        if self.dwell_s is not None:
            out["dwell_s"] = self.dwell_s
        if self.distance_m is not None:
            out["distance_m"] = self.distance_m
        if self.battery is not None:
            out["battery"] = self.battery
        if self.late:
            out["late"] = True
        if self.retracts:
            out["retracts"] = self.retracts
        return out

    def to_json(self, detected_at_ms: float) -> bytes:
        return orjson.dumps(self.to_dict(detected_at_ms))


EVENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://fencex.dev/schema/fence-event.schema.json",
    "title": "fencex fence event",
    "description": "One enter, exit or dwell of a device in a fence, or a herd event: escape, return, "
    "battery_low, battery_ok, silent, resumed, transferred; or a retract, withdrawing an event published "
    "before late fixes showed that in-order arrival would not have given it. "
    "Published as JSON on topic fence-events, keyed by device_id.",
    "type": "object",
    "additionalProperties": False,
    "required": [
        "event_id",
        "type",
        "tenant",
        "device_id",
        "fence_id",
        "fence_version",
        "ts",
        "lon",
        "lat",
        "detected_at",
    ],
    "properties": {
        "event_id": {
            "type": "string",
            "pattern": "^[0-9a-f]{32}$",
            "description": "deterministic: the same fix processed twice gives the same id",
        },
        "type": {"enum": list(EVENT_TYPES)},
        "tenant": {"type": "string", "minLength": 1, "description": "the farm that owns the fence and the device"},
        "device_id": {"type": "string", "minLength": 1},
        "fence_id": {
            "type": "string",
            "description": "the fence; escape: the pasture left or the exclusion zone entered; "
            "return: the pasture it is back in; empty for collar events (battery, silence) or when there is none",
        },
        "fence_version": {
            "type": "integer",
            "minimum": 0,
            "description": "the fence's version when the event was detected (0 when fence_id is empty)",
        },
        "ts": {
            "type": "string",
            "format": "date-time",
            "description": "time of the fix that caused the event (RFC 3339, UTC); silent, transferred: "
            "the last fix's time (transferred: the last fix the farm it was sent to had); at a "
            "schedule's transition (a fence turned on or off): the transition's instant",
        },
        "lon": {"type": "number", "minimum": -180, "maximum": 180},
        "lat": {"type": "number", "minimum": -90, "maximum": 90},
        "detected_at": {"type": "string", "format": "date-time", "description": "when fencex detected it"},
        "dwell_s": {
            "type": "number",
            "exclusiveMinimum": 0,
            "description": "dwell events only: the fence's dwell time",
        },
        "distance_m": {
            "type": "number",
            "minimum": 0,
            "description": "escape events only: metres from the nearest pasture boundary of the device's mob",
        },
        "battery": {
            "type": "number",
            "description": "battery_low and battery_ok events only: the collar's battery reading (percent)",
        },
        "late": {
            "const": True,
            "description": "present (true) when the event comes from fixes that arrived after later ones: "
            "it is what in-order arrival gives, published late (the same event_id as in order)",
        },
        "retracts": {
            "type": "string",
            "pattern": "^[0-9a-f]{32}$",
            "description": "retract events only: the event_id withdrawn (ts, lon, lat: those of its fix)",
        },
    },
    "allOf": [
        {
            "if": {"properties": {"type": {"enum": list(FENCE_TYPES)}}},
            "then": {"properties": {"fence_id": {"minLength": 1}, "fence_version": {"minimum": 1}}},
        },
        {
            "if": {"properties": {"type": {"const": RETRACT}}},
            "then": {"required": ["retracts"]},
            "else": {"not": {"required": ["retracts"]}},
        },
    ],
}

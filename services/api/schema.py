"""Request and response schemas of the API (separate Create / Update / Public models)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    create_model,
    field_validator,
)
from pydantic.fields import FieldInfo

from fencex.fence import FenceId, FenceProperties
from fencex.herd import DEFAULT_RULES, HerdRules, zone
from fencex.mob import MobId, MobProperties
from fencex.schedule import Schedule

MIN_TS_MS = 946_684_800_000  # 2000-01-01: fixes before it are unit or clock errors (issue 9 #2)
DeviceId = Annotated[str, Field(min_length=1, max_length=128, examples=["collar-7"])]
DeviceIdPath = Annotated[str, Path(min_length=1, max_length=128, description="the collar's id", examples=["collar-7"])]
TenantId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$")]

# JSON Schema's integer: 17.0 is one (strict pydantic refuses it); 17.5 and "17" are not
WHOLE = BeforeValidator(lambda v: int(v) if isinstance(v, float) and v.is_integer() else v)
WholeNumber = Annotated[int, WHOLE]
StrictLon = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-180, le=180)]
StrictLat = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-90, le=90)]


EXAMPLE_POLYGON: dict[str, Any] = {
    "type": "Polygon",
    "coordinates": [[[17.60, 59.80], [17.61, 59.80], [17.61, 59.81], [17.60, 59.81], [17.60, 59.80]]],
}


Position = Annotated[
    list[Annotated[float, Field(strict=True, allow_inf_nan=False)]],
    Field(min_length=2, max_length=3),
    WithJsonSchema(
        {
            "type": "array",
            "description": "[longitude, latitude] or [longitude, latitude, altitude]: numbers only, "
            "longitude first (values a hair outside the range, floating-point noise, are clamped)",
            "prefixItems": [
                {"type": "number", "minimum": -180, "maximum": 180},
                {"type": "number", "minimum": -90, "maximum": 90},
            ],
            "items": {"type": "number"},
            "minItems": 2,
            "maxItems": 3,
        }
    ),
]
Ring = Annotated[
    list[Position],
    Field(
        min_length=4,
        description="a closed ring: at least 4 positions, the last equal to the first; "
        "rings must not cross themselves or each other",
    ),
]
PolygonCoordinates = Annotated[list[Ring], Field(min_length=1, description="the outer ring, then any holes")]


class Polygon(BaseModel):
    """A GeoJSON Polygon, longitude first (RFC 7946). Only ``type`` and ``coordinates`` are
    kept: other members are dropped."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"example": EXAMPLE_POLYGON})

    type: Literal["Polygon"]
    coordinates: PolygonCoordinates


class MultiPolygon(BaseModel):
    """A GeoJSON MultiPolygon: polygons that must not overlap. Only ``type`` and
    ``coordinates`` are kept."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["MultiPolygon"]
    coordinates: Annotated[list[PolygonCoordinates], Field(min_length=1)]


Geometry = Annotated[Polygon | MultiPolygon, Field(discriminator="type")]


class FencePropertiesIn(FenceProperties):
    """The core's fence properties, read strictly: a number is a number, a name is text."""

    model_config = ConfigDict(extra="forbid", strict=True)


class FenceCreate(BaseModel):
    """A GeoJSON Feature: the fence's shape and its properties."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "type": "Feature",
                "id": "north-paddock",
                "geometry": EXAMPLE_POLYGON,
                "properties": {"name": "North paddock", "tags": ["sheep"], "dwell_s": 600, "exit_buffer_m": 15},
            }
        }
    )

    type: Literal["Feature"] = "Feature"
    id: FenceId | None = Field(None, description="chosen by you, or made up by the server when left out")
    geometry: Geometry
    properties: FencePropertiesIn = Field(default_factory=FencePropertiesIn)


def _optional_fields(model: type[BaseModel]) -> dict[str, Any]:
    """The model's fields with the same types and constraints, each left out by default."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        field = FieldInfo.merge_field_infos(info, default=None)
        field.default_factory = None
        fields[name] = (info.annotation, field)
    return fields


# PATCH: the core's fence properties, each optional: the same constraints as FenceProperties.
FenceUpdate = create_model(
    "FenceUpdate",
    __config__=ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"example": {"name": "North paddock (rested)", "dwell_s": 900}},
    ),
    __doc__="PATCH: the properties to change; the others stay. null clears dwell_s or exit_buffer_m.",
    **_optional_fields(FenceProperties),
)


class FencePublicProperties(FenceProperties):
    version: int
    updated_at: float


EXAMPLE_FEATURE: dict[str, Any] = {
    "type": "Feature",
    "id": "north-paddock",
    "geometry": EXAMPLE_POLYGON,
    "properties": {
        "name": "North paddock",
        "tags": ["sheep"],
        "dwell_s": 600,
        "exit_buffer_m": 15,
        "kind": "pasture",
        "version": 3,
        "updated_at": 1780000000.0,
    },
}


class FencePublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": EXAMPLE_FEATURE})

    type: Literal["Feature"] = "Feature"
    id: str
    geometry: dict[str, Any]
    properties: FencePublicProperties


class RotationStep(BaseModel):
    """One paddock of a rotation: its new schedule (null: always active)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    schedule: Schedule | None = Field(description="when the fence is active from now on; null: always")
    if_match: Annotated[int, Field(ge=1, le=10**18), WHOLE] | None = Field(
        None, description="the fence's version you last saw (its ETag): 412 if it changed since"
    )


class Rotation(BaseModel):
    """A rotation: the schedules of several of the farm's fences, set together (all or none)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "example": {
                "fences": {
                    "north-paddock": {
                        "schedule": {
                            "timezone": "Europe/Stockholm",
                            "windows": [
                                {
                                    "kind": "absolute",
                                    "from": "2026-11-22T06:00:00+01:00",
                                    "to": "2026-11-29T06:00:00+01:00",
                                }
                            ],
                        },
                    },
                    "south-paddock": {
                        "schedule": {
                            "timezone": "Europe/Stockholm",
                            "windows": [
                                {"kind": "daily", "start": "06:00", "end": "18:00", "valid_from": "2026-11-29"}
                            ],
                        },
                        "if_match": 3,
                    },
                }
            }
        },
    )

    fences: dict[FenceId, RotationStep] = Field(
        min_length=1,
        max_length=1000,
        description="fence id -> its new schedule (and, optionally, its version)",
        json_schema_extra={
            "additionalProperties": False,  # every key is a fence id (patternProperties alone allows any)
            "propertyNames": {"minLength": 1, "maxLength": 128, "pattern": r"^[A-Za-z0-9_.:-]+$"},
        },
    )


class QuarantinedFence(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"id": "north", "version": 3, "reason": "IllegalArgumentException: ..."}}
    )

    id: str
    version: int
    reason: str = Field(description="why the fence could not be read or built")


class FenceCollection(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {"type": "FeatureCollection", "features": [EXAMPLE_FEATURE], "total": 1, "next_offset": None}
        }
    )

    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[FencePublic]
    total: int = Field(description="fences matching the filter, on all pages")
    next_offset: int | None = Field(None, description="pass as offset for the next page; null on the last")


class FenceImport(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "type": "FeatureCollection",
                "features": [
                    {"type": "Feature", "id": "south", "geometry": EXAMPLE_POLYGON, "properties": {"name": "South"}}
                ],
            }
        }
    )

    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[FenceCreate] = Field(max_length=10_000)


class FenceRef(BaseModel):
    id: str
    name: str
    tags: list[str]
    version: int


class PointQueryResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "lon": 17.605,
                "lat": 59.805,
                "fences": [{"id": "north-paddock", "name": "North paddock", "tags": ["sheep"], "version": 3}],
            }
        }
    )

    lon: float
    lat: float
    fences: list[FenceRef]


class BatchQuery(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"points": [[17.605, 59.805], [17.7, 59.9]]}})

    points: list[tuple[StrictLon, StrictLat]] = Field(
        description="[longitude, latitude] pairs, at most max_batch_points (100,000 by default; more: 413)"
    )


class BatchQueryResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"points": 2, "matches": 1, "point": [0], "fence_id": ["north-paddock"]}}
    )

    points: int
    matches: int
    point: list[int] = Field(description="index into your points, one per match")
    fence_id: list[str] = Field(description="the fence that contains that point, one per match")


class DeviceInFence(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"device_id": "collar-7", "since": "2026-05-28T20:20:00.000Z"}}
    )

    device_id: str
    since: str = Field(description="RFC 3339: the time of the fix that entered")


class Membership(BaseModel):
    fence_id: str
    since: str
    dwelled: bool


class DevicePublic(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "device_id": "collar-7",
                "lon": 17.605,
                "lat": 59.805,
                "last_seen": "2026-05-28T20:26:41.000Z",
                "last_arrival": "2026-05-28T20:26:42.310Z",
                "fences": [{"fence_id": "north-paddock", "since": "2026-05-28T20:20:00.000Z", "dwelled": False}],
                "mob": "ewes",
                "out": False,
                "pasture": None,
                "battery": 64.0,
                "battery_low": False,
                "silent": False,
            }
        }
    )

    device_id: str
    lon: float
    lat: float
    last_seen: str = Field(description="RFC 3339: the time of its last fix (the collar's clock)")
    last_arrival: str | None = Field(
        description="RFC 3339: when its last fix arrived at a worker (the server's clock; silence is judged "
        "from it); null until a worker that knows the herd rules saw one"
    )
    fences: list[Membership]
    mob: str | None = Field(description="the id of its mob; null: the farm's default mob (all its pastures)")
    out: bool = Field(description="out of its mob's pastures, or in one of its exclusion zones (escaped)")
    pasture: str | None = Field(description="the pasture it last left (null: none yet)")
    battery: float | None = Field(description="its last battery reading, percent")
    battery_low: bool = Field(description="below the farm's battery threshold (battery_low sent)")
    silent: bool = Field(description="no fix for the farm's silence time (silent sent, no fix since)")


class DeviceTransfer(BaseModel):
    """Which farm a device belongs to from now on (the URL names the device)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"tenant": "hillside-farm"}})

    tenant: TenantId


class DeviceRegistration(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"device_id": "collar-7", "tenant": "hillside-farm"}})

    device_id: DeviceId
    tenant: TenantId


EXAMPLE_TRACK_TIMES: list[Any] = ["2026-05-28T20:20:00.000Z", "2026-05-28T20:21:00.000Z", "2026-05-28T20:22:00.000Z"]
EXAMPLE_TRACK_COORDINATES: list[Any] = [[17.6031, 59.8042], [17.6038, 59.8047], [17.605, 59.805]]

EXAMPLE_TRACK_LINE: dict[str, Any] = {
    "type": "Feature",
    "geometry": {"type": "LineString", "coordinates": EXAMPLE_TRACK_COORDINATES},
    "properties": {"times": EXAMPLE_TRACK_TIMES},
    "device_id": "collar-7",
    "next_cursor": None,
}
EXAMPLE_TRACK_POINTS: dict[str, Any] = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": EXAMPLE_TRACK_COORDINATES[0]},
            "properties": {"time": EXAMPLE_TRACK_TIMES[0], "accuracy_m": 3.5, "battery": 87.0},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": EXAMPLE_TRACK_COORDINATES[1]},
            "properties": {"time": EXAMPLE_TRACK_TIMES[1]},
        },
    ],
    "device_id": "collar-7",
    "next_cursor": "1779999720000",
}


class TrackLineProperties(BaseModel):
    times: list[str] = Field(description="RFC 3339: each fix's time, one per position, oldest first")


class TrackLine(BaseModel):
    """A page of a device's track as one GeoJSON Feature: a LineString of its fixes, oldest first
    (a Point when the page holds one fix, null when none), their times in ``properties``."""

    model_config = ConfigDict(json_schema_extra={"example": EXAMPLE_TRACK_LINE})

    type: Literal["Feature"] = "Feature"
    geometry: dict[str, Any] | None = Field(
        description="LineString of [longitude, latitude] (two fixes or more), Point (one), null (none)"
    )
    properties: TrackLineProperties
    device_id: str
    next_cursor: str | None = Field(description="pass as cursor (with the same from and to) for the next page")


class TrackPointProperties(BaseModel):
    time: str = Field(description="RFC 3339: the fix's time")
    accuracy_m: float | None = Field(None, description="present when the fix had it: metres")
    battery: float | None = Field(None, description="present when the fix had it: percent")


class TrackPoint(BaseModel):
    type: Literal["Feature"] = "Feature"
    geometry: dict[str, Any] = Field(description="Point: [longitude, latitude]")
    properties: TrackPointProperties


class TrackPoints(BaseModel):
    """A page of a device's track as a GeoJSON FeatureCollection of Points, oldest first."""

    model_config = ConfigDict(json_schema_extra={"example": EXAMPLE_TRACK_POINTS})

    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[TrackPoint]
    device_id: str
    next_cursor: str | None = Field(description="pass as cursor (with the same from and to) for the next page")


class PolygonQuery(BaseModel):
    """Devices whose last position is inside a polygon."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"polygon": EXAMPLE_POLYGON}})

    polygon: Geometry


class RadiusQuery(BaseModel):
    """Devices within a radius (metres) of a point."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"example": {"point": [17.605, 59.805], "radius_m": 250}}
    )

    point: tuple[StrictLon, StrictLat] = Field(description="[longitude, latitude]")
    radius_m: float = Field(gt=0, le=100_000, allow_inf_nan=False)


DeviceQuery = PolygonQuery | RadiusQuery


class FixIn(BaseModel):
    """One GPS fix, as the collars send it (the same checks as the push path)."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {"device_id": "collar-7", "ts": "2026-05-28T20:26:41Z", "lon": 17.605, "lat": 59.805}
        }
    )

    device_id: DeviceId
    ts: Annotated[float, Field(strict=True, ge=MIN_TS_MS, allow_inf_nan=False)] | AwareDatetime = Field(
        description="epoch milliseconds (from 2000 on), or RFC 3339 with a time zone; "
        "not more than a few minutes ahead of the server's clock"
    )
    lon: StrictLon
    lat: StrictLat
    accuracy_m: float | None = Field(None, allow_inf_nan=False)
    speed_mps: float | None = Field(None, allow_inf_nan=False)
    battery: float | None = Field(None, allow_inf_nan=False)


class DeviceHit(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"device_id": "collar-7", "lon": 17.605, "lat": 59.805}})

    device_id: str
    lon: float
    lat: float


class TenantCreate(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"id": "hillside-farm", "name": "Hillside Farm"}})

    id: TenantId = Field(description='a farm\'s id; "default" is reserved (devices of no farm)')
    name: str = Field("", max_length=200)


class TenantKey(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"tenant": "hillside-farm", "id": "3f9a0c2b7d1e4a55", "api_key": "fx_3q2...k9"}}
    )

    tenant: str
    id: str = Field(description="the key's public id: to list, revoke or rotate it")
    api_key: str = Field(description="shown once: store it; the server keeps only its hash")


class KeyInfo(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"id": "3f9a0c2b7d1e4a55", "created_at": 1780000000.0}})

    id: str = Field(description="the key's public id (a prefix of its hash), never the key")
    created_at: float = Field(description="unix seconds")


class LocationsAccepted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"accepted": 2, "rejected": 0, "errors": []}})

    accepted: int
    rejected: int = 0
    errors: list[dict[str, Any]] = Field(default_factory=list)


class MobPropertiesIn(MobProperties):
    """The core's mob properties, read strictly: lists of ids, a name that is text."""

    model_config = ConfigDict(extra="forbid", strict=True)


EXAMPLE_MOB: dict[str, Any] = {  # valid for any farm that owns collar-7: it names no fence
    "id": "ewes",
    "name": "Ewes",
    "fences": [],
    "devices": ["collar-7"],
}


class MobCreate(MobPropertiesIn):
    """A mob: its name, its pastures and exclusion zones (fence ids of the farm) and its collars
    (registered to the farm, each in at most one of its mobs)."""

    model_config = ConfigDict(json_schema_extra={"example": EXAMPLE_MOB})

    id: MobId | None = Field(None, description="chosen by you (per farm), or made up by the server when left out")


class MobPublic(MobProperties):
    model_config = ConfigDict(json_schema_extra={"example": {**EXAMPLE_MOB, "version": 3, "updated_at": 1780000000.0}})

    id: str
    version: int
    updated_at: float


class MobList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "mobs": [{**EXAMPLE_MOB, "version": 3, "updated_at": 1780000000.0}],
                "total": 1,
                "next_offset": None,
            }
        }
    )

    mobs: list[MobPublic]
    total: int = Field(description="the farm's mobs, on all pages")
    next_offset: int | None = Field(None, description="pass as offset for the next page; null on the last")


def _rule(name: str, **constraints: Any) -> Any:
    return Field(getattr(DEFAULT_RULES, name), allow_inf_nan=False, **constraints)


class HerdSettings(BaseModel):
    """A farm's herd settings (``fencex.herd.HerdRules``). In a PUT, a field left out takes its default."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "example": {**dataclasses.asdict(DEFAULT_RULES), "silence_s": 1800.0, "timezone": "Europe/Stockholm"}
        },
    )

    confirm_fixes: WholeNumber = Field(
        DEFAULT_RULES.confirm_fixes,
        ge=1,
        le=20,
        description="consecutive fixes that must agree before escape or return",
    )
    # bounded so that battery_ok is always reachable (threshold + margin <= 100)
    battery_low_pct: float = _rule("battery_low_pct", ge=0, le=90, description="battery_low below this (percent)")
    battery_margin_pct: float = _rule(
        "battery_margin_pct", ge=0, le=10, description="battery_ok once above the threshold plus this (percent)"
    )
    # floors a farmer would accept: below them nearly every fix is slow-path (not trusted), or every
    # collar between two fixes is called silent (a fix a minute is a common collar's rate)
    accuracy_limit_m: float = _rule(
        "accuracy_limit_m",
        ge=1,
        le=10_000,
        description="a fix less accurate than this moves no fence membership (metres, at least 1)",
    )
    max_speed_mps: float = _rule(
        "max_speed_mps",
        ge=1,
        le=1000,
        description="a fix implying a faster move is a jump, held back (m/s, at least 1)",
    )
    silence_s: float = _rule(
        "silence_s",
        ge=60,
        le=30 * 86_400,
        description="silent after this long without a fix (server's clock; seconds, at least 60)",
    )
    timezone: str = Field(
        DEFAULT_RULES.timezone,
        min_length=1,
        max_length=64,
        description="the farm's IANA time zone: its days, for grazing time per day",
        examples=["Europe/Stockholm"],
    )
    # a floor: an hour of coverage lost is common; a ceiling: a week of fixes kept per collar
    track_window_s: float = _rule(
        "track_window_s",
        ge=3600,
        le=7 * 86_400,
        description="fixes arriving late (a collar offline) are merged up to this far behind the collar's newest; "
        "older ones are dropped (seconds, 1 hour to 7 days)",
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone(value)  # ValueError: a 422 naming the field
        return value

    def rules(self) -> HerdRules:
        return HerdRules(**self.model_dump())


AlertKind = Literal["out", "silent", "battery_low"]


class Alert(BaseModel):
    device_id: str
    kind: AlertKind
    since: str = Field(description="RFC 3339: the time of the event that raised it (escape, silent, battery_low)")


class AlertPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "alerts": [{"device_id": "collar-7", "kind": "out", "since": "2026-05-28T20:26:41.000Z"}],
                "counts": {"out": 1, "silent": 0, "battery_low": 0},
                "next_cursor": None,
            }
        }
    )

    alerts: list[Alert] = Field(description="by kind (out, silent, battery_low), then oldest first")
    counts: dict[str, int] = Field(description="devices in each list asked for, on all pages")
    next_cursor: str | None = Field(None, description="pass as cursor for the next page; null on the last")

"""Request and response schemas of the API (separate Create / Update / Public models)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, WithJsonSchema, create_model
from pydantic.fields import FieldInfo

from fencex.fence import FenceId, FenceProperties

MIN_TS_MS = 946_684_800_000  # 2000-01-01: fixes before it are unit or clock errors (issue 9 #2)
DeviceId = Annotated[str, Field(min_length=1, max_length=128, examples=["collar-7"])]
DeviceIdPath = Annotated[str, Path(min_length=1, max_length=128, description="the collar's id", examples=["collar-7"])]
TenantId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$")]

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
                "fences": [{"fence_id": "north-paddock", "since": "2026-05-28T20:20:00.000Z", "dwelled": False}],
            }
        }
    )

    device_id: str
    lon: float
    lat: float
    last_seen: str
    fences: list[Membership]


class DeviceTransfer(BaseModel):
    """Which farm a device belongs to from now on (the URL names the device)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"tenant": "hillside-farm"}})

    tenant: TenantId


class DeviceRegistration(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"device_id": "collar-7", "tenant": "hillside-farm"}})

    device_id: DeviceId
    tenant: TenantId


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

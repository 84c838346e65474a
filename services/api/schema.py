"""Request and response schemas of the API (separate Create / Update / Public models)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fencex.fence import FenceId, FenceProperties

EXAMPLE_POLYGON = {
    "type": "Polygon",
    "coordinates": [[[17.60, 59.80], [17.61, 59.80], [17.61, 59.81], [17.60, 59.81], [17.60, 59.80]]],
}


class Geometry(BaseModel):
    """A GeoJSON Polygon or MultiPolygon, longitude first (RFC 7946)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"example": EXAMPLE_POLYGON})

    type: Literal["Polygon", "MultiPolygon"]
    coordinates: list[Any]


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
    properties: FenceProperties = Field(default_factory=FenceProperties)


class FenceUpdate(BaseModel):
    """PATCH: the properties to change; the others stay."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"example": {"name": "North paddock (rested)", "dwell_s": 900}}
    )

    name: str | None = Field(None, max_length=200)
    tags: list[str] | None = Field(None, max_length=50)
    dwell_s: float | None = Field(None, gt=0)
    exit_buffer_m: float | None = Field(None, ge=0, le=10_000)


class FencePublicProperties(FenceProperties):
    version: int
    updated_at: float


EXAMPLE_FEATURE = {
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
    features: list[dict[str, Any]] = Field(max_length=10_000)


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

    points: list[tuple[float, float]] = Field(description="[longitude, latitude] pairs, at most 100,000")


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


class DeviceRegistration(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"device_id": "collar-7", "tenant": "hillside-farm"}})

    device_id: str
    tenant: str


class DeviceQuery(BaseModel):
    """Either a polygon, or a point and a radius in metres."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"example": {"point": [17.605, 59.805], "radius_m": 250}}
    )

    polygon: Geometry | None = None
    point: tuple[float, float] | None = None
    radius_m: float | None = Field(None, gt=0, le=100_000)


class DeviceHit(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"device_id": "collar-7", "lon": 17.605, "lat": 59.805}})

    device_id: str
    lon: float
    lat: float


class TenantCreate(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"id": "hillside-farm", "name": "Hillside Farm"}})

    id: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    name: str = Field("", max_length=200)


class TenantKey(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"tenant": "hillside-farm", "api_key": "fx_3q2...k9"}})

    tenant: str
    api_key: str = Field(description="shown once: store it; the server keeps only its hash")


class LocationsAccepted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"accepted": 2, "rejected": 0, "errors": []}})

    accepted: int
    rejected: int = 0
    errors: list[dict[str, Any]] = Field(default_factory=list)

"""Fences: a tenant's pasture as a GeoJSON (RFC 7946) Polygon or MultiPolygon.

Positions are ``[longitude, latitude]``: longitude first. A point on a fence's
boundary counts as inside. Geometry is checked here, once, before anything is
stored, and every refusal says what is wrong and where.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import orjson
import shapely
from pydantic import BaseModel, ConfigDict, Field, field_validator
from shapely.geometry.base import BaseGeometry

from fencex.errors import InvalidFence

DEFAULT_MAX_VERTICES = 10_000
DEFAULT_TENANT = "default"

FenceId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]


def _position(pos: Any, where: str) -> tuple[float, float]:
    if not isinstance(pos, (list, tuple)) or len(pos) not in (2, 3):
        raise InvalidFence(f"{where}: a position is [longitude, latitude], got {pos!r}")
    lon, lat = pos[0], pos[1]
    for name, value in (("longitude", lon), ("latitude", lat)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidFence(f"{where}: {name} must be a finite number, got {value!r}")
    if not -180.0 <= lon <= 180.0:
        raise InvalidFence(f"{where}: longitude {lon} is outside [-180, 180] (GeoJSON puts longitude first)")
    if not -90.0 <= lat <= 90.0:
        raise InvalidFence(f"{where}: latitude {lat} is outside [-90, 90] (GeoJSON puts longitude first)")
    return float(lon), float(lat)


def _rings(polygon: Any, where: str) -> list[list[tuple[float, float]]]:
    if not isinstance(polygon, list) or not polygon:
        raise InvalidFence(f"{where}: empty polygon (it needs an outer ring)")
    rings = []
    for r, ring in enumerate(polygon):
        rwhere = f"{where} ring {r}" + (" (outer)" if r == 0 else " (hole)")
        if not isinstance(ring, list):
            raise InvalidFence(f"{rwhere}: a ring is a list of positions")
        points = [_position(p, f"{rwhere} position {i}") for i, p in enumerate(ring)]
        if len(points) < 4:
            raise InvalidFence(
                f"{rwhere}: a ring needs at least 4 positions (3 corners and the first again), got {len(points)}"
            )
        if points[0] != points[-1]:
            raise InvalidFence(
                f"{rwhere}: the ring is not closed: first position {list(points[0])} "
                f"differs from last {list(points[-1])}"
            )
        rings.append(points)
    return rings


def parse_geometry(geometry: Any, max_vertices: int = DEFAULT_MAX_VERTICES) -> BaseGeometry:
    """Check a GeoJSON geometry object and return it as a valid shapely geometry.

    Raises InvalidFence with a message naming the problem and where it is.
    """
    if not isinstance(geometry, dict):
        raise InvalidFence("geometry must be a GeoJSON object")
    kind = geometry.get("type")
    coords = geometry.get("coordinates")
    if kind == "Polygon":
        polygons = [_rings(coords, "polygon")]
    elif kind == "MultiPolygon":
        if not isinstance(coords, list) or not coords:
            raise InvalidFence("multipolygon: empty (it needs at least one polygon)")
        polygons = [_rings(p, f"polygon {i}") for i, p in enumerate(coords)]
    else:
        raise InvalidFence(f"geometry type must be Polygon or MultiPolygon, got {kind!r}")
    vertices = sum(len(r) for p in polygons for r in p)
    if vertices > max_vertices:
        raise InvalidFence(f"the fence has {vertices} vertices, more than the limit of {max_vertices}")
    shapes = [shapely.Polygon(p[0], p[1:]) for p in polygons]
    geom = shapes[0] if kind == "Polygon" else shapely.MultiPolygon(shapes)
    if not geom.is_valid:
        reason = shapely.is_valid_reason(geom)
        raise InvalidFence(f"invalid geometry: {reason} (rings must not cross themselves or each other)")
    if geom.is_empty or geom.area == 0.0:
        raise InvalidFence("the fence encloses no area")
    return geom


class FenceProperties(BaseModel):
    """What a farmer says about a fence besides its shape."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200, examples=["North paddock"])
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=50, examples=[["pasture", "sheep"]]
    )
    dwell_s: float | None = Field(
        default=None, gt=0, description="emit one dwell event once a device has stayed inside this long", examples=[600]
    )
    exit_buffer_m: float | None = Field(
        default=None, ge=0, le=10_000, description="exit fires only once a device is this far outside", examples=[15]
    )


class Fence(FenceProperties):
    """A stored fence: properties, geometry, owner and version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: FenceId
    tenant: str = Field(default=DEFAULT_TENANT, min_length=1, max_length=128)
    version: int = Field(default=1, ge=1)
    geometry: dict[str, Any]
    updated_at: float = Field(default=0.0, description="unix seconds of the last change")

    @field_validator("geometry")
    @classmethod
    def _valid_geometry(cls, value: dict[str, Any]) -> dict[str, Any]:
        parse_geometry(value, max_vertices=10**9)
        return value

    def shape(self) -> BaseGeometry:
        return shapely.geometry.shape(self.geometry)

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Fence:
        # Stored fences were validated on the way in; skip the geometry check.
        return cls.model_construct(**orjson.loads(data))

    def feature(self) -> dict[str, Any]:
        """The fence as a GeoJSON Feature."""
        return {
            "type": "Feature",
            "id": self.id,
            "geometry": self.geometry,
            "properties": {
                "name": self.name,
                "tags": list(self.tags),
                "dwell_s": self.dwell_s,
                "exit_buffer_m": self.exit_buffer_m,
                "version": self.version,
                "updated_at": self.updated_at,
            },
        }

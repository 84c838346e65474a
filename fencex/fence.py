"""Fences: a tenant's pasture as a GeoJSON (RFC 7946) Polygon or MultiPolygon.

Positions are ``[longitude, latitude]``: longitude first. A point on a fence's
boundary counts as inside. Geometry is checked here, once, before anything is
stored, and every refusal says what is wrong and where.
"""

from __future__ import annotations

import hashlib
import math
from typing import Annotated, Any, Literal

import numpy as np
import orjson
import shapely
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator
from shapely.geometry.base import BaseGeometry

from fencex.errors import InvalidFence
from fencex.schedule import Schedule

DEFAULT_MAX_VERTICES = 10_000
# Coordinates this far (degrees) outside [-180, 180] or [-90, 90] are floating-point noise from
# real exports (180.00000000000006): clamped onto the range. Farther out is refused.
COORDINATE_TOLERANCE = 1e-9
DEFAULT_TENANT = "default"

_STORED: dict[str, bool] = {"stored": True}  # validation context of a record read back from the store

FenceId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _clamp(value: float, limit: float) -> float:
    """``value`` pulled back onto ``[-limit, limit]`` when it is over by floating-point noise only."""
    if limit < abs(value) <= limit + COORDINATE_TOLERANCE:
        return math.copysign(limit, value)
    return value


def _position(pos: Any, where: str) -> tuple[float, float]:
    """A position as ``(lon, lat)``: ``[lon, lat]`` or ``[lon, lat, altitude]`` of finite numbers
    (RFC 7946 3.1.1); the altitude is checked and dropped (fencex is 2-D)."""
    if not isinstance(pos, (list, tuple)) or len(pos) not in (2, 3):
        raise InvalidFence(
            f"{where}: a position is [longitude, latitude] or [longitude, latitude, altitude], got {pos!r}"
        )
    for name, value in zip(("longitude", "latitude", "altitude"), pos):
        if not _number(value):
            raise InvalidFence(f"{where}: {name} must be a finite number, got {value!r}")
    lon, lat = _clamp(float(pos[0]), 180.0), _clamp(float(pos[1]), 90.0)
    if not -180.0 <= lon <= 180.0:
        raise InvalidFence(f"{where}: longitude {lon} is outside [-180, 180] (GeoJSON puts longitude first)")
    if not -90.0 <= lat <= 90.0:
        raise InvalidFence(f"{where}: latitude {lat} is outside [-90, 90] (GeoJSON puts longitude first)")
    return lon, lat


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


def _checked(geometry: Any, max_vertices: int) -> tuple[dict[str, Any], BaseGeometry]:
    """The geometry normalised (``type`` and 2-D float ``coordinates`` only) and as shapely."""
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
    for i, p in enumerate(polygons):
        lons = [pos[0] for pos in p[0]]
        if max(lons) - min(lons) > 180.0:
            raise InvalidFence(
                f"polygon {i} spans {max(lons) - min(lons):g} degrees of longitude: a fence that crosses the "
                "180th meridian must be cut there into two polygons of a MultiPolygon (RFC 7946 3.1.9)"
            )
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
    lists = [[[list(pos) for pos in ring] for ring in p] for p in polygons]
    return {"type": kind, "coordinates": lists[0] if kind == "Polygon" else lists}, geom


def parse_geometry(geometry: Any, max_vertices: int = DEFAULT_MAX_VERTICES) -> BaseGeometry:
    """Check a GeoJSON geometry object and return it as a valid shapely geometry.

    Raises InvalidFence with a message naming the problem and where it is.
    """
    return _checked(geometry, max_vertices)[1]


def normalize_geometry(geometry: Any, max_vertices: int = DEFAULT_MAX_VERTICES) -> dict[str, Any]:
    """Check a GeoJSON geometry object and return what fencex stores of it: ``type`` and
    ``coordinates`` of ``[lon, lat]`` floats (altitudes and unknown members dropped, coordinates
    over the range by floating-point noise clamped onto it).

    Raises InvalidFence as :func:`parse_geometry` does.
    """
    return _checked(geometry, max_vertices)[0]


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
    kind: Literal["pasture", "exclusion", "zone"] = Field(
        default="pasture",
        description="pasture: animals belong inside (leaving every pasture of its mob is an escape); "
        "exclusion: animals must stay out (entering is an escape); zone: enter and exit only",
    )
    schedule: Schedule | None = Field(
        default=None,
        description="when the fence is active (null: always); an inactive fence counts as absent: "
        "no enter, exit or escape by it, and those inside exit when it closes and enter when it opens",
    )


class Fence(FenceProperties):
    """A stored fence: properties, geometry, owner and version.

    A *light* record (:meth:`from_json` with ``light=True``, :meth:`light`) is what a worker keeps: its
    geometry built once (:meth:`shape`), its GeoJSON coordinates not kept (``geometry`` holds its
    ``type`` and a ``digest`` of the stored record: equal for the same record). Everything else is the
    stored fence's. A light record cannot be stored or shown (:meth:`to_json`, :meth:`feature` refuse it).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    _shape: BaseGeometry | None = PrivateAttr(default=None)  # a light record's geometry

    id: FenceId
    tenant: str = Field(default=DEFAULT_TENANT, min_length=1, max_length=128)
    version: int = Field(default=1, ge=1)
    geometry: dict[str, Any]
    updated_at: float = Field(default=0.0, description="unix seconds of the last change")

    @field_validator("geometry")
    @classmethod
    def _valid_geometry(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if info.context is _STORED:
            return value  # checked on the way in; what still does not build, the index quarantines
        return normalize_geometry(value, max_vertices=10**9)

    def shape(self) -> BaseGeometry:
        if self._shape is not None and self.light_record:
            return self._shape
        return shapely.geometry.shape(self.geometry)

    @property
    def light_record(self) -> bool:
        """True for a record without its coordinates (:meth:`light`)."""
        return "coordinates" not in self.geometry and "digest" in self.geometry

    def light(self) -> Fence:
        """This fence without its GeoJSON coordinates, its geometry built; itself if it is light already
        or its geometry does not build (the index quarantines it then, saying why)."""
        if self.light_record:
            return self
        built = _built(self.geometry)
        if built is None:
            return self
        light = self.model_copy(update={"geometry": _stub(self.geometry, orjson.dumps(self.geometry))})
        light._shape = built
        return light

    def to_json(self) -> bytes:
        if self.light_record:
            raise InvalidFence(f"fence {self.id!r} is held without its coordinates (a worker's record): not stored")
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes | str, light: bool = False) -> Fence:
        """A stored fence. Its fields are checked (cheaply), its geometry is not: that was
        checked before it was stored. Raises InvalidFence if the record is unreadable.

        ``light``: the record without its coordinates (:meth:`light`), read with no Python list made of
        them: the geometry is built straight from the JSON's arrays."""
        if light:
            return cls._light_from_json(data)
        try:
            return cls.model_validate_json(data, context=_STORED)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "record"
            raise InvalidFence(f"stored fence unreadable: {where}: {first['msg']}") from None

    @classmethod
    def _light_from_json(cls, data: bytes | str) -> Fence:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            obj = None
        geometry = obj.get("geometry") if isinstance(obj, dict) else None
        built = _built(geometry)
        if built is None or not isinstance(geometry, dict):
            return cls.from_json(data)  # read in full: its error said, or the index quarantines it
        raw = data.encode() if isinstance(data, str) else data
        try:
            fence = cls.model_validate({**obj, "geometry": _stub(geometry, raw)}, context=_STORED)
        except ValidationError:
            return cls.from_json(data)  # raises InvalidFence, saying what is wrong
        fence._shape = built
        # the fields given, one shared set (pydantic makes one of 700 bytes a record: 0.7 GB a million fences)
        object.__setattr__(fence, "__pydantic_fields_set__", _shared_fields(fence.__pydantic_fields_set__))
        return fence

    def feature(self) -> dict[str, Any]:
        """The fence as a GeoJSON Feature."""
        if self.light_record:
            raise InvalidFence(f"fence {self.id!r} is held without its coordinates (a worker's record)")
        return {
            "type": "Feature",
            "id": self.id,
            "geometry": self.geometry,
            "properties": {
                "name": self.name,
                "tags": list(self.tags),
                "dwell_s": self.dwell_s,
                "exit_buffer_m": self.exit_buffer_m,
                "kind": self.kind,
                "schedule": self.schedule.model_dump(mode="json") if self.schedule is not None else None,
                "version": self.version,
                "updated_at": self.updated_at,
            },
        }


_FIELDS_SETS: dict[frozenset[str], set[str]] = {}


def _shared_fields(fields: set[str]) -> set[str]:
    """One set object for every light record given the same fields (never changed: the model is frozen)."""
    return _FIELDS_SETS.setdefault(frozenset(fields), fields)


def _stub(geometry: dict[str, Any], digest_of: bytes) -> dict[str, Any]:
    """A light record's geometry: its type, and a digest that differs when the stored record does."""
    return {"type": geometry.get("type"), "digest": hashlib.blake2b(digest_of, digest_size=12).hexdigest()}


def _built(geometry: Any) -> BaseGeometry | None:
    """A stored geometry as shapely (a polygon of one ring straight from its array), None if it does not
    build (the index quarantines such a fence, saying why)."""
    if not isinstance(geometry, dict):
        return None
    try:
        rings = geometry.get("coordinates")
        if geometry.get("type") == "Polygon" and isinstance(rings, list) and len(rings) == 1:
            built: BaseGeometry = shapely.polygons(np.asarray(rings[0], dtype=np.float64))
        else:
            built = shapely.geometry.shape(geometry)
    except Exception:  # noqa: BLE001 - whatever a stored geometry does, the index says why
        return None
    return built

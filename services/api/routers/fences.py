"""Fences over REST: create, list, read, replace, patch, delete, bulk import."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import shapely
from fastapi import APIRouter, Header, Path, Query, Response, status
from pydantic import ValidationError

from fencex.errors import InvalidFence, LimitExceeded, VersionConflict
from fencex.fence import Fence, FenceProperties, parse_geometry
from services.api.deps import State, Store, Tenant
from services.api.problem import Problem
from services.api.schema import FenceCollection, FenceCreate, FenceImport, FencePublic, FenceUpdate, QuarantinedFence
from services.api.settings import Settings

router = APIRouter(prefix="/fences", tags=["fences"])
NUMBER = r"\s*[-+]?[0-9]{1,12}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?\s*"
BBOX = rf"^{NUMBER},{NUMBER},{NUMBER},{NUMBER}$"
FENCE_ID = r"^[A-Za-z0-9_.:-]+$"  # the core's FenceId
FenceIdPath = Annotated[
    str,
    Path(description="the fence's id", examples=["north-paddock"], min_length=1, max_length=128, pattern=FENCE_ID),
]
IF_MATCH = r'^\s*(\*|(W/)?"?[0-9]{1,18}"?)\s*$'
IfMatch = Annotated[
    str,
    Header(
        description='the ETag you last saw, e.g. "3" (or *): the write fails with 412 if the fence changed since',
        pattern=IF_MATCH,
    ),
]


def etag(fence: Fence) -> str:
    return f'"{fence.version}"'


def parse_if_match(value: str | None) -> int | None:
    if value is None or value.strip() == "*":
        return None
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    v = v.strip('"')
    try:
        return int(v)
    except ValueError:
        raise Problem(412, f'If-Match {value!r} is not an ETag of ours (they look like "3")') from None


def build(tenant: str, fid: str, geometry: dict[str, Any], props: FenceProperties, settings: Settings) -> Fence:
    """The fence to store, within the limits: vertices (422) and bytes (413), each named."""
    vertices = sum(len(ring) for polygon in polygons(geometry) for ring in polygon)
    if vertices > settings.max_vertices:
        raise LimitExceeded(
            f"the fence has {vertices} vertices, more than the limit of {settings.max_vertices}", "max_vertices"
        )
    parse_geometry(geometry, settings.max_vertices)  # raises InvalidFence with the reason
    try:
        fence = Fence(id=fid, tenant=tenant, geometry=geometry, **props.model_dump())
    except ValidationError as exc:  # the core's own checks: a 422 that says which
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise InvalidFence(f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg"))) from None
    return within_bytes(fence, settings)


def polygons(geometry: dict[str, Any]) -> list[Any]:
    coordinates = geometry.get("coordinates") or []
    return list(coordinates) if geometry.get("type") == "MultiPolygon" else [coordinates]


def within_bytes(fence: Fence, settings: Settings) -> Fence:
    size = len(fence.to_json())
    if size > settings.max_fence_bytes:
        raise LimitExceeded(
            f"fence {fence.id!r} is {size} bytes stored; the limit is {settings.max_fence_bytes}",
            "max_fence_bytes",
            too_large=True,
        )
    return fence


def public(fence: Fence) -> dict[str, Any]:
    return fence.feature()


def collection(fences: list[Fence], total: int, next_offset: int | None) -> dict[str, Any]:
    """A page of fences as a GeoJSON FeatureCollection (``FenceCollection``)."""
    return {
        "type": "FeatureCollection",
        "features": [public(f) for f in fences],
        "total": total,
        "next_offset": next_offset,
    }


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=FencePublic,
    summary="Draw a fence",
    responses={
        409: {"description": "a fence with this id exists"},
        422: {"description": "invalid geometry or properties"},
    },
)
async def create_fence(
    body: FenceCreate, tenant: Tenant, store: Store, state: State, response: Response
) -> dict[str, Any]:
    fid = body.id or uuid.uuid4().hex[:12]
    fence = build(tenant, fid, body.geometry.model_dump(), body.properties, state.settings)
    try:
        (stored,) = await store.put_fences(
            [fence], create_only=True, max_per_tenant=state.settings.max_fences_per_tenant
        )
    except VersionConflict:
        raise Problem(409, f"fence {fid!r} exists: PUT /fences/{fid} replaces it") from None
    response.headers["ETag"] = etag(stored)
    response.headers["Location"] = f"/fences/{fid}"
    return public(stored)


@router.get("", response_model=FenceCollection, summary="List my fences (paged; filter by tag and bounding box)")
async def list_fences(
    tenant: Tenant,
    store: Store,
    state: State,
    tag: Annotated[str | None, Query(description="only fences with this tag", examples=["sheep"])] = None,
    bbox: Annotated[
        str | None,
        Query(
            description="minLon,minLat,maxLon,maxLat: fences that intersect it (corners in either order; "
            "the world's edges bound it)",
            examples=["17.5,59.7,17.7,59.9"],
            pattern=BBOX,
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    if not tag and not bbox:  # a page of ids, then only that page's fences: a big farm stays cheap
        ids = await store.fence_ids(tenant)
        chosen = await store.fences_by_id(ids[offset : offset + limit], tenant=tenant)
        page = [f for f in chosen.values() if f is not None and f.tenant == tenant]
        nxt = offset + limit if offset + limit < len(ids) else None
        return collection(page, len(ids), nxt)
    fences = await store.fences(tenant)
    if tag:
        fences = [f for f in fences if tag in f.tags]
    if bbox:
        x0, y0, x1, y1 = (float(x) for x in bbox.split(","))
        box = shapely.box(
            max(min(x0, x1), -180.0), max(min(y0, y1), -90.0), min(max(x0, x1), 180.0), min(max(y0, y1), 90.0)
        )
        fences = [f for f in fences if shapely.intersects(f.shape(), box)]
    page = fences[offset : offset + limit]
    nxt = offset + limit if offset + limit < len(fences) else None
    return collection(page, len(fences), nxt)


@router.post(
    "/import",
    status_code=status.HTTP_201_CREATED,
    response_model=FenceCollection,
    summary="Import a whole FeatureCollection: all fences or none",
)
async def import_fences(body: FenceImport, tenant: Tenant, store: Store, state: State) -> dict[str, Any]:
    fences, errors = [], []
    seen: set[str] = set()
    for i, item in enumerate(body.features):
        fid = item.id or uuid.uuid4().hex[:12]
        try:
            if fid in seen:
                raise InvalidFence(f"id {fid!r} appears twice in the collection")
            seen.add(fid)
            fences.append(build(tenant, fid, item.geometry.model_dump(), item.properties, state.settings))
        except LimitExceeded:
            raise
        except InvalidFence as exc:
            errors.append({"feature": i, "id": item.id, "message": str(exc)})
    if errors:
        raise Problem(
            422, f"{len(errors)} of {len(body.features)} features are invalid; nothing was imported", errors=errors
        )
    if not fences:
        return collection([], 0, None)
    stored = await store.put_fences(fences, max_per_tenant=state.settings.max_fences_per_tenant)
    return collection(stored, len(stored), None)


@router.get(
    "/quarantined",
    response_model=list[QuarantinedFence],
    summary="My fences left out of the index (their geometry does not build, or the record is unreadable), and why",
    description="Such a fence takes part in no query and no event until it is replaced (PUT) or deleted. "
    "The API refuses such geometries today; these come from older versions or damaged records.",
)
async def quarantined_fences(tenant: Tenant, state: State) -> list[dict[str, Any]]:
    q = state.follower.quarantined
    return [
        {"id": fid, "version": item.version, "reason": item.reason}
        for fid, item in sorted(q.items())
        if item.tenant == tenant
    ]


@router.get(
    "/{fence_id}",
    response_model=FencePublic,
    summary="Read one fence",
    responses={404: {"description": "no such fence (or another farm's)"}},
)
async def get_fence(fence_id: FenceIdPath, tenant: Tenant, store: Store, response: Response) -> dict[str, Any]:
    fence = await store.get_fence(tenant, fence_id)
    response.headers["ETag"] = etag(fence)
    return public(fence)


@router.put(
    "/{fence_id}",
    response_model=FencePublic,
    summary="Replace a fence (or create it with this id)",
    responses={
        201: {"model": FencePublic, "description": "created: there was no fence with this id"},
        409: {"description": "the id is another farm's"},
        412: {"description": "If-Match does not match the current version"},
    },
)
async def replace_fence(
    fence_id: FenceIdPath,
    body: FenceCreate,
    tenant: Tenant,
    store: Store,
    state: State,
    response: Response,
    if_match: IfMatch = None,  # type: ignore[assignment]
) -> dict[str, Any]:
    if body.id is not None and body.id != fence_id:
        raise Problem(422, f"the body's id {body.id!r} differs from the URL's {fence_id!r}")
    fence = build(tenant, fence_id, body.geometry.model_dump(), body.properties, state.settings)
    expected = parse_if_match(if_match)
    (stored,) = await store.put_fences(
        [fence],
        if_match={fence_id: expected} if expected is not None else None,
        max_per_tenant=state.settings.max_fences_per_tenant,
    )
    response.headers["ETag"] = etag(stored)
    if stored.version == 1:
        response.status_code = status.HTTP_201_CREATED
    return public(stored)


@router.patch(
    "/{fence_id}",
    response_model=FencePublic,
    summary="Change a fence's properties",
    responses={412: {"description": "If-Match does not match the current version"}},
)
async def patch_fence(
    fence_id: FenceIdPath,
    body: FenceUpdate,
    tenant: Tenant,
    store: Store,
    state: State,
    response: Response,
    if_match: IfMatch = None,  # type: ignore[assignment]
) -> dict[str, Any]:
    current = await store.get_fence(tenant, fence_id)
    expected = parse_if_match(if_match)
    if expected is not None and expected != current.version:
        raise VersionConflict(expected, current.version)
    changes = {name: getattr(body, name) for name in body.model_fields_set}  # models stay models (schedule)
    merged = within_bytes(current.model_copy(update=changes), state.settings)
    (stored,) = await store.put_fences([merged], if_match={fence_id: current.version})
    response.headers["ETag"] = etag(stored)
    return public(stored)


@router.delete(
    "/{fence_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a fence",
    responses={412: {"description": "If-Match does not match the current version"}},
)
async def delete_fence(fence_id: FenceIdPath, tenant: Tenant, store: Store, if_match: IfMatch = None) -> Response:  # type: ignore[assignment]
    await store.delete_fence(tenant, fence_id, parse_if_match(if_match))
    return Response(status_code=status.HTTP_204_NO_CONTENT)

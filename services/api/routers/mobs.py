"""Mobs over REST: create, list, read, replace, delete; versions and ETags as for fences.

Mob ids are per farm: another farm's mob of the same id is another mob, and does not exist here.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response, status

from fencex.errors import LimitExceeded, VersionConflict
from fencex.mob import MobProperties, MobRecord
from services.api.deps import State, Store, Tenant
from services.api.problem import Problem
from services.api.routers.fences import IfMatch, parse_if_match
from services.api.schema import MobCreate, MobList, MobPublic
from services.api.settings import Settings

router = APIRouter(prefix="/mobs", tags=["mobs"])
MobIdPath = Annotated[
    str,
    Path(description="the mob's id", examples=["ewes"], min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$"),
]
CHECKS: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such mob (or another farm's)"},
    409: {"description": "a collar is in another mob of the farm (the problem's mob member names it)"},
    422: {"description": "a fence or collar that is not the farm's, a bad field, or over a limit"},
}


def etag(mob: MobRecord) -> str:
    return f'"{mob.version}"'


def public(mob: MobRecord) -> dict[str, Any]:
    return mob.model_dump(exclude={"tenant"})


def build(tenant: str, mob_id: str, props: MobProperties, settings: Settings) -> MobRecord:
    """The mob to store, within the limits on its lists (422, each named)."""
    mob = MobRecord(id=mob_id, tenant=tenant, **props.model_dump())
    if len(mob.devices) > settings.max_devices_per_mob:
        raise LimitExceeded(
            f"the mob names {len(mob.devices)} collars, more than the limit of {settings.max_devices_per_mob}",
            "max_devices_per_mob",
        )
    if len(mob.fences) > settings.max_fences_per_mob:
        raise LimitExceeded(
            f"the mob names {len(mob.fences)} fences, more than the limit of {settings.max_fences_per_mob}",
            "max_fences_per_mob",
        )
    return mob


def _props(body: MobCreate) -> MobProperties:
    return MobProperties(**body.model_dump(exclude={"id"}))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=MobPublic,
    summary="Make a mob: a group of collars with its pastures and exclusion zones",
    responses={**CHECKS, 409: {"description": "a mob with this id exists, or a collar is in another mob"}},
)
async def create_mob(body: MobCreate, tenant: Tenant, store: Store, state: State, response: Response) -> dict[str, Any]:
    mob_id = body.id or uuid.uuid4().hex[:12]
    mob = build(tenant, mob_id, _props(body), state.settings)
    try:
        stored = await store.put_mob(mob, create_only=True, max_per_tenant=state.settings.max_mobs_per_tenant)
    except VersionConflict:
        raise Problem(409, f"mob {mob_id!r} exists: PUT /mobs/{mob_id} replaces it") from None
    response.headers["ETag"] = etag(stored)
    response.headers["Location"] = f"/mobs/{mob_id}"
    return public(stored)


@router.get("", response_model=MobList, summary="List my mobs (paged)")
async def list_mobs(
    tenant: Tenant,
    store: Store,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    mobs = await store.mobs(tenant)
    nxt = offset + limit if offset + limit < len(mobs) else None
    return {"mobs": [public(m) for m in mobs[offset : offset + limit]], "total": len(mobs), "next_offset": nxt}


@router.get("/{mob_id}", response_model=MobPublic, summary="Read one mob", responses={404: CHECKS[404]})
async def get_mob(mob_id: MobIdPath, tenant: Tenant, store: Store, response: Response) -> dict[str, Any]:
    mob = await store.get_mob(tenant, mob_id)
    response.headers["ETag"] = etag(mob)
    return public(mob)


@router.put(
    "/{mob_id}",
    response_model=MobPublic,
    summary="Replace a mob (or create it with this id)",
    responses={
        201: {"model": MobPublic, "description": "created: there was no mob with this id"},
        409: CHECKS[409],
        412: {"description": "If-Match does not match the current version"},
        422: CHECKS[422],
    },
)
async def replace_mob(
    mob_id: MobIdPath,
    body: MobCreate,
    tenant: Tenant,
    store: Store,
    state: State,
    response: Response,
    if_match: IfMatch = None,  # type: ignore[assignment]
) -> dict[str, Any]:
    if body.id is not None and body.id != mob_id:
        raise Problem(422, f"the body's id {body.id!r} differs from the URL's {mob_id!r}")
    mob = build(tenant, mob_id, _props(body), state.settings)
    stored = await store.put_mob(
        mob, if_match=parse_if_match(if_match), max_per_tenant=state.settings.max_mobs_per_tenant
    )
    response.headers["ETag"] = etag(stored)
    if stored.version == 1:
        response.status_code = status.HTTP_201_CREATED
    return public(stored)


@router.delete(
    "/{mob_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a mob (its collars go back to the farm's default mob)",
    responses={404: CHECKS[404], 412: {"description": "If-Match does not match the current version"}},
)
async def delete_mob(mob_id: MobIdPath, tenant: Tenant, store: Store, if_match: IfMatch = None) -> Response:  # type: ignore[assignment]
    await store.delete_mob(tenant, mob_id, parse_if_match(if_match))
    return Response(status_code=status.HTTP_204_NO_CONTENT)

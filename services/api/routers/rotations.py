"""Rotations: a farm plans the grazing of its paddocks by setting their schedules in one request."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from fencex.errors import VersionConflict
from fencex.fence import Fence
from services.api.deps import State, Store, Tenant
from services.api.problem import Problem
from services.api.routers.fences import collection, within_bytes
from services.api.schema import FenceCollection, Rotation

router = APIRouter(prefix="/rotations", tags=["fences"])


@router.post(
    "",
    response_model=FenceCollection,
    summary="Plan a rotation: set the schedules of several paddocks at once (all or none)",
    description="Each named fence of the farm gets the schedule given (null: always active); their other "
    "properties and shapes stay. Nothing is written unless every fence exists, every If-Match holds and "
    "no fence changed meanwhile. A fence outside its schedule counts as absent: no enter, exit or escape by "
    "it; when it opens, the animals inside enter it, and when it closes, they exit it, at the scheduled time.",
    responses={
        404: {"description": "a fence that is not the farm's (the problem names it)"},
        412: {"description": "a fence's version is not its if_match (the problem names it)"},
        422: {"description": "a bad schedule (time zone, window, limits)"},
    },
)
async def plan_rotation(body: Rotation, tenant: Tenant, store: Store, state: State) -> dict[str, Any]:
    ids = list(body.fences)
    found = await store.fences_by_id(ids, tenant=tenant)
    current = {fid: f for fid, f in found.items() if f is not None and f.tenant == tenant}
    missing = [fid for fid in ids if fid not in current]
    if missing:
        raise Problem(404, f"no fence {missing[0]!r} on this farm", fences=missing)
    changed: list[Fence] = []
    for fid, step in body.fences.items():
        fence = current[fid]
        if step.if_match is not None and step.if_match != fence.version:
            raise VersionConflict(step.if_match, fence.version, f"fence {fid!r}")
        changed.append(within_bytes(fence.model_copy(update={"schedule": step.schedule}), state.settings))
    # the versions read are the writes' preconditions: a fence changed meanwhile fails them all (412)
    stored = await store.put_fences(changed, if_match={fid: f.version for fid, f in current.items()})
    return collection(stored, len(stored), None)

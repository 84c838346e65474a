"""Devices: where one is, which are inside a fence, how full each fence is; claiming a collar."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from fencex.event import rfc3339
from services.api.deps import State, Store, Tenant
from services.api.problem import Problem
from services.api.routers.fences import FenceIdPath
from services.api.schema import DeviceIdPath, DeviceInFence, DevicePublic, DeviceRegistration

router = APIRouter(tags=["devices"])


@router.get(
    "/devices/{device_id}",
    response_model=DevicePublic,
    summary="Where is this device, which fences is it in, its mob, escape, battery and silence",
    responses={404: {"description": "no fix from this device yet, or another farm's device"}},
)
async def get_device(device_id: DeviceIdPath, tenant: Tenant, store: Store, state: State) -> dict[str, Any]:
    s = await store.device_state(tenant, device_id)
    mob = await store.mob_of_device(tenant, device_id)
    state.metrics.queries.labels("device").inc()
    return {
        "device_id": device_id,
        "lon": s.lon,
        "lat": s.lat,
        "last_seen": rfc3339(s.last_ts),
        "last_arrival": rfc3339(s.seen_ms) if s.seen_ms else None,
        "fences": [
            {"fence_id": f, "since": rfc3339(m.since_ms), "dwelled": m.dwelled} for f, m in sorted(s.members.items())
        ],
        "mob": mob,
        "out": s.out,
        "pasture": s.pasture or None,
        "battery": s.battery,
        "battery_low": s.low,
        "silent": s.silent,
    }


@router.put(
    "/devices/{device_id}",
    response_model=DeviceRegistration,
    status_code=status.HTTP_200_OK,
    summary="Register a collar to my farm (one not registered to another farm)",
    description="The claim is atomic: of two farms claiming one collar at once, one gets 200 and the other 409. "
    "A claim shows nothing from before it: what an unregistered collar sent belongs to no farm, and the "
    "device starts afresh for its new farm at its first fix after the claim. Moving a registered collar "
    "to another farm is the operator's (PUT /admin/devices/{device_id}).",
    responses={
        409: {"description": "the device belongs to another farm"},
    },
)
async def claim_device(device_id: DeviceIdPath, tenant: Tenant, store: Store) -> dict[str, Any]:
    owner = await store.claim_device(device_id, tenant)
    if owner != tenant:
        raise Problem(409, "this device is registered to another farm; ask the operator to move it")
    return {"device_id": device_id, "tenant": tenant}


@router.get(
    "/fences/{fence_id}/devices",
    response_model=list[DeviceInFence],
    tags=["fences"],
    summary="Which devices are inside this fence now, and since when",
)
async def fence_devices(fence_id: FenceIdPath, tenant: Tenant, store: Store, state: State) -> list[dict[str, Any]]:
    await store.get_fence(tenant, fence_id)  # 404 unless it is the caller's
    state.metrics.queries.labels("fence_devices").inc()
    return [{"device_id": d, "since": rfc3339(since)} for d, since in await store.devices_inside(tenant, fence_id)]


@router.get(
    "/occupancy",
    response_model=dict[str, int],
    tags=["fences"],
    summary="How many devices are in each of my fences",
    responses={200: {"content": {"application/json": {"example": {"north-paddock": 12, "south": 0}}}}},
)
async def occupancy(tenant: Tenant, store: Store, state: State) -> dict[str, int]:
    ids = await store.fence_ids(tenant)
    state.metrics.queries.labels("occupancy").inc()
    return await store.occupancy(tenant, ids)

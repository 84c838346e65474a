"""Devices: where one is, which are inside a fence, how full each fence is; claiming a collar."""

from __future__ import annotations

from fastapi import APIRouter, status

from fencex.event import rfc3339
from services.api.deps import State, Store, Tenant
from services.api.problem import Problem
from services.api.routers.fences import FenceIdPath
from services.api.schema import DeviceInFence, DevicePublic, DeviceRegistration

router = APIRouter(tags=["devices"])


@router.get(
    "/devices/{device_id}",
    response_model=DevicePublic,
    summary="Where is this device, which fences is it in, when was it last seen",
    responses={404: {"description": "no fix from this device yet, or another farm's device"}},
)
async def get_device(device_id: str, tenant: Tenant, store: Store, state: State) -> dict:
    s = await store.device_state(tenant, device_id)
    state.metrics.queries.labels("device").inc()
    return {
        "device_id": device_id,
        "lon": s.lon,
        "lat": s.lat,
        "last_seen": rfc3339(s.last_ts),
        "fences": [
            {"fence_id": f, "since": rfc3339(m.since_ms), "dwelled": m.dwelled} for f, m in sorted(s.members.items())
        ],
    }


@router.put(
    "/devices/{device_id}",
    response_model=DeviceRegistration,
    status_code=status.HTTP_200_OK,
    summary="Register a collar to my farm (one not registered to another farm)",
    responses={409: {"description": "the device belongs to another farm"}},
)
async def claim_device(device_id: str, tenant: Tenant, store: Store) -> dict:
    if not device_id or len(device_id) > 128:
        raise Problem(422, "device ids are 1 to 128 characters")
    owner = await store.device_tenant(device_id)
    if owner is not None and owner != tenant:
        raise Problem(409, "this device is registered to another farm; ask the operator to move it")
    if owner is None:
        await store.register_device(device_id, tenant)
    return {"device_id": device_id, "tenant": tenant}


@router.get(
    "/fences/{fence_id}/devices",
    response_model=list[DeviceInFence],
    tags=["fences"],
    summary="Which devices are inside this fence now, and since when",
)
async def fence_devices(fence_id: FenceIdPath, tenant: Tenant, store: Store, state: State) -> list[dict]:
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
    ids = sorted(f.id for f in await store.fences(tenant))
    state.metrics.queries.labels("occupancy").inc()
    return await store.occupancy(tenant, ids)

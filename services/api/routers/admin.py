"""Operator endpoints, behind the admin key: tenants, their API keys, device registrations."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, status

from services.api.deps import Admin, Store
from services.api.problem import Problem
from services.api.schema import DeviceRegistration, TenantCreate, TenantKey

router = APIRouter(prefix="/admin", tags=["admin"])


def new_key() -> str:
    return "fx_" + secrets.token_urlsafe(24)


@router.post(
    "/tenants",
    status_code=status.HTTP_201_CREATED,
    response_model=TenantKey,
    summary="Create a tenant (a farm) and its first API key",
)
async def create_tenant(body: TenantCreate, _: Admin, store: Store) -> dict:
    if not await store.create_tenant(body.id, body.name or body.id):
        raise Problem(409, f"tenant {body.id!r} exists: POST /admin/tenants/{body.id}/keys adds a key")
    key = new_key()
    await store.add_api_key(body.id, key)
    return {"tenant": body.id, "api_key": key}


@router.post(
    "/tenants/{tenant}/keys",
    status_code=status.HTTP_201_CREATED,
    response_model=TenantKey,
    summary="Add an API key to a tenant",
)
async def add_key(tenant: str, _: Admin, store: Store) -> dict:
    if not await store.tenant_exists(tenant):
        raise Problem(404, f"no tenant {tenant!r}")
    key = new_key()
    await store.add_api_key(tenant, key)
    return {"tenant": tenant, "api_key": key}


@router.put("/devices/{device_id}", response_model=DeviceRegistration, summary="Register a device to a tenant")
async def register_device(device_id: str, body: DeviceRegistration, _: Admin, store: Store) -> dict:
    if body.device_id != device_id:
        raise Problem(422, "the body's device_id differs from the URL's")
    if not await store.tenant_exists(body.tenant):
        raise Problem(404, f"no tenant {body.tenant!r}")
    await store.register_device(device_id, body.tenant)
    return {"device_id": device_id, "tenant": body.tenant}

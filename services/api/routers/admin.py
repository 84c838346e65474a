"""Operator endpoints, behind the admin key: tenants, their API keys, device registrations."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response, status

from fencex.fence import DEFAULT_TENANT
from fencex.store.redis import key_id
from services.api.deps import Admin, State, Store
from services.api.problem import Problem
from services.api.schema import DeviceRegistration, DeviceTransfer, KeyInfo, TenantCreate, TenantKey

router = APIRouter(prefix="/admin", tags=["admin"])
TenantPath = Annotated[str, Path(min_length=1, max_length=64, description="the farm's id", examples=["hillside-farm"])]
KeyIdPath = Annotated[str, Path(min_length=1, max_length=64, description="a key's id", examples=["3f9a0c2b7d1e4a55"])]
AdminDeviceIdPath = Annotated[
    str, Path(min_length=1, max_length=128, description="the collar's id", examples=["collar-12"])
]


def new_key() -> str:
    return "fx_" + secrets.token_urlsafe(24)


async def issue_key(store: Store, tenant: str, replaces: str | None = None) -> dict[str, str]:
    """A new key for ``tenant``; with ``replaces``, the key with that id is revoked in the same step."""
    key = new_key()
    if replaces is None:
        await store.add_api_key(tenant, key)
    elif not await store.replace_api_key(tenant, replaces, key):
        raise Problem(404, f"tenant {tenant!r} has no key {replaces!r}")
    return {"tenant": tenant, "id": key_id(key), "api_key": key}


async def existing(store: Store, tenant: str) -> None:
    if not await store.tenant_exists(tenant):
        raise Problem(404, f"no tenant {tenant!r}")


@router.post(
    "/tenants",
    status_code=status.HTTP_201_CREATED,
    response_model=TenantKey,
    summary="Create a tenant (a farm) and its first API key",
    responses={409: {"description": "the tenant exists"}, 422: {"description": "a reserved or malformed id"}},
)
async def create_tenant(body: TenantCreate, _: Admin, store: Store) -> dict[str, Any]:
    if body.id == DEFAULT_TENANT:
        raise Problem(422, f"{DEFAULT_TENANT!r} is reserved: it holds devices registered to no farm")
    if not await store.create_tenant(body.id, body.name or body.id):
        raise Problem(409, f"tenant {body.id!r} exists: POST /admin/tenants/{body.id}/keys adds a key")
    return await issue_key(store, body.id)


@router.post(
    "/tenants/{tenant}/keys",
    status_code=status.HTTP_201_CREATED,
    response_model=TenantKey,
    summary="Add an API key to a tenant",
    responses={404: {"description": "no such tenant"}},
)
async def add_key(tenant: TenantPath, _: Admin, store: Store) -> dict[str, Any]:
    await existing(store, tenant)
    return await issue_key(store, tenant)


@router.get(
    "/tenants/{tenant}/keys",
    response_model=list[KeyInfo],
    summary="List a tenant's API keys (their ids and creation times, never the keys)",
    responses={404: {"description": "no such tenant"}},
)
async def list_keys(tenant: TenantPath, _: Admin, store: Store) -> list[dict[str, Any]]:
    await existing(store, tenant)
    return await store.api_keys(tenant)


@router.delete(
    "/tenants/{tenant}/keys/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke an API key",
    description="Refused at once by this API process; other processes may accept it for up to "
    "FENCEX_KEY_CACHE_S seconds.",
    responses={404: {"description": "no such tenant or key"}},
)
async def revoke_key(tenant: TenantPath, key_id: KeyIdPath, _: Admin, store: Store, state: State) -> Response:
    if not await store.replace_api_key(tenant, key_id, None):
        raise Problem(404, f"tenant {tenant!r} has no key {key_id!r}")
    state.forget_keys()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/tenants/{tenant}/keys/{key_id}/rotate",
    status_code=status.HTTP_201_CREATED,
    response_model=TenantKey,
    summary="Rotate an API key: a new key, and the old one revoked, in one step",
    responses={404: {"description": "no such tenant or key"}},
)
async def rotate_key(tenant: TenantPath, key_id: KeyIdPath, _: Admin, store: Store, state: State) -> dict[str, Any]:
    issued = await issue_key(store, tenant, replaces=key_id)
    state.forget_keys()
    return issued


@router.put(
    "/devices/{device_id}",
    response_model=DeviceRegistration,
    summary="Register a device to a tenant, or move it from one to another",
    responses={404: {"description": "no such tenant"}},
)
async def register_device(device_id: AdminDeviceIdPath, body: DeviceTransfer, _: Admin, store: Store) -> dict[str, Any]:
    await existing(store, body.tenant)
    await store.register_device(device_id, body.tenant)
    return {"device_id": device_id, "tenant": body.tenant}

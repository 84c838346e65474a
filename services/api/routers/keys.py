"""A farm's own API keys: list them, and rotate the one in use."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, status

from fencex.store.redis import key_id
from services.api.auth import bearer_key
from services.api.deps import State, Store, Tenant
from services.api.routers.admin import issue_key
from services.api.schema import KeyInfo, TenantKey

router = APIRouter(prefix="/keys", tags=["keys"])


@router.get("", response_model=list[KeyInfo], summary="My farm's API keys (ids and creation times)")
async def my_keys(tenant: Tenant, store: Store) -> list[dict[str, Any]]:
    return await store.api_keys(tenant)


@router.post(
    "/rotate",
    status_code=status.HTTP_201_CREATED,
    response_model=TenantKey,
    summary="Rotate the key this request carries: a new key, and this one revoked, in one step",
    responses={404: {"description": "the key was revoked meanwhile"}},
)
async def rotate_my_key(request: Request, tenant: Tenant, store: Store, state: State) -> dict[str, Any]:
    key = bearer_key(request.headers.get("authorization"))
    assert key is not None  # authenticated
    issued = await issue_key(store, tenant, replaces=key_id(key))
    state.forget_keys()
    return issued

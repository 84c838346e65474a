"""FastAPI dependencies: the running state, the caller's tenant, the admin check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fencex.store.redis import RedisStore
from services.api.problem import Problem
from services.api.state import ApiState

# Dependencies are async: FastAPI runs plain-def ones in a thread pool, a thread hop per request.
bearer = HTTPBearer(auto_error=False, description="an API key: Authorization: Bearer <key>")


async def get_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.fencex
    if not state.ready:
        raise Problem(503, "the API is starting: waiting for redis")
    return state


State = Annotated[ApiState, Depends(get_state)]


async def get_store(state: State) -> RedisStore:
    return state.store


Store = Annotated[RedisStore, Depends(get_store)]


async def get_tenant(state: State, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise Problem(401, "send an API key: Authorization: Bearer <key>")
    admin = state.settings.admin_key.get_secret_value()
    if admin and hmac.compare_digest(creds.credentials, admin):
        raise Problem(401, "the admin key manages tenants; use a tenant's key for farm data")
    tenant = await state.tenant_for_key(creds.credentials)
    if tenant is None:
        raise Problem(401, "unknown API key")
    return tenant


Tenant = Annotated[str, Depends(get_tenant)]


async def require_admin(state: State, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    admin = state.settings.admin_key.get_secret_value()
    if not admin:
        raise Problem(403, "admin endpoints are off: set FENCEX_ADMIN_KEY")
    if creds is None or not hmac.compare_digest(creds.credentials, admin):
        raise Problem(401, "this needs the admin key")


Admin = Annotated[None, Depends(require_admin)]

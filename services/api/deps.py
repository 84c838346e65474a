"""FastAPI dependencies: the running state, the caller's tenant, the admin check.

The edge (``services/api/fastpath.py``) authenticates every request before its body is read and
leaves the caller in the ASGI scope; these dependencies take it from there (and authenticate
with the same :func:`~services.api.auth.authenticate` when the app runs without the edge).
The ``bearer`` scheme is declared for the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fencex.store.redis import RedisStore
from services.api.auth import SCOPE_KEY, authenticate
from services.api.problem import Problem
from services.api.state import ApiState

# Dependencies are async: FastAPI runs plain-def ones in a thread pool, a thread hop per request.
bearer = HTTPBearer(auto_error=False, description="an API key: Authorization: Bearer <key>")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


async def get_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.fencex
    if not state.ready:
        raise Problem(503, "the API is starting: waiting for redis", headers={"Retry-After": "2"})
    return state


State = Annotated[ApiState, Depends(get_state)]


async def get_store(state: State) -> RedisStore:
    return state.store


Store = Annotated[RedisStore, Depends(get_store)]


async def get_tenant(request: Request, _: Credentials) -> str:
    caller = request.scope.get(SCOPE_KEY)
    if caller is not None and caller[0] == "tenant":
        return str(caller[1])
    # no edge in front (some tests): authenticate here, the same way
    return await authenticate(request.app.state.fencex, request.headers.get("authorization"), "tenant")


Tenant = Annotated[str, Depends(get_tenant)]


async def require_admin(request: Request, _: Credentials) -> None:
    caller = request.scope.get(SCOPE_KEY)
    if caller is None or caller[0] != "admin":
        await authenticate(request.app.state.fencex, request.headers.get("authorization"), "admin")


Admin = Annotated[None, Depends(require_admin)]

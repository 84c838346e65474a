"""Who is calling: the one ``authenticate()`` that the ASGI edge, the fast path and FastAPI's
dependencies all use, and the per-key request rate limit.

A request is authenticated once, by the edge (``services/api/fastpath.py``), before its body is
read; FastAPI's dependencies (``services/api/deps.py``) take the result from the ASGI scope, and
call :func:`authenticate` themselves only when the app runs without the edge.
"""

from __future__ import annotations

import hmac
import math
import time
from typing import TYPE_CHECKING, Literal

from fencex.errors import Unavailable
from services.api.problem import Problem

if TYPE_CHECKING:
    from services.api.state import ApiState

Role = Literal["tenant", "admin"]
SCOPE_KEY = "fencex.caller"  # where the edge leaves the caller: (role, tenant id or "" for the admin)
RETRY_AFTER = {"Retry-After": "2"}
ASK_FOR_KEY = "send an API key: Authorization: Bearer <key>"


class RateLimiter:
    """A token bucket per API key, in this process: ``rate`` requests a second, bursts of ``burst``.

    ``rate`` 0 turns it off. Buckets of keys not seen for a minute are forgotten, so the table
    stays as small as the set of keys in use.
    """

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, last refill]
        self._swept = time.monotonic()

    def acquire(self, key: str) -> float:
        """0.0 if the request may go ahead, else the seconds until it could."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            if now - self._swept > 60.0:
                self._sweep(now)
            bucket = self._buckets[key] = [self.burst, now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate

    def _sweep(self, now: float) -> None:
        self._swept = now
        for key in [k for k, b in self._buckets.items() if now - b[1] > 60.0]:
            del self._buckets[key]


def bearer_key(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, or None."""
    if not authorization or authorization[:7].lower() != "bearer ":
        return None
    return authorization[7:].strip() or None


def _same(a: str, b: bytes) -> bool:
    # compare_digest refuses non-ASCII str: compare bytes (headers arrive as latin-1)
    return hmac.compare_digest(a.encode("latin-1", "replace"), b)


async def authenticate(state: ApiState, authorization: str | None, role: Role = "tenant") -> str:
    """The caller's tenant id (``""`` for the admin), or a :class:`Problem`: 401 without a valid
    key, 403 when the admin endpoints are off, 429 beyond the key's rate, 503 while Redis is
    unreachable or the API is starting (with ``Retry-After``)."""
    if not state.ready:
        raise Problem(503, "the API is starting: waiting for redis", headers=RETRY_AFTER)
    key = bearer_key(authorization)
    admin = state.admin_key
    if role == "admin":
        if not admin:
            raise Problem(403, "admin endpoints are off: set FENCEX_ADMIN_KEY")
        if key is None or not _same(key, admin):
            raise Problem(401, "this needs the admin key", headers={"WWW-Authenticate": "Bearer"})
        tenant = ""
    else:
        if key is None:
            raise Problem(401, ASK_FOR_KEY, headers={"WWW-Authenticate": "Bearer"})
        if admin and _same(key, admin):
            raise Problem(401, "the admin key manages tenants; use a tenant's key for farm data")
        try:
            found = await state.tenant_for_key(key)
        except Unavailable as exc:
            raise Problem(503, f"a backing service is unavailable: {exc}", headers=RETRY_AFTER) from None
        if found is None:
            raise Problem(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
        tenant = found
    wait = state.limiter.acquire(key)
    if wait:
        raise Problem(
            429,
            f"this API key is over its rate of {state.limiter.rate:g} requests a second",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
            limit="rate_limit_per_s",
        )
    return tenant

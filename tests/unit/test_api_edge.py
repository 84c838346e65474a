"""The API's edge without servers: one authenticate() for the fast path and FastAPI (they answer
a table of requests identically), the body limit counted as the body streams in, the key checked
before the body is read, rate limits per key, metric labels from closed sets."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from fencex.errors import StoreUnavailable
from fencex.index import FenceIndex
from services.api.app import create_app
from services.api.auth import RateLimiter
from services.api.fastpath import ApiEdge
from services.api.settings import Settings
from tests.unit.factory import fence

ADMIN = "admin-key-for-tests"
KEYS = {"key-a": "farm", "key-b": "other"}


class Redis:
    """Just enough of the store for authentication: a key table that can go down."""

    def __init__(self) -> None:
        self.down = False
        self.lookups = 0

    async def tenant_for_key(self, key: str) -> str | None:
        self.lookups += 1
        if self.down:
            raise StoreUnavailable("redis does not answer: connection refused")
        return KEYS.get(key)


def build(**settings: Any) -> tuple[ApiEdge, ApiEdge, Redis]:
    """The app twice over one state: with the fast path, and with FastAPI answering everything."""
    edge = create_app(Settings(admin_key=ADMIN, key_cache_s=0, **settings))
    redis = Redis()
    edge.state.store.tenant_for_key = redis.tenant_for_key  # type: ignore[method-assign]
    edge.state.follower.index = FenceIndex([fence("north", name="North", tags=["sheep"])])
    edge.state.ready = True
    return edge, ApiEdge(edge.app, edge.state, fast_path=False), redis


async def call(app: Any, method: str, url: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        return await client.request(method, url, **kw)


def same(a: httpx.Response, b: httpx.Response) -> None:
    assert (a.status_code, a.content) == (b.status_code, b.content)
    assert sorted(a.headers.multi_items()) == sorted(b.headers.multi_items())


AUTH_CASES = [
    None,
    "",
    "Bearer",
    "Bearer ",
    "Basic a2V5LWE=",
    "Bearer key-a",
    "bearer key-a",
    "BEARER   key-a  ",
    "Bearer key-b",
    f"Bearer {ADMIN}",
    f"Bearer {ADMIN}x",
    "Bearer unknown",
    "Bearer k\u00e9y-\u00e4",  # not ASCII: a constant-time compare of str would raise
]
QUERIES = [
    "lon=17.605&lat=59.805",
    "lon=17.605&lat=59.805&lat=1",
    "lon=1&lon=x&lat=2",
    "lon=17.605",
    "lat=59.805",
    "",
    "lon=&lat=1",
    "lon=abc&lat=1",
    "lon=1e2&lat=1",
    "lon=+5&lat=1",
    "lon=%205&lat=1",
    "lon=nan&lat=1",
    "lon=inf&lat=1",
    "lon=-180&lat=-90",
    "lon=180.0000001&lat=0",
    "lon=17.6&lat=95",
    "lon=0.5&lat=.5",
    "lon=17.605&lat=59.805&other=1",
]


@pytest.mark.parametrize("auth", AUTH_CASES)
def test_fast_path_and_fastapi_answer_auth_alike(auth):
    fast, slow, _ = build()
    headers = {} if auth is None else {"Authorization": auth.encode("latin-1")}
    a = asyncio.run(call(fast, "GET", "/query/fences?lon=17.605&lat=59.805", headers=headers))
    b = asyncio.run(call(slow, "GET", "/query/fences?lon=17.605&lat=59.805", headers=headers))
    same(a, b)
    if auth and auth.strip().lower().endswith("key-a"):
        assert a.status_code == 200 and [f["id"] for f in a.json()["fences"]] == ["north"]
    elif auth == "Bearer key-b":
        assert a.status_code == 200 and a.json()["fences"] == []  # another farm's key: not its fence
    else:
        assert a.status_code == 401 and a.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("query", QUERIES)
def test_fast_path_and_fastapi_answer_queries_alike(query):
    fast, slow, _ = build()
    headers = {"Authorization": "Bearer key-a"}
    a = asyncio.run(call(fast, "GET", f"/query/fences?{query}", headers=headers))
    b = asyncio.run(call(slow, "GET", f"/query/fences?{query}", headers=headers))
    same(a, b)
    assert a.status_code in (200, 422)


def test_fast_path_and_fastapi_answer_alike_while_starting_or_redis_down():
    fast, slow, redis = build()
    headers = {"Authorization": "Bearer key-a"}
    fast.state.ready = False
    a = asyncio.run(call(fast, "GET", "/query/fences?lon=1&lat=2", headers=headers))
    b = asyncio.run(call(slow, "GET", "/query/fences?lon=1&lat=2", headers=headers))
    same(a, b)
    assert a.status_code == 503 and a.headers["retry-after"]
    fast.state.ready = True
    redis.down = True
    a = asyncio.run(call(fast, "GET", "/query/fences?lon=1&lat=2", headers=headers))
    b = asyncio.run(call(slow, "GET", "/query/fences?lon=1&lat=2", headers=headers))
    same(a, b)
    assert a.status_code == 503 and a.headers["retry-after"] and "redis" in a.json()["detail"]


def test_fast_path_and_fastapi_answer_rate_limits_alike():
    fast, slow, _ = build()
    headers = {"Authorization": "Bearer key-a"}
    answers = []
    for app in (fast, slow):
        fast.state.limiter = RateLimiter(rate=0.5, burst=1)
        first = asyncio.run(call(app, "GET", "/query/fences?lon=1&lat=2", headers=headers))
        answers.append(asyncio.run(call(app, "GET", "/query/fences?lon=1&lat=2", headers=headers)))
        assert first.status_code == 200
    same(*answers)
    assert answers[0].status_code == 429 and answers[0].headers["retry-after"] == "2"
    assert answers[0].json()["limit"] == "rate_limit_per_s"


def test_rate_limit_is_per_key_and_refills():
    limiter = RateLimiter(rate=10.0, burst=2)
    assert limiter.acquire("a") == 0.0 and limiter.acquire("a") == 0.0
    wait = limiter.acquire("a")
    assert 0.0 < wait <= 0.1
    assert limiter.acquire("b") == 0.0  # another key has its own bucket
    assert RateLimiter(rate=0, burst=0).acquire("a") == 0.0  # 0: off


async def chunks(n: int, size: int):
    for _ in range(n):
        yield b"x" * size


def test_chunked_body_over_the_limit_is_refused():
    edge, _, _ = build(max_body_bytes=1000)
    r = asyncio.run(
        call(edge, "POST", "/locations", content=chunks(50, 100), headers={"Authorization": "Bearer key-a"})
    )
    assert "content-length" not in r.request.headers  # streamed: only the counting can catch it
    assert r.status_code == 413 and r.json()["limit"] == "max_body_bytes"
    ok = asyncio.run(
        call(edge, "POST", "/locations", content=chunks(5, 100), headers={"Authorization": "Bearer key-a"})
    )
    assert ok.status_code == 422  # under the limit: read, and refused for what it says (not JSON)


def test_key_is_checked_before_the_body_is_read():
    edge, _, _ = build()
    read = []

    async def body():
        read.append(1)
        yield b"{}"

    r = asyncio.run(call(edge, "POST", "/fences", content=body()))
    assert r.status_code == 401 and not read
    r = asyncio.run(call(edge, "POST", "/admin/tenants", content=body(), headers={"Authorization": "Bearer key-a"}))
    assert r.status_code == 401 and not read


def test_metric_labels_come_from_closed_sets():
    edge, _, _ = build()
    for i in range(30):
        asyncio.run(call(edge, f"M{i}", f"/made-up/{i}"))
        asyncio.run(call(edge, f"X{i}", "/fences"))
    asyncio.run(call(edge, "GET", "/fences/abc", headers={"Authorization": "Bearer nope"}))
    labels = {
        (s.labels["route"], s.labels["method"])
        for m in edge.state.registry.collect()
        if m.name == "fencex_http_requests"
        for s in m.samples
        if s.value
    }
    assert labels == {("unmatched", "other"), ("/fences/{fence_id}", "GET")}

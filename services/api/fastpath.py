"""The edge: the ASGI layer in front of FastAPI. For every request it finds the route, checks
the caller's key (before any body is read), counts the body as it streams in against
``max_body_bytes``, and records the request's metrics with labels from closed sets; and it
answers ``GET /query/fences`` directly.

The point query is the API's hottest route (the FenceX pull throughput). Through FastAPI's
stack it cost about 0.7 ms of Python per request here; answered directly in ASGI it costs a
fraction of that. Same contract: the same :func:`~services.api.auth.authenticate`, and any
request it would refuse for its parameters is handed to FastAPI, so the errors are FastAPI's
own (a test compares the two on a table of requests). FastAPI still documents the route.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match

from services.api.auth import SCOPE_KEY, Role, authenticate
from services.api.deps import get_tenant, require_admin
from services.api.problem import Problem
from services.api.state import ApiState

POINT_ROUTE = "/query/fences"
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
PLAIN_NUMBER = re.compile(r"-?[0-9]{1,3}(?:\.[0-9]{1,20})?")  # what the fast path parses itself
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def method_label(method: str) -> str:
    """The method as a metric label: one of a closed set."""
    return method if method in METHODS else "other"


def role_of(route: BaseRoute) -> Role | None:
    """Which key a route wants: a tenant's, the admin's, or none (from its dependencies)."""

    def calls(d: Dependant) -> set[Any]:
        return {d.call} | {c for sub in d.dependencies for c in calls(sub)}

    if not isinstance(route, APIRoute):
        return None
    found = calls(route.dependant)
    if require_admin in found:
        return "admin"
    if get_tenant in found:
        return "tenant"
    return None


def flat_routes(routes: list[BaseRoute]) -> list[BaseRoute]:
    """The app's route table, routers included (they are mounted without a prefix of their own)."""
    out: list[BaseRoute] = []
    for r in routes:
        inner = getattr(r, "original_router", None)  # FastAPI's included router
        out.extend(flat_routes(inner.routes) if inner is not None else [r])
    return out


class ApiEdge:
    """Outermost ASGI app: routing for labels and keys, the body limit, the direct point query."""

    def __init__(self, app: FastAPI, state: ApiState, fast_path: bool = True) -> None:
        self.app = app
        self.state = state
        self.fast_path = fast_path
        m = state.metrics
        self._point_ok = m.requests.labels(POINT_ROUTE, "GET", "200")
        self._point_duration = m.duration.labels(POINT_ROUTE)
        self._point_queries = m.queries.labels("point")
        self._max_body = state.settings.max_body_bytes
        self.routes = [(r, role_of(r)) for r in flat_routes(app.routes)]

    def match(self, scope: dict[str, Any]) -> tuple[str, Role | None, set[str]]:
        """The route template (a metric label; "unmatched" when none), the role it needs, and
        when only the method is wrong, the methods the path allows."""
        allowed: set[str] = set()
        partial = None  # the first route whose path matches: its template's methods are allowed
        for route, role in self.routes:
            found = route.matches(scope)[0]
            if found is Match.FULL:
                return getattr(route, "path", "unmatched"), role, allowed
            if found is Match.PARTIAL and getattr(route, "path", None) in (None, partial):
                continue
            if found is Match.PARTIAL and partial is None:
                partial = getattr(route, "path", None)
        if partial is not None:
            for route, _ in self.routes:
                if getattr(route, "path", None) == partial:
                    allowed |= getattr(route, "methods", None) or set()
        return "unmatched", None, allowed

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        if self.fast_path and scope["path"] == POINT_ROUTE and scope["method"] == "GET":
            self.point_done(await self._point(scope, receive, send), started)
            return
        route, role, allowed = self.match(scope)
        if route == "unmatched" and allowed:
            allow = ", ".join(sorted(allowed))
            problem = Problem(405, f"{scope['method']} is not allowed here; try {allow}", headers={"Allow": allow})
            status = await _answer(send, problem, scope["path"])
        else:
            status = await self._handle(scope, receive, send, role)
        self.state.metrics.requests.labels(route, method_label(scope["method"]), str(status)).inc()
        self.state.metrics.duration.labels(route).observe(time.perf_counter() - started)

    async def _handle(self, scope: dict[str, Any], receive: Receive, send: Send, role: Role | None) -> int:
        length = _header(scope, b"content-length")
        has_body = (length is not None and length != "0") or _header(scope, b"transfer-encoding") is not None
        # An answer given before the body is read ends the connection: the unread body is not a next request.
        unread = {"Connection": "close"} if has_body else None
        if role is not None:
            try:
                scope[SCOPE_KEY] = (role, await authenticate(self.state, _header(scope, b"authorization"), role))
            except Problem as p:
                return await _answer(send, p, scope["path"], unread)
        if role is None and has_body:  # no route without a key takes a body: answer, and leave it unread
            return await self.forward(scope, receive, send, close=True)
        if length is not None and length.isdigit() and int(length) > self._max_body:
            return await _answer(send, self._too_large(f"the body is {int(length)} bytes"), scope["path"], unread)
        if has_body:
            chunks: list[bytes] = []
            size = 0
            while True:  # count what arrives: a chunked body has no Content-Length to trust
                message = await receive()
                if message["type"] != "http.request":
                    return 499  # the client went away
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self._max_body:
                    problem = self._too_large(f"the body is over {size} bytes")
                    return await _answer(send, problem, scope["path"], unread)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            receive = _replay(b"".join(chunks), receive)
        return await self.forward(scope, receive, send)

    def _too_large(self, what: str) -> Problem:
        return Problem(413, f"{what}; the limit is {self._max_body}", limit="max_body_bytes")

    async def forward(self, scope: dict[str, Any], receive: Receive, send: Send, close: bool = False) -> int:
        """Hand the request to FastAPI; the status it answered (500 if it sent none)."""
        status = 500

        async def send_with_status(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if close:
                    message["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
            await send(message)

        await self.app(scope, receive, send_with_status)
        return status

    async def point_answer(self, authorization: str | None, query: str) -> bytes | Problem | str:
        """The point query, whatever the interface: the JSON body of the answer (200), the problem
        with the caller's key, or the caller's tenant when the parameters are not plain numbers in
        range (FastAPI then answers, in its own words)."""
        state = self.state
        try:
            tenant = await authenticate(state, authorization, "tenant")
        except Problem as p:
            return p
        params = dict(parse_qsl(query, keep_blank_values=True))
        lon, lat = _coordinate(params.get("lon"), 180.0), _coordinate(params.get("lat"), 90.0)
        if lon is None or lat is None:
            return tenant
        hits = state.follower.index.containing(tenant, lon, lat)
        self._point_queries.inc()
        return orjson.dumps(
            {
                "lon": lon,
                "lat": lat,
                "fences": [{"id": f.id, "name": f.name, "tags": f.tags, "version": f.version} for f in hits],
            }
        )

    def point_done(self, status: int, started: float) -> None:
        """Count one point query: its status and its time since ``started`` (perf_counter)."""
        if status == 200:
            self._point_ok.inc()
        else:
            self.state.metrics.requests.labels(POINT_ROUTE, "GET", str(status)).inc()
        self._point_duration.observe(time.perf_counter() - started)

    async def _point(self, scope: dict[str, Any], receive: Receive, send: Send) -> int:
        found = await self.point_answer(_header(scope, b"authorization"), scope["query_string"].decode("latin-1"))
        if isinstance(found, Problem):
            return await _answer(send, found, scope["path"])
        if isinstance(found, str):
            scope[SCOPE_KEY] = ("tenant", found)
            return await self.forward(scope, receive, send)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(found)).encode()), (b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": found})
        return 200


def _coordinate(raw: str | None, limit: float) -> float | None:
    """A plain decimal within ±limit, or None (then FastAPI parses it, or refuses it)."""
    if raw is None or not PLAIN_NUMBER.fullmatch(raw):
        return None
    v = float(raw)
    return v if -limit <= v <= limit else None


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return str(v.decode("latin-1"))
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands over the body read already, then the client's own messages."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(send: Send, problem: Problem, instance: str, extra: dict[str, str] | None = None) -> int:
    if extra:
        problem.headers = {**(problem.headers or {}), **extra}
    status, body, headers = problem.asgi(instance)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return status

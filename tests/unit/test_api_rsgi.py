"""The API over granian's RSGI interface without a server (FENCEX_INTERFACE=rsgi): a fake RSGI
request object that behaves as granian's does, and the same tables of requests as the ASGI edge's
tests answered identically (status, headers, body) through RSGI and through ASGI; request bodies
streamed and counted, the key checked before the body, streamed responses and the event stream,
disconnects, and the lifespan run from the RSGI hooks."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import httpx
import pytest
from granian.rsgi import ProtocolClosed

from services.api.hub import entry_key
from services.api.rsgi import Exchange, RsgiEdge
from tests.unit.test_api_edge import ADMIN, AUTH_CASES, QUERIES, build

Answer = tuple[int, list[tuple[str, str]], bytes]


def visible(value: bytes) -> bool:
    """What granian's RSGIHeaders hands over (hyper's HeaderValue.to_str): visible ASCII and tab."""
    return all(32 <= b < 127 or b == 9 for b in value)


class Headers:
    """granian's RSGIHeaders: lower-case names; a value that is not visible ASCII is left out."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.pairs = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw if visible(v)]

    def get(self, key: str, default: Any = None) -> Any:
        return next((v for k, v in self.pairs if k == key), default)

    def items(self) -> list[tuple[str, str]]:
        return list(self.pairs)

    def __contains__(self, key: str) -> bool:
        return any(k == key for k, _ in self.pairs)


class Scope:
    """granian's RSGI HTTP scope: the path percent-decoded, the query string as sent."""

    proto = "http"
    rsgi_version = "1.6"
    http_version = "1.1"
    server = "127.0.0.1:8000"
    client = "127.0.0.1:50123"
    scheme = "http"
    authority = None

    def __init__(self, method: str, target: str, headers: list[tuple[bytes, bytes]]) -> None:
        path, _, self.query_string = target.partition("?")
        self.method = method
        self.path = httpx.URL(path).path  # decoded, as granian's percent_decode
        self.headers = Headers(headers)


class Transport:
    def __init__(self, proto: Proto) -> None:
        self.proto = proto

    async def send_bytes(self, data: bytes) -> None:
        if self.proto.gone.is_set():
            raise ProtocolClosed("RSGI transport is closed")
        self.proto.chunks.append(bytes(data))
        self.proto.arrived.set()


class Proto:
    """granian's RSGI HTTP protocol object, in memory: the request body in chunks (``__aiter__``
    yields each, then ``b""``, then stops), ``client_disconnect`` until ``gone`` is set, and the
    answer recorded (granian takes one: a second would be a bug here, so it fails the test)."""

    def __init__(self, body: list[bytes] | None = None) -> None:
        self.body = list(body or [])
        self.read = 0  # chunks handed to the app
        self.gone = asyncio.Event()
        self.answers: list[tuple[int, list[tuple[str, str]]]] = []
        self.chunks: list[bytes] = []
        self.arrived = asyncio.Event()
        self.streamed = False
        self._ended = False

    def __aiter__(self) -> Proto:
        return self

    async def __anext__(self) -> bytes:
        await asyncio.sleep(0)
        if self.gone.is_set():
            raise ProtocolClosed("RSGI transport is closed")
        if self.read < len(self.body):
            self.read += 1
            return self.body[self.read - 1]
        if self._ended:
            raise StopAsyncIteration
        self._ended = True
        return b""

    async def client_disconnect(self) -> None:
        await self.gone.wait()

    def _answer(self, status: int, headers: list[tuple[str, str]]) -> None:
        assert not self.answers, "answered twice"
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in headers)
        self.answers.append((status, list(headers)))

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self._answer(status, headers)
        self.chunks.append(bytes(body))

    def response_stream(self, status: int, headers: list[tuple[str, str]]) -> Transport:
        self._answer(status, headers)
        self.streamed = True
        return Transport(self)

    def answer(self) -> Answer:
        ((status, headers),) = self.answers
        return status, sorted((k.lower(), v) for k, v in headers), b"".join(self.chunks)


def request(rsgi: RsgiEdge, method: str, target: str, headers: dict[str, Any] | None = None, body=()) -> Proto:
    raw = [(k.lower().encode(), v if isinstance(v, bytes) else v.encode()) for k, v in (headers or {}).items()]
    body = list(body)
    if body:
        raw.append((b"transfer-encoding", b"chunked"))
    proto = Proto(body)

    async def run() -> None:
        await asyncio.wait_for(rsgi.__rsgi__(Scope(method, target, raw), proto), 10)  # type: ignore[arg-type]

    asyncio.run(run())
    return proto


def over_asgi(edge: Any, method: str, target: str, headers: dict[str, Any] | None = None, body=()) -> Answer:
    """The same request through the ASGI edge as granian's ASGI side hands it over (the headers it
    would hand to RSGI), and the answer as sent (no client decoding it)."""
    raw = [(k.lower().encode(), v if isinstance(v, bytes) else v.encode()) for k, v in (headers or {}).items()]
    raw = [(k, v) for k, v in raw if visible(v)]
    chunks = [*body, b""]
    if body:
        raw.append((b"transfer-encoding", b"chunked"))
    path, _, query = target.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50123),
        "scheme": "http",
        "method": method,
        "root_path": "",
        "path": httpx.URL(path).path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": raw,
    }
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        done = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if chunks:
                chunk = chunks.pop(0)
                return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        await asyncio.wait_for(edge(scope, receive, send), 10)

    asyncio.run(run())
    start, *bodies = sent
    headers_out = sorted((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in start["headers"])
    return start["status"], headers_out, b"".join(m.get("body", b"") for m in bodies)


def pair(**settings: Any):
    edge, _, redis = build(**settings)
    return edge, RsgiEdge(edge), redis


def counts(edge: Any) -> dict[tuple[str, ...], float]:
    return {
        tuple(s.labels.values()): s.value
        for m in edge.state.registry.collect()
        if m.name in ("fencex_http_requests", "fencex_queries")
        for s in m.samples
        if s.name.endswith("_total") and s.value
    }


def auth(value: str | None) -> dict[str, Any]:
    return {} if value is None else {"Authorization": value.encode("latin-1")}


@pytest.mark.parametrize("key", AUTH_CASES)
def test_the_point_query_answers_keys_as_over_asgi(key):
    edge, rsgi, _ = pair()
    url = "/query/fences?lon=17.605&lat=59.805"
    got = request(rsgi, "GET", url, auth(key)).answer()
    assert got == over_asgi(edge, "GET", url, auth(key))
    if key is not None and not visible(key.encode("latin-1")):
        assert got[0] == 401  # granian hides the header from RSGI: no key, where ASGI saw an unknown one


@pytest.mark.parametrize("query", QUERIES)
def test_the_point_query_answers_parameters_as_over_asgi(query):
    edge, rsgi, _ = pair()
    headers = {"Authorization": "Bearer key-a"}
    got = request(rsgi, "GET", f"/query/fences?{query}", headers).answer()
    assert got == over_asgi(edge, "GET", f"/query/fences?{query}", headers)
    assert got[0] in (200, 422)


def test_the_point_query_counts_its_metrics_as_over_asgi():
    results = []
    for interface in ("rsgi", "asgi"):
        edge, rsgi, _ = pair()
        for key, query in [("key-a", "lon=17.605&lat=59.805"), ("nope", "lon=1&lat=2"), ("key-a", "lon=x&lat=1")]:
            headers = {"Authorization": f"Bearer {key}"}
            if interface == "rsgi":
                request(rsgi, "GET", f"/query/fences?{query}", headers)
            else:
                over_asgi(edge, "GET", f"/query/fences?{query}", headers)
        results.append(counts(edge))
    assert results[0] == results[1]
    assert results[0][("/query/fences", "GET", "200")] == 1 and results[0][("point",)] == 1
    assert results[0][("/query/fences", "GET", "401")] == 1 and results[0][("/query/fences", "GET", "422")] == 1


def test_the_point_query_answers_as_over_asgi_while_starting_or_redis_down_or_over_rate():
    edge, rsgi, redis = pair()
    headers = {"Authorization": "Bearer key-a"}
    url = "/query/fences?lon=1&lat=2"
    edge.state.ready = False
    assert request(rsgi, "GET", url, headers).answer() == over_asgi(edge, "GET", url, headers)
    edge.state.ready = True
    redis.down = True
    got = request(rsgi, "GET", url, headers).answer()
    assert got == over_asgi(edge, "GET", url, headers) and got[0] == 503
    redis.down = False
    from services.api.auth import RateLimiter

    answers = []
    for via in ("rsgi", "asgi"):
        edge.state.limiter = RateLimiter(rate=0.5, burst=1)
        first = request(rsgi, "GET", url, headers).answer() if via == "rsgi" else over_asgi(edge, "GET", url, headers)
        assert first[0] == 200
        answers.append(
            request(rsgi, "GET", url, headers).answer() if via == "rsgi" else over_asgi(edge, "GET", url, headers)
        )
    assert answers[0] == answers[1] and answers[0][0] == 429


KEY = {"Authorization": "Bearer key-a"}
OTHER_REQUESTS = [  # method, target, headers, body chunks: everything the point query is not
    ("GET", "/healthz", {}, ()),
    ("GET", "/query/fences?lon=1&lat=2", {"Authorization": f"Bearer {ADMIN}"}, ()),
    ("POST", "/query/fences?lon=1&lat=2", KEY, ()),  # 405 with Allow
    ("DELETE", "/fences", KEY, ()),
    ("GET", "/made-up/path", {}, ()),
    ("BREW", "/fences", {}, ()),
    ("GET", "/fences/abc", {"Authorization": "Bearer nope"}, ()),
    ("GET", "/fences/caf%C3%A9%20x", {"Authorization": "Bearer nope"}, ()),  # the path decoded, as ASGI's
    ("GET", "/admin/tenants", KEY, ()),
    ("POST", "/locations", KEY, (b"not json",)),  # read, and refused for what it says
    ("POST", "/locations", KEY, [b"x" * 100] * 50),  # streamed over max_body_bytes (1000 here): 413
    ("POST", "/locations", {}, (b"{}",)),  # no key: 401 before the body is read
    ("POST", "/query/points", KEY, (b"[1, 2",)),
    ("GET", "/app/config.json", {}, ()),
    ("GET", "/app/", {}, ()),  # the web app's page: a file response, streamed in chunks
    ("GET", "/app/", {"Accept-Encoding": "gzip"}, ()),  # ... through GZipMiddleware
    ("HEAD", "/healthz", {}, ()),
    ("HEAD", "/app/", {}, ()),  # the file's headers, and no body
]


@pytest.mark.parametrize(("method", "target", "headers", "body"), OTHER_REQUESTS)
def test_every_other_request_is_answered_as_over_asgi(method, target, headers, body):
    edge, rsgi, _ = pair(max_body_bytes=1000)
    proto = request(rsgi, method, target, headers, body)
    got = proto.answer()
    want = over_asgi(edge, method, target, headers, body)
    assert got == want
    if target == "/app/" and "Accept-Encoding" in headers:
        assert dict(got[1])["content-encoding"] == "gzip" and gzip.decompress(got[2]).startswith(b"<!")


def test_other_requests_count_their_metrics_as_over_asgi():
    results = []
    for via in ("rsgi", "asgi"):
        edge, rsgi, _ = pair(max_body_bytes=1000)
        for method, target, headers, body in OTHER_REQUESTS:
            if via == "rsgi":
                request(rsgi, method, target, headers, body)
            else:
                over_asgi(edge, method, target, headers, body)
        results.append(counts(edge))
    assert results[0] == results[1]
    assert results[0][("/locations", "POST", "413")] == 1


def test_a_streamed_body_over_the_limit_is_not_read_to_its_end():
    _, rsgi, _ = pair(max_body_bytes=1000)
    proto = request(rsgi, "POST", "/locations", KEY, [b"x" * 100] * 50)
    assert proto.answer()[0] == 413
    assert 10 <= proto.read < 50  # counted as it came, and refused once past the limit
    assert ("connection", "close") in proto.answer()[1]  # the unread rest is not taken for a next request


def test_the_key_is_checked_before_the_body_is_read():
    _, rsgi, _ = pair()
    proto = request(rsgi, "POST", "/fences", {}, [b"{}"])
    assert proto.answer()[0] == 401 and proto.read == 0
    proto = request(rsgi, "POST", "/admin/tenants", KEY, [b"{}"])
    assert proto.answer()[0] == 401 and proto.read == 0


class Events:
    """The store's event streams, enough for /events/stream: a tail and a live feed."""

    def __init__(self) -> None:
        self.live: list[tuple[str, str, dict[str, Any]]] = []

    async def last_event_id(self, tenant: str) -> str:
        return "0-0"

    async def history(self, tenant: str, after: str = "-", count: int = 1000) -> list:
        return []

    async def follow(self, after: dict[str, str], block_ms: int = 0) -> list:
        await asyncio.sleep(0.005)
        return [(t, i, e) for t, i, e in self.live if t in after and entry_key(i) > entry_key(after[t])]


def test_the_event_stream_streams_until_the_client_goes():
    edge, rsgi, _ = pair()
    events = Events()
    store = edge.state.store
    store.last_event_id, store.history, store.follow = events.last_event_id, events.history, events.follow
    event = {"type": "enter", "tenant": "farm", "device_id": "cow-1", "fence_id": "north"}

    async def run() -> Proto:
        hub = asyncio.create_task(edge.state.hub.run())
        proto = Proto()
        scope = Scope("GET", "/events/stream", [(b"authorization", b"Bearer key-a")])
        app = asyncio.create_task(rsgi.__rsgi__(scope, proto))  # type: ignore[arg-type]
        await asyncio.wait_for(proto.arrived.wait(), 5)
        assert proto.streamed and proto.chunks == [b": connected\n\n"]  # headers and the first frame, at once
        assert edge.state.sse_clients == 1
        proto.arrived.clear()
        events.live.append(("farm", "5-0", event))
        await asyncio.wait_for(proto.arrived.wait(), 5)
        proto.gone.set()  # the client disconnects
        await asyncio.wait_for(app, 5)  # ... and the stream ends at once, not at the next keep-alive
        hub.cancel()
        return proto

    proto = asyncio.run(run())
    status, headers, body = proto.answer()
    assert status == 200 and dict(headers)["content-type"].startswith("text/event-stream")
    assert dict(headers)["cache-control"] == "no-cache"
    assert body.startswith(b": connected\n\nid: 5-0\nevent: enter\ndata: ") and b'"cow-1"' in body
    assert edge.state.sse_clients == 0 and len(edge.state.hub) == 0  # let go of its place
    assert counts(edge)[("/events/stream", "GET", "200")] == 1


def test_a_stream_whose_client_has_gone_stops_sending():
    async def run() -> tuple[Proto, list[dict[str, Any]]]:
        proto = Proto()
        exchange = Exchange(proto)  # type: ignore[arg-type]
        await exchange.send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]})
        await exchange.send({"type": "http.response.body", "body": b"one", "more_body": True})
        proto.gone.set()
        await exchange.send({"type": "http.response.body", "body": b"two", "more_body": True})  # no error, as ASGI
        got = [await exchange.receive(), await exchange.receive()]
        return proto, got

    proto, got = asyncio.run(run())
    assert proto.chunks == [b"one"] and proto.answers == [(200, [("x-a", "1")])]
    assert got[-1] == {"type": "http.disconnect"}


def test_receive_after_the_body_waits_for_the_end_of_the_response():
    async def run() -> list[Any]:
        proto = Proto([b"ab", b"c"])
        exchange = Exchange(proto)  # type: ignore[arg-type]
        got: list[Any] = [await exchange.receive() for _ in range(4)]
        waiting = asyncio.create_task(exchange.receive())
        await asyncio.sleep(0.01)
        got.append(waiting.done())
        await exchange.send({"type": "http.response.start", "status": 204, "headers": []})
        await exchange.send({"type": "http.response.body", "body": b""})
        got.append(await asyncio.wait_for(waiting, 1))
        got.append(await exchange.receive())  # and at once from then on
        return got

    got = asyncio.run(run())
    assert [m.get("body") for m in got[:4]] == [b"ab", b"c", b"", b""]
    assert [m.get("more_body") for m in got[:4]] == [True, True, True, False]
    assert got[4] is False
    assert got[5] == got[6] == {"type": "http.disconnect"}


class Lifespan:
    """An ASGI app that records its lifespan and its requests' scopes."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.seen: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            self.seen.append(message["type"])
            if message["type"] == "lifespan.startup":
                if self.fail:
                    await send({"type": "lifespan.startup.failed", "message": "no redis"})
                    return
                await asyncio.sleep(0)
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return


def test_the_lifespan_runs_from_the_rsgi_hooks():
    app = Lifespan()
    rsgi = RsgiEdge(app)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    try:
        rsgi.__rsgi_init__(loop)
        assert app.seen == ["lifespan.startup"]
        rsgi.__rsgi_del__(loop)
        assert app.seen == ["lifespan.startup", "lifespan.shutdown"]
    finally:
        loop.close()


def test_a_failed_startup_stops_the_worker():
    rsgi = RsgiEdge(Lifespan(fail=True))  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(SystemExit):
            rsgi.__rsgi_init__(loop)
    finally:
        loop.close()


def test_the_asgi_scope_is_the_one_granian_builds():
    rsgi = RsgiEdge(None)  # type: ignore[arg-type]
    scope = Scope("GET", "/fences/caf%C3%A9?a=%20b", [(b"host", b"api"), (b"x-two", b"1"), (b"x-two", b"2")])
    scope.server, scope.client = "[::1]:8000", "10.0.0.2:50123"  # type: ignore[misc]
    got = rsgi.asgi_scope(scope)  # type: ignore[arg-type]
    assert got["path"] == "/fences/caf\u00e9" and got["query_string"] == b"a=%20b"
    assert got["headers"] == [(b"host", b"api"), (b"x-two", b"1"), (b"x-two", b"2")]
    assert got["server"] == ("::1", 8000) and got["client"] == ("10.0.0.2", 50123)
    assert (got["type"], got["method"], got["scheme"], got["root_path"]) == ("http", "GET", "http", "")
    assert got["asgi"]["spec_version"] == "2.3"  # disconnects come by receive(), as from granian's ASGI side

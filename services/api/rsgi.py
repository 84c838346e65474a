"""The API over granian's RSGI interface (``FENCEX_INTERFACE=rsgi``): the point query answered on
RSGI's side, every other request handed to the ASGI edge (:class:`ApiEdge`) unchanged.

Under ASGI, granian builds a scope dict and two awaitables for every request and takes the answer
as two messages; under RSGI the request is one object and the answer one call
(``proto.response_bytes``), which is cheaper on the API's hottest route (the pull benchmark).

Everything else goes through :class:`Exchange`, a bridge from RSGI to ASGI for what this API needs
(no maintained one fits: ``rsgiadapter`` 0.1 holds a whole response until the app returns, so the
event stream would never start, and it runs the lifespan outside the server's loop):

- the request body streamed chunk by chunk as ``http.request`` messages, so the edge counts it
  against ``max_body_bytes`` as it arrives (and leaves it unread when it answers first);
- ``http.disconnect`` once the response is finished or the client has gone (``client_disconnect``);
- responses in one piece (``response_bytes``) or streamed (``response_stream``); an event stream
  (``text/event-stream``) starts streaming at its first message, as granian's ASGI side does;
- the ASGI lifespan (startup, shutdown) run by granian's own driver from ``__rsgi_init__`` and
  ``__rsgi_del__``, in the worker's loop, before it serves and after it stops.

The API has no websockets (granian runs with them off). Header values that are not visible ASCII
are not given to RSGI applications by granian (``RSGIHeaders``): such a header is absent here,
where ASGI would pass its bytes on (only a made-up key could carry one: it is refused either way).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

from granian.asgi import LifespanProtocol
from granian.rsgi import HTTPProtocol, ProtocolClosed, Scope  # type: ignore[attr-defined]  # re-exported by granian

from services.api.auth import SCOPE_KEY
from services.api.fastpath import POINT_ROUTE, ApiEdge
from services.api.problem import Problem

log = logging.getLogger("fencex.api")
ASGI_VERSION = {"version": "3.0", "spec_version": "2.3"}  # what granian's ASGI side says (2.3: disconnects by receive)
EVENT_STREAM = b"text/event-stream"


class RsgiEdge:
    """The API as an RSGI application: the point query here, the rest through the ASGI edge."""

    def __init__(self, edge: ApiEdge) -> None:
        self.edge = edge
        self.lifespan: LifespanProtocol | None = None

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the ASGI lifespan's startup (the loop is not running yet), as granian does for ASGI."""
        log.info("serving over granian's RSGI interface")
        self.lifespan = LifespanProtocol(self.edge)  # type: ignore[no-untyped-call]
        loop.run_until_complete(self.lifespan.startup())  # type: ignore[no-untyped-call]
        if self.lifespan.interrupt:
            log.error("ASGI lifespan startup failed", exc_info=self.lifespan.exc)
            sys.exit(1)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the lifespan's shutdown (the loop has stopped serving)."""
        if self.lifespan is not None:
            loop.run_until_complete(self.lifespan.shutdown())  # type: ignore[no-untyped-call]

    async def __rsgi__(self, scope: Scope, proto: HTTPProtocol) -> None:
        edge = self.edge
        if edge.fast_path and scope.path == POINT_ROUTE and scope.method == "GET":
            started = time.perf_counter()
            found = await edge.point_answer(scope.headers.get("authorization"), scope.query_string)
            if isinstance(found, bytes):
                headers = [("content-length", str(len(found))), ("content-type", "application/json")]
                proto.response_bytes(200, headers, found)
                status = 200
            elif isinstance(found, Problem):
                status, body, raw = found.asgi(POINT_ROUTE)
                proto.response_bytes(status, [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw], body)
            else:  # parameters FastAPI parses (and refuses) itself, for the caller known already
                exchange = Exchange(proto)
                try:
                    status = await edge.forward(self.asgi_scope(scope, {SCOPE_KEY: ("tenant", found)}), *exchange.io)
                finally:
                    exchange.close()
            edge.point_done(status, started)
            return
        exchange = Exchange(proto)
        try:
            await edge(self.asgi_scope(scope), *exchange.io)
        finally:
            exchange.close()

    def asgi_scope(self, scope: Scope, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ASGI scope of an RSGI request, as granian's ASGI side would build it."""
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in scope.headers.items()]
        if "host" not in scope.headers and scope.authority:  # HTTP/2 names the host in :authority
            headers.insert(0, (b"host", scope.authority.encode("latin-1")))
        out = {
            "type": "http",
            "asgi": ASGI_VERSION,
            "http_version": scope.http_version,
            "server": _address(scope.server),
            "client": _address(scope.client),
            "scheme": scope.scheme,
            "method": scope.method,
            "root_path": "",
            "path": scope.path,
            "query_string": scope.query_string.encode("latin-1"),
            "headers": headers,
            "state": dict(self.lifespan.state) if self.lifespan is not None else {},
        }
        if extra:
            out.update(extra)
        return out


class Exchange:
    """One request's ASGI ``receive`` and ``send`` over its RSGI protocol object."""

    __slots__ = ("_body", "_ended", "_finished", "_gone", "_headers", "_reading", "_status", "_stream", "proto")

    def __init__(self, proto: HTTPProtocol) -> None:
        self.proto = proto
        self._body: Any = None  # the request body's chunks, once reading starts
        self._reading = True  # the request body has more to come
        self._status = 0
        self._headers: list[tuple[str, str]] = []
        self._stream: Any = None  # the streamed response's transport
        self._finished = False  # the response is finished (or the app has returned)
        self._ended: asyncio.Future[None] | None = None  # for a receive() waiting for that
        self._gone = False  # the client has disconnected

    @property
    def io(self) -> tuple[Any, Any]:
        return self.receive, self.send

    async def receive(self) -> dict[str, Any]:
        if self._reading and not self._gone:
            if self._body is None:
                self._body = self.proto.__aiter__()
            try:
                chunk = await self._body.__anext__()
            except StopAsyncIteration:
                self._reading = False
                return {"type": "http.request", "body": b"", "more_body": False}
            except ProtocolClosed:  # the client went away while sending
                self._gone = True
            else:
                return {"type": "http.request", "body": chunk, "more_body": True}
        if not (self._gone or self._finished):
            await self._wait_for_end()
        return {"type": "http.disconnect"}

    async def _wait_for_end(self) -> None:
        """Until the response is finished or the client disconnects."""
        if self._ended is None:
            self._ended = asyncio.get_running_loop().create_future()
        gone = asyncio.ensure_future(self._client_gone())
        try:
            await asyncio.wait((gone, self._ended), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()  # RSGI leaves the watcher to the app: the connection may carry the next request

    async def _client_gone(self) -> None:
        await self.proto.client_disconnect()
        self._gone = True

    async def send(self, message: MutableMapping[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self._status = message["status"]
            raw = message.get("headers", ())
            self._headers = [(bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in raw]
            if any(k.lower() == b"content-type" and bytes(v).startswith(EVENT_STREAM) for k, v in raw):
                self._stream = self.proto.response_stream(self._status, self._headers)
            return
        if kind != "http.response.body" or not self._status:
            raise RuntimeError(f"unexpected ASGI message {kind!r} (response started: {bool(self._status)})")
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        if self._stream is None:
            if not more:
                self.proto.response_bytes(self._status, self._headers, body)
                self.close()
                return
            self._stream = self.proto.response_stream(self._status, self._headers)
        if body and not self._gone:
            try:
                await self._stream.send_bytes(body)
            except ProtocolClosed:  # the client went away: what is sent now goes nowhere, as under ASGI
                self._gone = True
        if not more:
            self.close()

    def close(self) -> None:
        """The response is finished (or the app has returned): a waiting receive() says disconnect."""
        self._stream = None  # dropping the transport ends a streamed body
        self._finished = True
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)


def _address(text: str) -> tuple[str, int] | None:
    """An RSGI ``host:port`` as ASGI's (host, port); None when it is no TCP address."""
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        return None
    return host.strip("[]"), int(port)

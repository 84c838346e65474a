"""Found in review: a request to a route that wants no key (an unknown path, /metrics, /healthz)
had its body read whole into memory, up to max_body_bytes, before any answer. Without a key,
anyone could hold 20 MiB of the API's memory per connection (20 connections: +370 MB)."""

from __future__ import annotations

import time

import pytest

from tests.integration.test_api_limits import api, chunk, raw  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("path", ["/no-such-route", "/metrics"])
def test_no_body_read_where_no_route_takes_one(api, path):  # noqa: F811
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    started = time.monotonic()
    got = raw(str(api.base_url), head, chunk(b"x" * 50_000), wait=5.0)  # the body never ends
    assert got.startswith((b"HTTP/1.1 404", b"HTTP/1.1 405")), got[:200]
    assert time.monotonic() - started < 3.0
    head = f"GET {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 90000\r\n"
    got = raw(str(api.base_url), head, b"{", wait=5.0)
    assert got.startswith((b"HTTP/1.1 404", b"HTTP/1.1 200")), got[:200]
    assert b"connection: close" in got.lower()  # the unread body is not taken for a next request

"""FENCEX_INTERFACE=rsgi: the API under granian's RSGI interface, started as in production. It
answers a table of requests as the same API over ASGI does (both running, one Redis); the body
limits and the key before the body hold (test_api_limits' tests, run again here against an RSGI
API: the ``api`` fixture below); the live event stream streams and lets go of a client that
leaves; the process stops cleanly (the lifespan's shutdown runs)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import httpx
import pytest

from tests.integration.conftest import ADMIN_KEY, metric, wait_api
from tests.integration.test_api_limits import (  # noqa: F401 - collected here again, with the fixture below
    _append,
    farm,
    listen,
    start,
    test_a_client_goes_on_after_an_early_answer,
    test_admin_key_header_variants_are_refused_alike,
    test_chunked_body_is_counted_against_the_limit,
    test_metric_labels_stay_in_closed_sets,
    test_no_key_no_body_read,
)
from tests.integration.test_review_sse import EVENT

pytestmark = pytest.mark.integration

RSGI = {"FENCEX_INTERFACE": "rsgi"}
SQUARE = {
    "type": "Polygon",
    "coordinates": [[[17.60, 59.80], [17.61, 59.80], [17.61, 59.81], [17.60, 59.81], [17.60, 59.80]]],
}
HEADERS_THAT_MATTER = (
    "allow",
    "cache-control",
    "connection",
    "content-encoding",
    "content-length",
    "content-type",
    "etag",
    "retry-after",
    "www-authenticate",
)


@pytest.fixture
def api(live):
    """test_api_limits' ``api``, over RSGI."""
    with start(live, FENCEX_MAX_BODY_BYTES="100000", **RSGI) as client:
        yield client


def answer(r: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    return r.status_code, {h: r.headers[h] for h in HEADERS_THAT_MATTER if h in r.headers}, r.content


def test_rsgi_answers_as_asgi(live):
    with (
        start(live, FENCEX_MAX_BODY_BYTES="100000") as asgi,
        start(live, FENCEX_MAX_BODY_BYTES="100000", **RSGI) as rsgi,
    ):
        key = farm(asgi, "farm-a")
        feature = {"type": "Feature", "id": "north", "geometry": SQUARE, "properties": {"name": "North"}}
        assert asgi.post("/fences", json=feature, headers=key).status_code == 201
        deadline = time.monotonic() + 10
        while rsgi.get("/query/fences", params={"lon": 17.605, "lat": 59.805}, headers=key).json()["fences"] == []:
            assert time.monotonic() < deadline, "the RSGI API did not load the fence"
            time.sleep(0.1)
        nope = {"Authorization": "Bearer nope"}
        table = [
            ("GET", "/query/fences?lon=17.605&lat=59.805", key, None),
            ("GET", "/query/fences?lon=1&lat=2", key, None),
            ("GET", "/query/fences?lon=1e2&lat=2", key, None),  # FastAPI parses it
            ("GET", "/query/fences?lon=x&lat=2", key, None),  # FastAPI refuses it
            ("GET", "/query/fences?lon=1&lat=2", nope, None),
            ("GET", "/query/fences?lon=1&lat=2", {}, None),
            ("POST", "/query/fences?lon=1&lat=2", key, None),
            ("GET", "/fences", key, None),
            ("GET", "/fences/north", key, None),
            ("GET", "/fences/nowhere", key, None),
            ("GET", "/fences/caf%C3%A9", key, None),
            ("POST", "/query/points", key, b'{"points": [{"lon": 17.605, "lat": 59.805}]}'),
            ("POST", "/locations", key, b"[" + b" " * 200_000 + b"]"),
            ("GET", "/healthz", {}, None),
            ("HEAD", "/healthz", {}, None),
            ("GET", "/nowhere", {}, None),
            ("GET", "/app/config.json", {}, None),
            ("GET", "/app/", {"Accept-Encoding": "identity"}, None),
            ("GET", "/app/", {"Accept-Encoding": "gzip"}, None),
            ("HEAD", "/app/", {"Accept-Encoding": "identity"}, None),  # the file's headers, no body
            ("GET", "/openapi.json", {}, None),
        ]
        for method, url, headers, body in table:
            want = answer(asgi.request(method, url, headers=headers, content=body))
            got = answer(rsgi.request(method, url, headers=headers, content=body))
            assert got == want, (method, url)


def test_the_event_stream_over_rsgi(live):
    event = EVENT
    with start(live, **RSGI) as api:
        a = farm(api, "farm-a")
        stop = threading.Event()
        got: list = []
        reader = threading.Thread(target=listen, args=(str(api.base_url), a, got, stop), daemon=True)
        reader.start()
        deadline = time.monotonic() + 10
        while ": connected" not in got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got[:2] == [200, ": connected"], got
        port = int(str(api.base_url).rsplit(":", 1)[1])
        assert metric(port, "fencex_sse_clients") == 1
        asyncio.run(_append(live, [event]))
        while not any(str(x).startswith("data:") for x in got) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(str(x).startswith("data:") and '"cow"' in str(x) for x in got), got
        stop.set()  # the client goes (at its next line: the event's blank line is already there)
        reader.join(5)
        while metric(port, "fencex_sse_clients") != 0:  # the server noticed, and let go of the stream
            assert time.monotonic() < deadline + 10, "the stream was not let go"
            time.sleep(0.1)


def test_the_rsgi_api_stops_cleanly(live):
    proc, base = live.start_api(**RSGI)
    wait_api(base, proc)
    key = httpx.post(f"{base}/admin/tenants", json={"id": "farm-a"}, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert key.status_code == 201
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(20) == 0
    log = (live.tmp / "api-0.log").read_text(errors="replace")
    assert "serving over granian's RSGI interface" in log, log[-2000:]
    assert "Traceback" not in log and "lifespan" not in log.lower(), log[-2000:]

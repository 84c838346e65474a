"""Issue 9's API defects, each against a real API process (granian), Redis and broker:
body limits (#4), live streams (#5), fence limits (#6), device claims (#10), metric labels (#13),
the fuzzer's 500s (#15), keys and rates (#17), and 409 for a taken id (issue 10)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from tests.integration.conftest import ADMIN_KEY, wait_api, wait_ready
from tests.integration.test_api import ADMIN, SQUARE, feature, is_problem

pytestmark = pytest.mark.integration


def square(i: int) -> dict:
    lon = 10 + i * 0.01
    return {"type": "Polygon", "coordinates": [[[lon, 50], [lon + 0.005, 50], [lon + 0.005, 50.005], [lon, 50]]]}


def start(live, **settings: str) -> httpx.Client:
    proc, base = live.start_api(**settings)
    wait_api(base, proc)
    client = httpx.Client(base_url=base, timeout=10)
    client.proc = proc  # type: ignore[attr-defined]
    return client


def farm(client: httpx.Client, name: str) -> dict[str, str]:
    r = client.post("/admin/tenants", json={"id": name}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['api_key']}"}


def raw(base: str, head: str, first: bytes = b"", wait: float = 5.0) -> bytes:
    """Send a request head (and the start of a body) on a raw socket; what comes back within ``wait``."""
    url = urlsplit(base)
    with socket.create_connection((url.hostname, url.port), timeout=wait) as s:
        s.sendall(head.encode("latin-1") + b"\r\n" + first)
        try:
            return s.recv(65536)
        except TimeoutError:
            return b""


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@pytest.fixture
def api(live):
    with start(live, FENCEX_MAX_BODY_BYTES="100000") as client:
        yield client


def test_chunked_body_is_counted_against_the_limit(api):
    """#4: a chunked body has no Content-Length; it was read whole (64 MiB got through)."""
    auth = farm(api, "farm-a")
    head = (
        f"POST /locations HTTP/1.1\r\nHost: x\r\n{auth_line(auth)}Content-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n"
    )
    body = b"".join(chunk(b" " * 16_384) for _ in range(8)) + b"0\r\n\r\n"  # 128 KiB, limit 100 kB
    got = raw(str(api.base_url), head, body)
    assert got.startswith(b"HTTP/1.1 413"), got[:200]
    assert b"application/problem+json" in got and b"max_body_bytes" in got


def auth_line(auth: dict[str, str]) -> str:
    return "".join(f"{k}: {v}\r\n" for k, v in auth.items())


def test_no_key_no_body_read(api):
    """#4: without a key the answer is 401 at once: the server does not wait for the body."""
    head = "POST /fences HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    started = time.monotonic()
    got = raw(str(api.base_url), head, chunk(b"{"), wait=5.0)  # the body never ends
    assert got.startswith(b"HTTP/1.1 401"), got[:200]
    assert time.monotonic() - started < 3.0
    head = "POST /fences HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 90000\r\n"
    assert raw(str(api.base_url), head, b"{", wait=5.0).startswith(b"HTTP/1.1 401")


def test_a_client_goes_on_after_an_early_answer(api):
    """An answer given before the body was read says Connection: close, so a client does not send
    its next request down a connection the server drops (it did: "Server disconnected")."""
    auth = farm(api, "farm-a")
    for _ in range(3):
        r = api.post("/fences", content=b"x" * 300_000)
        assert r.status_code == 401 and r.headers["connection"] == "close"
        assert api.get("/fences", headers=auth).status_code == 200
        r = api.post("/locations", content=b"[" + b" " * 200_000 + b"]", headers=auth)
        assert r.status_code == 413 and r.headers["connection"] == "close"
        assert api.get("/fences", headers=auth).status_code == 200


def test_metric_labels_stay_in_closed_sets(api):
    """#13: made-up methods and paths made one series each."""
    for i in range(20):
        raw(str(api.base_url), f"FOO{i} /nowhere/{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n", wait=2.0)
        api.request(f"BAR{i}", "/fences")
    text = api.get("/metrics").text
    series = [ln for ln in text.splitlines() if ln.startswith("fencex_http_requests_total{")]
    methods = {ln.split('method="')[1].split('"')[0] for ln in series}
    routes = {ln.split('route="')[1].split('"')[0] for ln in series}
    assert methods <= {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other"}, methods
    assert "other" in methods and "unmatched" in routes
    assert not any("nowhere" in r for r in routes)


def test_fuzzer_500s_are_answers_now(api):
    """#15: an empty import and an empty tag answered 500."""
    a = farm(api, "farm-a")
    r = api.post("/fences/import", json={"features": []}, headers=a)
    assert r.status_code == 201 and r.json()["total"] == 0
    api.post("/fences", json=feature("north"), headers=a)
    is_problem(api.patch("/fences/north", json={"tags": [""]}, headers=a), 422, "tags")
    is_problem(api.patch("/fences/north", json={"name": None}, headers=a), 422, "name")
    assert api.patch("/fences/north", json={"dwell_s": None}, headers=a).status_code == 200


def test_a_taken_fence_id_is_409_not_404(api):
    a, b = farm(api, "farm-a"), farm(api, "farm-b")
    assert api.post("/fences", json=feature("north"), headers=a).status_code == 201
    is_problem(api.post("/fences", json=feature("north"), headers=b), 409, "taken")
    is_problem(api.post("/fences/import", json={"features": [feature("north")]}, headers=b), 409, "taken")


def test_unknown_geometry_members_are_not_stored(api):
    """#6: a 5 MB junk member was stored whole; only type and coordinates are kept."""
    a = farm(api, "farm-a")
    geometry = {**SQUARE, "junk": "x" * 50_000, "bbox": [0, 0, 1, 1]}
    r = api.post("/fences", json=feature("north", geometry=geometry), headers=a)
    assert r.status_code == 201 and set(r.json()["geometry"]) == {"type", "coordinates"}
    assert set(api.get("/fences/north", headers=a).json()["geometry"]) == {"type", "coordinates"}


def test_fence_limits_name_the_limit(live):
    """#6: fences per farm, vertices and bytes per fence; the farm quota holds under a race."""
    with start(live, FENCEX_MAX_FENCES_PER_TENANT="5", FENCEX_MAX_VERTICES="50", FENCEX_MAX_FENCE_BYTES="3000") as api:
        a, b = farm(api, "farm-a"), farm(api, "farm-b")

        def create(i: int) -> int:
            return api.post("/fences", json=feature(f"f{i}", geometry=square(i)), headers=a).status_code

        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(create, range(12)))
        assert sorted(statuses) == [201] * 5 + [422] * 7, statuses
        assert api.get("/fences", headers=a).json()["total"] == 5
        r = api.post("/fences", json=feature("more", geometry=square(20)), headers=a)
        is_problem(r, 422, "limit of 5")
        assert r.json()["limit"] == "max_fences_per_tenant"
        r = api.post("/fences/import", json={"features": [feature("x", geometry=square(30))]}, headers=a)
        assert r.status_code == 422 and r.json()["limit"] == "max_fences_per_tenant"
        assert api.put("/fences/f0", json=feature(geometry=square(40)), headers=a).status_code in (200, 201)
        # another farm has its own quota
        assert api.post("/fences", json=feature("b0", geometry=square(0)), headers=b).status_code == 201
        ring = [[17.6 + i * 1e-4, 59.8 + (i % 2) * 1e-4] for i in range(60)] + [[17.6, 59.81], [17.6, 59.8]]
        r = api.post("/fences", json=feature("big", geometry={"type": "Polygon", "coordinates": [ring]}), headers=b)
        is_problem(r, 422, "vertices")
        assert r.json()["limit"] == "max_vertices"
        r = api.post(
            "/fences", json=feature("named", geometry=square(1), name="x" * 200, tags=["t" * 64] * 40), headers=b
        )
        is_problem(r, 413, "bytes")
        assert r.json()["limit"] == "max_fence_bytes"
        r = api.patch("/fences/b0", json={"tags": ["t" * 64] * 50}, headers=b)
        assert r.status_code == 413 and r.json()["limit"] == "max_fence_bytes"


def test_request_size_limits_name_the_limit(live):
    """Every limit's refusal names its setting: fixes a request, points a batch query."""
    with start(live, FENCEX_MAX_FIXES_PER_REQUEST="3", FENCEX_MAX_BATCH_POINTS="4") as api:
        a = farm(api, "farm-a")
        fix = {"device_id": "c", "ts": "2026-05-28T20:26:41Z", "lon": 17.6, "lat": 59.8}
        r = api.post("/locations", json=[fix] * 4, headers=a)
        assert r.status_code == 413 and r.json()["limit"] == "max_fixes_per_request", r.text
        r = api.post("/query/fences", json={"points": [[17.6, 59.8]] * 5}, headers=a)
        assert r.status_code == 413 and r.json()["limit"] == "max_batch_points", r.text


def test_claims_are_atomic(api):
    """#10: claims read then wrote: two farms could both be told they own a collar."""
    farms = [farm(api, f"farm-{i}") for i in range(4)]

    async def race(device: str) -> list[int]:
        async with httpx.AsyncClient(base_url=str(api.base_url), timeout=10) as c:
            rs = await asyncio.gather(*(c.put(f"/devices/{device}", headers=h) for h in farms))
        return [r.status_code for r in rs]

    for n in range(15):
        statuses = asyncio.run(race(f"collar-{n}"))
        assert sorted(statuses) == [200, 409, 409, 409], statuses
        winner = farms[statuses.index(200)]
        assert api.put(f"/devices/collar-{n}", headers=winner).status_code == 200  # again: still mine


def test_default_tenant_is_reserved(api):
    """#10: a farm called "default" would have seen every unregistered collar's positions and events."""
    is_problem(api.post("/admin/tenants", json={"id": "default"}, headers=ADMIN), 422, "reserved")


def test_a_claim_shows_nothing_from_before_it(live, api):
    """#10: a farm claiming a collar that already streamed must not see what it sent before."""
    proc, port = live.start_worker()
    a = farm(api, "farm-a")
    api.post("/fences", json=feature("north", name="North"), headers=a)
    wait_ready(port, proc)
    before = [
        {"device_id": "stray-1", "ts": 1_780_000_000_000, "lon": 17.62, "lat": 59.805},
        {"device_id": "stray-1", "ts": 1_780_000_001_000, "lon": 17.605, "lat": 59.805},
    ]
    live.produce([(b"stray-1", orjson.dumps(f)) for f in before])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the worker has the stray's state (under no farm)
        if asyncio.run(_has_state(live, "stray-1")):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the worker never saved the stray collar")
    assert api.put("/devices/stray-1", headers=a).status_code == 200
    is_problem(api.get("/devices/stray-1", headers=a), 404)
    assert api.get("/events", headers=a).json() == []
    assert api.get("/occupancy", headers=a).json() == {"north": 0}
    assert api.post("/query/devices", json={"polygon": SQUARE}, headers=a).json() == []
    time.sleep(1.0)  # the worker hears the claim through the change feed
    after = {"device_id": "stray-1", "ts": 1_780_000_002_000, "lon": 17.606, "lat": 59.806}
    assert api.post("/locations", json=after, headers=a).status_code == 202
    deadline = time.monotonic() + 15
    while api.get("/devices/stray-1", headers=a).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    dev = api.get("/devices/stray-1", headers=a).json()
    assert dev["lon"] == 17.606 and dev["last_seen"].startswith("2026-05-28T20:26:42")
    deadline = time.monotonic() + 15
    while not (events := api.get("/events", headers=a).json()) and time.monotonic() < deadline:
        time.sleep(0.2)  # the history is written a moment after the event is published
    assert [(e["type"], e["ts"][:19]) for e in events] == [("enter", "2026-05-28T20:26:42")]


async def _has_state(live, device: str) -> bool:
    from fencex.store.redis import RedisStore

    store = RedisStore(live.redis_url, live.prefix)
    await store.connect()
    try:
        return bool(await store.load_states([device]))
    finally:
        await store.close()


def test_keys_listed_revoked_rotated(api):
    """#17: keys could be added but not listed, revoked or rotated."""
    created = api.post("/admin/tenants", json={"id": "farm-a"}, headers=ADMIN).json()
    k1 = {"Authorization": f"Bearer {created['api_key']}"}
    second = api.post("/admin/tenants/farm-a/keys", headers=ADMIN).json()
    k2 = {"Authorization": f"Bearer {second['api_key']}"}
    listed = api.get("/admin/tenants/farm-a/keys", headers=ADMIN).json()
    assert [k["id"] for k in listed] == [created["id"], second["id"]]
    assert all(set(k) == {"id", "created_at"} for k in listed)
    assert created["api_key"] not in str(listed)
    assert [k["id"] for k in api.get("/keys", headers=k1).json()] == [created["id"], second["id"]]
    is_problem(api.get("/admin/tenants/farm-a/keys", headers=k1), 401, "admin key")
    is_problem(api.get("/admin/tenants/nobody/keys", headers=ADMIN), 404)
    # the admin revokes the second key: refused at once (by this process)
    assert api.delete(f"/admin/tenants/farm-a/keys/{second['id']}", headers=ADMIN).status_code == 204
    is_problem(api.get("/fences", headers=k2), 401, "unknown API key")
    is_problem(api.delete(f"/admin/tenants/farm-a/keys/{second['id']}", headers=ADMIN), 404)
    # the admin rotates the first; then the farm rotates the new one itself
    rotated = api.post(f"/admin/tenants/farm-a/keys/{created['id']}/rotate", headers=ADMIN)
    assert rotated.status_code == 201
    k3 = {"Authorization": f"Bearer {rotated.json()['api_key']}"}
    is_problem(api.get("/fences", headers=k1), 401)
    assert api.get("/fences", headers=k3).status_code == 200
    mine = api.post("/keys/rotate", headers=k3)
    assert mine.status_code == 201 and mine.json()["tenant"] == "farm-a"
    k4 = {"Authorization": f"Bearer {mine.json()['api_key']}"}
    is_problem(api.get("/fences", headers=k3), 401)
    assert [k["id"] for k in api.get("/keys", headers=k4).json()] == [mine.json()["id"]]
    # another farm cannot touch farm-a's keys
    b = farm(api, "farm-b")
    assert [k["id"] for k in api.get("/keys", headers=b).json()] != [mine.json()["id"]]


def test_rate_limit_per_key(live):
    """#17: nothing limited a key's request rate."""
    with start(live, FENCEX_RATE_LIMIT_PER_S="2", FENCEX_RATE_LIMIT_BURST="5") as api:
        a, b = farm(api, "farm-a"), farm(api, "farm-b")
        statuses = [api.get("/fences", headers=a).status_code for _ in range(8)]
        assert statuses[:5] == [200] * 5 and 429 in statuses[5:], statuses
        r = api.get("/query/fences", params={"lon": 1, "lat": 2}, headers=a)  # the fast path too
        is_problem(r, 429, "rate")
        assert int(r.headers["retry-after"]) >= 1 and r.json()["limit"] == "rate_limit_per_s"
        assert api.get("/fences", headers=b).status_code == 200  # another key is not slowed


def listen(base: str, headers: dict, out: list, stop: threading.Event) -> None:
    try:
        with httpx.stream("GET", f"{base}/events/stream", headers=headers, timeout=30) as s:
            out.append(s.status_code)
            for line in s.iter_lines():
                out.append(line)
                if stop.is_set():
                    return
    except httpx.HTTPError as exc:
        out.append(repr(exc))


def test_live_streams_share_one_reader(live):
    """#5: each stream held a pooled Redis connection; more streams than the pool starved others."""
    api = start(
        live,
        redis_url=f"{live.redis_url}?max_connections=6",
        FENCEX_SSE_MAX_PER_TENANT="4",
        FENCEX_SSE_MAX_PER_PROCESS="12",
    )
    with api:
        farms = {f"farm-{i}": farm(api, f"farm-{i}") for i in range(4)}
        quiet = farm(api, "quiet")
        stop = threading.Event()
        streams: list[list] = []
        threads = []
        for _name, h in farms.items():
            for _ in range(3):  # 12 streams on a pool of 6 connections
                out: list = []
                t = threading.Thread(target=listen, args=(str(api.base_url), h, out, stop), daemon=True)
                t.start()
                streams.append(out), threads.append(t)
        deadline = time.monotonic() + 10
        while sum(1 for s in streams if ": connected" in s) < 12 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(s[:1] == [200] for s in streams), [s[:2] for s in streams if s[:1] != [200]]
        # other farms' requests still answer, promptly
        for _ in range(10):
            started = time.monotonic()
            assert api.get("/fences", headers=quiet).status_code == 200
            assert api.post("/fences", json=feature(None, geometry=square(1)), headers=quiet).status_code == 201
            assert time.monotonic() - started < 2.0
        # caps: the process is full (12), and a farm at its cap gets 429 with Retry-After
        r = api.get("/events/stream", headers=quiet)
        is_problem(r, 429, "limit")
        assert r.json()["limit"] == "sse_max_per_process" and r.headers["retry-after"]
        # events reach every stream of their farm (through the one reader), and only theirs
        event = {
            "event_id": "e1",
            "type": "enter",
            "tenant": "farm-0",
            "device_id": "cow",
            "fence_id": "f",
            "fence_version": 1,
            "ts": "2026-05-28T20:26:41.000Z",
            "lon": 1.0,
            "lat": 2.0,
            "detected_at": "2026-05-28T20:26:41.000Z",
        }
        asyncio.run(_append(live, [event]))
        deadline = time.monotonic() + 10
        while sum(1 for s in streams[:3] if any(str(x).startswith("data:") for x in s)) < 3:
            assert time.monotonic() < deadline, streams[:3]
            time.sleep(0.1)
        assert not any(str(x).startswith("data:") for s in streams[3:] for x in s)
        stop.set()
    with start(live, FENCEX_SSE_MAX_PER_TENANT="2") as api2:
        h = farm(api2, "farm-x")
        stop = threading.Event()
        outs: list[list] = [[], []]
        for out in outs:
            threading.Thread(target=listen, args=(str(api2.base_url), h, out, stop), daemon=True).start()
        deadline = time.monotonic() + 10
        while not all(": connected" in o for o in outs) and time.monotonic() < deadline:
            time.sleep(0.1)
        r = api2.get("/events/stream", headers=h)
        is_problem(r, 429, "your farm")
        assert r.json()["limit"] == "sse_max_per_tenant"
        stop.set()


async def _append(live, events: list[dict]) -> None:
    from fencex.store.redis import RedisStore

    store = RedisStore(live.redis_url, live.prefix)
    await store.connect()
    try:
        await store.append_events(events)
    finally:
        await store.close()


def test_admin_key_header_variants_are_refused_alike(api):
    """#17: the admin key is compared in constant time on every path (no 500 on odd bytes)."""
    for value in (f"Bearer {ADMIN_KEY}", "Bearer k\u00e9y", f"Bearer {ADMIN_KEY[:-1]}"):
        h = {"Authorization": value.encode("latin-1")}
        for r in (api.get("/query/fences", params={"lon": 1, "lat": 2}, headers=h), api.get("/fences", headers=h)):
            assert r.status_code == 401, r.text

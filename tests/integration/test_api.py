"""The query API, black box: a real API process (granian) against the real broker and redis-server."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from devtools.localserver import free_port, start_redis
from tests.integration.conftest import ADMIN_KEY, wait_api, wait_ready

pytestmark = pytest.mark.integration

SQUARE = {
    "type": "Polygon",
    "coordinates": [[[17.60, 59.80], [17.61, 59.80], [17.61, 59.81], [17.60, 59.81], [17.60, 59.80]]],
}
FAR = {"type": "Polygon", "coordinates": [[[18.0, 60.0], [18.01, 60.0], [18.01, 60.01], [18.0, 60.01], [18.0, 60.0]]]}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def feature(fid: str | None = None, geometry=SQUARE, **props) -> dict:
    f = {"type": "Feature", "geometry": geometry, "properties": props}
    if fid:
        f["id"] = fid
    return f


@pytest.fixture
def api(live):
    proc, base = live.start_api(
        FENCEX_MAX_VERTICES="50", FENCEX_MAX_BODY_BYTES="200000", FENCEX_MAX_BATCH_POINTS="5000"
    )
    wait_api(base, proc)
    with httpx.Client(base_url=base, timeout=10) as client:
        a = client.post("/admin/tenants", json={"id": "farm-a", "name": "Farm A"}, headers=ADMIN).json()["api_key"]
        b = client.post("/admin/tenants", json={"id": "farm-b"}, headers=ADMIN).json()["api_key"]
        client.a = {"Authorization": f"Bearer {a}"}  # type: ignore[attr-defined]
        client.b = {"Authorization": f"Bearer {b}"}  # type: ignore[attr-defined]
        yield client


def is_problem(r: httpx.Response, status: int, text: str = "") -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["title"] and text in body["detail"], body


def test_keys_and_admin(api):
    is_problem(api.get("/fences"), 401, "Authorization")
    is_problem(api.get("/fences", headers={"Authorization": "Bearer nope"}), 401, "unknown API key")
    is_problem(api.get("/fences", headers=ADMIN), 401, "admin key")
    is_problem(api.post("/admin/tenants", json={"id": "x"}, headers=api.a), 401, "admin key")
    is_problem(api.post("/admin/tenants", json={"id": "farm-a"}, headers=ADMIN), 409)
    key2 = api.post("/admin/tenants/farm-a/keys", headers=ADMIN).json()["api_key"]
    assert api.get("/fences", headers={"Authorization": f"Bearer {key2}"}).status_code == 200


def test_fence_lifecycle_with_etags(api):
    r = api.post("/fences", json=feature("north", name="North", tags=["sheep"], dwell_s=60), headers=api.a)
    assert r.status_code == 201 and r.headers["etag"] == '"1"' and r.headers["location"] == "/fences/north"
    assert r.json()["properties"]["version"] == 1
    is_problem(api.post("/fences", json=feature("north"), headers=api.a), 409, "exists")
    got = api.get("/fences/north", headers=api.a)
    assert got.json()["geometry"] == SQUARE and got.headers["etag"] == '"1"'
    # two farmers edit: the second, with a stale ETag, gets 412
    first = api.put(
        "/fences/north", json=feature(geometry=FAR, name="North", tags=["sheep"]), headers={**api.a, "If-Match": '"1"'}
    )
    assert first.status_code == 200 and first.headers["etag"] == '"2"'
    is_problem(
        api.put("/fences/north", json=feature(name="Mine"), headers={**api.a, "If-Match": '"1"'}), 412, "version 2"
    )
    patched = api.patch("/fences/north", json={"name": "North (rested)"}, headers={**api.a, "If-Match": '"2"'})
    assert patched.json()["properties"]["name"] == "North (rested)" and patched.json()["geometry"] == FAR
    assert patched.json()["properties"]["tags"] == ["sheep"] and patched.headers["etag"] == '"3"'
    is_problem(api.delete("/fences/north", headers={**api.a, "If-Match": '"2"'}), 412)
    assert api.delete("/fences/north", headers={**api.a, "If-Match": '"3"'}).status_code == 204
    is_problem(api.get("/fences/north", headers=api.a), 404)
    created = api.put("/fences/south", json=feature(), headers=api.a)
    assert created.status_code == 201 and created.headers["etag"] == '"1"'


@pytest.mark.parametrize(
    "geometry,status,text",
    [
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}, 422, "not closed"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}, 422, "Self-intersection"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [200, 0], [200, 1], [0, 1], [0, 0]]]}, 422, "longitude 200"),
        (
            {"type": "Polygon", "coordinates": [[[i * 0.001, 0] for i in range(60)] + [[0.05, 0.05], [0, 0]]]},
            422,
            "more than the limit of 50",
        ),
        ({"type": "Point", "coordinates": [0, 0]}, 422, "'Polygon', 'MultiPolygon'"),
    ],
)
def test_invalid_fences_say_what_is_wrong(api, geometry, status, text):
    is_problem(api.post("/fences", json=feature("bad", geometry=geometry), headers=api.a), status, text)
    is_problem(api.get("/fences/bad", headers=api.a), 404)  # nothing half-written


def test_body_too_large(api):
    big = feature("big", name="x" * 100, tags=["t"])
    big["properties"]["name"] = "x" * 150  # valid
    ring = [[17.6 + i * 1e-6, 59.8] for i in range(20_000)]
    is_problem(
        api.post("/fences", json=feature("big", geometry={"type": "Polygon", "coordinates": [ring]}), headers=api.a),
        413,
        "limit",
    )


def test_list_filter_page_and_import(api):
    coll = {
        "type": "FeatureCollection",
        "features": [
            feature(
                f"p{i}",
                geometry={
                    "type": "Polygon",
                    "coordinates": [
                        [
                            [17.6 + i * 0.1, 59.8],
                            [17.61 + i * 0.1, 59.8],
                            [17.61 + i * 0.1, 59.81],
                            [17.6 + i * 0.1, 59.8],
                        ]
                    ],
                },
                tags=["sheep"] if i % 2 else ["cattle"],
            )
            for i in range(5)
        ],
    }
    r = api.post("/fences/import", json=coll, headers=api.a)
    assert r.status_code == 201 and r.json()["total"] == 5
    bad = {
        "type": "FeatureCollection",
        "features": [
            feature("ok"),
            feature("broken", geometry={"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}),
        ],
    }
    body = api.post("/fences/import", json=bad, headers=api.a)
    is_problem(body, 422, "nothing was imported")
    assert [e["feature"] for e in body.json()["errors"]] == [1]
    is_problem(api.get("/fences/ok", headers=api.a), 404)  # all or none
    sheep = api.get("/fences", params={"tag": "sheep"}, headers=api.a).json()
    assert sorted(f["id"] for f in sheep["features"]) == ["p1", "p3"]
    boxed = api.get("/fences", params={"bbox": "17.55,59.79,17.75,59.82"}, headers=api.a).json()
    assert sorted(f["id"] for f in boxed["features"]) == ["p0", "p1"]
    page1 = api.get("/fences", params={"limit": 2}, headers=api.a).json()
    page2 = api.get("/fences", params={"limit": 2, "offset": page1["next_offset"]}, headers=api.a).json()
    assert page1["total"] == 5 and len(page1["features"]) == 2 and page2["features"][0]["id"] == "p2"
    is_problem(api.get("/fences", params={"bbox": "1,2,3"}, headers=api.a), 422, "bbox")


def test_point_and_batch_queries(api):
    api.post("/fences", json=feature("north", name="North", tags=["sheep"]), headers=api.a)
    api.post("/fences", json=feature("theirs"), headers=api.b)
    deadline = time.monotonic() + 2
    while True:  # the API's index follows the change feed: within a second
        r = api.get("/query/fences", params={"lon": 17.605, "lat": 59.805}, headers=api.a).json()
        if r["fences"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [f["id"] for f in r["fences"]] == ["north"]
    assert api.get("/query/fences", params={"lon": 59.805, "lat": 17.605}, headers=api.a).json()["fences"] == []
    is_problem(api.get("/query/fences", params={"lon": 17.6, "lat": 95}, headers=api.a), 422, "lat")
    pts = [[17.605, 59.805], [0, 0], [17.6, 59.8]] * 1000
    batch = api.post("/query/fences", json={"points": pts}, headers=api.a).json()
    assert batch["points"] == 3000 and batch["matches"] == 2000 and set(batch["fence_id"]) == {"north"}
    assert batch["point"][:2] == [0, 2]
    is_problem(api.post("/query/fences", json={"points": [[1, 2], [300, 0]]}, headers=api.a), 422, "point 1")
    is_problem(api.post("/query/fences", json={"points": [[0, 0]] * 5001}, headers=api.a), 413, "limit is 5000")


def test_push_and_pull_together_with_tenant_isolation(live, api):
    proc, port = live.start_worker()
    api.post("/fences", json=feature("north", name="North"), headers=api.a)
    api.post("/fences", json=feature("b-north"), headers=api.b)
    # this farm's test collar moves 840 m a second: not a jump to hold back here (herd rules: test_api_herd)
    assert api.put("/herd/settings", json={"max_speed_mps": 1000}, headers=api.a).status_code == 200
    assert api.put("/devices/cow-1", headers=api.a).status_code == 200
    is_problem(api.put("/devices/cow-1", headers=api.b), 409, "another farm")
    assert api.put("/admin/devices/cow-9", json={"tenant": "farm-b"}, headers=ADMIN).status_code == 200
    wait_ready(port, proc)
    time.sleep(1.0)  # registrations reach the worker through the change feed
    # live stream before anything happens
    received: list[bytes] = []

    def listen(headers: dict, out: list) -> None:
        try:
            with httpx.stream("GET", f"{api.base_url}/events/stream", headers=headers, timeout=20) as s:
                for line in s.iter_lines():
                    out.append(line)
                    if sum(1 for x in out if x.startswith("data:")) >= 2:
                        return
        except httpx.HTTPError:
            pass

    b_seen: list[bytes] = []
    ta = threading.Thread(target=listen, args=(api.a, received), daemon=True)
    tb = threading.Thread(target=listen, args=(api.b, b_seen), daemon=True)
    ta.start(), tb.start()
    time.sleep(0.5)
    fixes = [
        {"device_id": "cow-1", "ts": 1_780_000_000_000, "lon": 17.62, "lat": 59.805},
        {"device_id": "cow-1", "ts": 1_780_000_001_000, "lon": 17.605, "lat": 59.805},
        {"device_id": "cow-1", "ts": "2026-05-28T20:26:43Z", "lon": 17.606, "lat": 59.806},
        {"device_id": "cow-1", "ts": 1_780_000_004_000, "lat": 99},
    ]
    r = api.post("/locations", json=fixes, headers=api.a)
    is_problem(r, 422, "1 of 4 fixes are invalid")
    assert r.json()["accepted"] == 3 and r.json()["errors"][0]["index"] == 3
    api.post(
        "/locations", json={"device_id": "cow-1", "ts": 1_780_000_005_000, "lon": 17.62, "lat": 59.805}, headers=api.a
    )
    ta.join(20)
    datas = [x for x in received if x.startswith("data:")]
    assert len(datas) == 2 and '"enter"' in datas[0] and '"exit"' in datas[1]
    ids = [x[4:].strip() for x in received if x.startswith("id:")]
    # reconnect from the first id: the second event again, nothing else
    again: list = []
    listen_once = threading.Thread(target=listen, args=({**api.a, "Last-Event-ID": ids[0]}, again), daemon=True)
    listen_once.start()
    listen_once.join(3)
    assert [x for x in again if x.startswith("data:")] == datas[1:2]
    # what the pull side knows now
    dev = api.get("/devices/cow-1", headers=api.a).json()
    assert dev["lon"] == 17.62 and dev["fences"] == [] and dev["last_seen"].startswith("2026-05-28T20:26:45")
    hist = api.get("/events", params={"device": "cow-1"}, headers=api.a).json()
    assert [(e["type"], e["fence_id"]) for e in hist] == [("enter", "north"), ("exit", "north")]
    assert api.get("/events", params={"since": "2026-05-28T20:26:42Z"}, headers=api.a).json()[0]["type"] == "exit"
    assert api.get("/occupancy", headers=api.a).json() == {"north": 0}
    api.post(
        "/locations", json={"device_id": "cow-1", "ts": 1_780_000_006_000, "lon": 17.605, "lat": 59.805}, headers=api.a
    )
    deadline = time.monotonic() + 5
    while api.get("/occupancy", headers=api.a).json() != {"north": 1} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert api.get("/occupancy", headers=api.a).json() == {"north": 1}
    inside = api.get("/fences/north/devices", headers=api.a).json()
    assert [d["device_id"] for d in inside] == ["cow-1"]
    near = api.post("/query/devices", json={"point": [17.605, 59.805], "radius_m": 50}, headers=api.a).json()
    assert [d["device_id"] for d in near] == ["cow-1"]
    poly = api.post("/query/devices", json={"polygon": SQUARE}, headers=api.a).json()
    assert [d["device_id"] for d in poly] == ["cow-1"]
    assert api.post("/query/devices", json={"polygon": FAR}, headers=api.a).json() == []
    # farm B sees none of it, on every endpoint
    for path in ("/fences/north", "/fences/north/devices", "/devices/cow-1"):
        is_problem(api.get(path, headers=api.b), 404)
    is_problem(api.put("/fences/north", json=feature(), headers=api.b), 409, "taken")  # not B's, not B's to take
    is_problem(api.patch("/fences/north", json={"name": "mine"}, headers=api.b), 404)
    is_problem(api.delete("/fences/north", headers=api.b), 404)
    assert [f["id"] for f in api.get("/fences", headers=api.b).json()["features"]] == ["b-north"]
    assert api.get("/occupancy", headers=api.b).json() == {"b-north": 0}
    assert api.get("/events", headers=api.b).json() == []
    assert (
        api.get("/query/fences", params={"lon": 17.605, "lat": 59.805}, headers=api.b).json()["fences"][0]["id"]
        == "b-north"
    )
    assert api.post("/query/devices", json={"polygon": SQUARE}, headers=api.b).json() == []
    moved = api.post(
        "/locations", json={"device_id": "cow-1", "ts": 1_780_000_009_000, "lon": 0.0, "lat": 0.0}, headers=api.b
    )  # B cannot move A's cow, nor learn that it is A's
    is_problem(moved, 422, "1 of 1 fixes are invalid")
    assert "not registered to your farm" in moved.json()["errors"][0]["message"] and moved.json()["accepted"] == 0
    assert not [x for x in b_seen if x.startswith("data:")]  # B's stream never carried A's events
    metrics = httpx.get(f"{api.base_url}/metrics").text
    assert 'fencex_http_requests_total{method="GET",route="/fences/{fence_id}",status="404"}' in metrics
    assert "fencex_queries_total" in metrics and "fencex_sse_clients" in metrics


def test_redis_down_gives_503_and_startup_waits(live, tmp_path):
    port = free_port()
    proc, base = live.start_api(redis_url=f"redis://127.0.0.1:{port}/0")
    deadline = time.monotonic() + 10
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert httpx.get(f"{base}/readyz").status_code == 503
    is_problem(httpx.get(f"{base}/fences", headers={"Authorization": "Bearer x"}), 503, "starting")
    time.sleep(1.5)
    assert "waiting for redis" in (live.tmp / "api-0.log").read_text()
    with start_redis(port, logdir=tmp_path) as redis:
        wait_api(base, proc, timeout=30)
        key = httpx.post(f"{base}/admin/tenants", json={"id": "f"}, headers=ADMIN).json()["api_key"]
        auth = {"Authorization": f"Bearer {key}"}
        assert httpx.get(f"{base}/fences", headers=auth).status_code == 200
        redis.stop()
        is_problem(httpx.get(f"{base}/fences", headers=auth), 503, "unavailable")
    assert proc.poll() is None

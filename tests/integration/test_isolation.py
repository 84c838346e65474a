"""Tenant isolation, generated from the route table: every route of the API is called with
another farm's key and this farm's ids (fences, devices, events, keys), and must show or change
nothing of this farm's. A route without a case fails the test, so a new route cannot be added
without saying how it keeps farms apart. The same table drives the outage test: with Redis
down, every route answers 503 problem+json with Retry-After (or, for what is answered from
memory, its normal answer), never a 500 or a hang."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from devtools.localserver import free_port, start_redis
from fencex.store.redis import RedisStore
from services.api.app import create_app
from services.api.fastpath import flat_routes, role_of
from services.api.settings import Settings
from tests.integration.conftest import run, wait_api, wait_ready
from tests.integration.test_api import ADMIN, feature, is_problem
from tests.integration.test_fences_robust import write_broken

pytestmark = pytest.mark.integration

# farm A's fence, and its cow's positions: numbers found nowhere else (not in the OpenAPI examples)
A_SQUARE = {"type": "Polygon", "coordinates": [[[21.37, 63.51], [21.38, 63.51], [21.38, 63.52], [21.37, 63.51]]]}
POINT = {"lon": 21.378, "lat": 63.512}  # inside farm A's fence
OUTSIDE = {"lon": 21.39, "lat": 63.512}
B_SQUARE = {"type": "Polygon", "coordinates": [[[18.0, 60.0], [18.01, 60.0], [18.01, 60.01], [18.0, 60.0]]]}
GRAZING_DAYS = {"from": "2026-05-27", "to": "2026-05-29"}  # farm A's grazing is on 2026-05-28


@dataclass
class Farms:
    api: httpx.Client
    a: dict[str, str]  # farm A's key: the data belongs to A
    b: dict[str, str]  # farm B's key: the caller in every case
    a_key_id: str
    a_event_id: str

    def a_still_has_its_fence(self) -> None:
        got = self.api.get("/fences/a-fence", headers=self.a)
        assert got.status_code == 200 and got.json()["properties"]["version"] == 1, got.text


Request = tuple[str, str, dict[str, Any]]


@dataclass
class Case:
    request: Callable[[Farms], Request]
    check: Callable[[Farms, httpx.Response], None]
    stream: bool = False


def no_a(text: str, ids: bool = True) -> None:
    """Nothing of farm A's: its name, its fence's shape, its cow's position (and, where the
    caller did not send them, the ids of its fence and cow)."""
    for secret in ("farm-a", "[21.37,63.51]", "21.39", *(("a-fence", "a-cow") if ids else ())):
        assert secret not in text, f"{secret!r} leaked: {text[:300]}"


def nothing_of_a(f: Farms, r: httpx.Response) -> None:
    assert r.status_code < 500, r.text
    no_a(r.text)


def not_found(f: Farms, r: httpx.Response) -> None:
    is_problem(r, 404)
    no_a(r.text, ids=False)  # the problem names the id B asked for, nothing more
    f.a_still_has_its_fence()


def taken(f: Farms, r: httpx.Response) -> None:
    is_problem(r, 409)
    no_a(r.text, ids=False)
    f.a_still_has_its_fence()


def admin_only(f: Farms, r: httpx.Response) -> None:
    is_problem(r, 401, "admin key")
    assert f.api.get("/fences", headers=f.a).status_code == 200  # A's key still works


def b_gets_only_b(f: Farms, r: httpx.Response) -> None:
    assert r.status_code == 200, r.text
    no_a(r.text)


def b_cannot_move_a_cow(f: Farms, r: httpx.Response) -> None:
    is_problem(r, 422, "1 of 1 fixes are invalid")
    assert r.json()["accepted"] == 0 and "not registered to your farm" in r.json()["errors"][0]["message"]
    no_a(r.text, ids=False)


def b_cannot_claim(f: Farms, r: httpx.Response) -> None:
    is_problem(r, 409, "another farm")
    no_a(r.text, ids=False)
    assert f.api.get("/devices/a-cow", headers=f.a).status_code == 200


def b_rotates_only_its_own(f: Farms, r: httpx.Response) -> None:
    assert r.status_code == 201 and r.json()["tenant"] == "farm-b", r.text
    f.b = {"Authorization": f"Bearer {r.json()['api_key']}"}
    assert f.api.get("/fences", headers=f.a).status_code == 200


def b_stream_carries_nothing_of_a(f: Farms, r: httpx.Response) -> None:
    assert r.status_code == 200


def a_mob_untouched(f: Farms) -> None:
    got = f.api.get("/mobs/a-mob", headers=f.a)
    assert got.status_code == 200 and got.json()["version"] == 1 and got.json()["devices"] == ["a-cow"], got.text
    assert f.api.get("/herd/settings", headers=f.a).json()["confirm_fixes"] == 5


def mob_not_found(f: Farms, r: httpx.Response) -> None:
    not_found(f, r)
    a_mob_untouched(f)


def b_cannot_name_a_fence(f: Farms, r: httpx.Response) -> None:
    is_problem(r, 422, "no fence 'a-fence' on this farm")
    no_a(r.text, ids=False)
    a_mob_untouched(f)


def b_has_its_own_settings(f: Farms, r: httpx.Response) -> None:
    assert r.status_code == 200 and r.json()["confirm_fixes"] != 5, r.text
    a_mob_untouched(f)


def b_gets_only_b_mobs(f: Farms, r: httpx.Response) -> None:
    b_gets_only_b(f, r)
    assert "a-mob" not in r.text
    a_mob_untouched(f)


def b_sees_no_grazing_of_a(f: Farms, r: httpx.Response) -> None:
    b_gets_only_b(f, r)
    assert r.json()["fences"] == [], r.text
    mine = f.api.get("/grazing", params=GRAZING_DAYS, headers=f.a).json()["fences"]
    assert [(g["fence_id"], g["ms"]) for g in mine] == [("a-fence", 7_654_321)]  # A's, as it was


def b_sees_no_quarantine_of_a(f: Farms, r: httpx.Response) -> None:
    assert r.status_code == 200 and r.json() == [], r.text  # A's broken fence is A's to see


CASES: dict[tuple[str, str], Case] = {
    ("POST", "/fences"): Case(lambda f: ("POST", "/fences", {"json": feature("a-fence", geometry=B_SQUARE)}), taken),
    ("GET", "/fences"): Case(lambda f: ("GET", "/fences", {}), b_gets_only_b),
    ("POST", "/fences/import"): Case(
        lambda f: ("POST", "/fences/import", {"json": {"features": [feature("a-fence", geometry=B_SQUARE)]}}), taken
    ),
    ("GET", "/fences/{fence_id}"): Case(lambda f: ("GET", "/fences/a-fence", {}), not_found),
    ("POST", "/rotations"): Case(
        lambda f: ("POST", "/rotations", {"json": {"fences": {"a-fence": {"schedule": None}}}}), not_found
    ),
    ("GET", "/fences/quarantined"): Case(lambda f: ("GET", "/fences/quarantined", {}), b_sees_no_quarantine_of_a),
    ("PUT", "/fences/{fence_id}"): Case(
        lambda f: ("PUT", "/fences/a-fence", {"json": feature(geometry=B_SQUARE)}), taken
    ),
    ("PATCH", "/fences/{fence_id}"): Case(lambda f: ("PATCH", "/fences/a-fence", {"json": {"name": "B's"}}), not_found),
    ("DELETE", "/fences/{fence_id}"): Case(lambda f: ("DELETE", "/fences/a-fence", {}), not_found),
    ("GET", "/fences/{fence_id}/devices"): Case(lambda f: ("GET", "/fences/a-fence/devices", {}), not_found),
    ("GET", "/fences/{fence_id}/grazing"): Case(
        lambda f: ("GET", "/fences/a-fence/grazing", {"params": GRAZING_DAYS}), not_found
    ),
    ("GET", "/grazing"): Case(lambda f: ("GET", "/grazing", {"params": GRAZING_DAYS}), b_sees_no_grazing_of_a),
    ("GET", "/query/fences"): Case(lambda f: ("GET", "/query/fences", {"params": POINT}), b_gets_only_b),
    ("POST", "/query/fences"): Case(
        lambda f: ("POST", "/query/fences", {"json": {"points": [[POINT["lon"], POINT["lat"]]] * 3}}),
        b_gets_only_b,
    ),
    ("POST", "/query/devices"): Case(
        lambda f: ("POST", "/query/devices", {"json": {"polygon": A_SQUARE}}), b_gets_only_b
    ),
    ("GET", "/devices/{device_id}"): Case(lambda f: ("GET", "/devices/a-cow", {}), not_found),
    ("GET", "/devices/{device_id}/track"): Case(lambda f: ("GET", "/devices/a-cow/track", {}), not_found),
    ("PUT", "/devices/{device_id}"): Case(lambda f: ("PUT", "/devices/a-cow", {}), b_cannot_claim),
    ("GET", "/occupancy"): Case(lambda f: ("GET", "/occupancy", {}), b_gets_only_b),
    ("POST", "/mobs"): Case(
        lambda f: ("POST", "/mobs", {"json": {"id": "a-mob", "fences": ["a-fence"]}}), b_cannot_name_a_fence
    ),
    ("GET", "/mobs"): Case(lambda f: ("GET", "/mobs", {}), b_gets_only_b_mobs),
    ("GET", "/mobs/{mob_id}"): Case(lambda f: ("GET", "/mobs/a-mob", {}), mob_not_found),
    ("PUT", "/mobs/{mob_id}"): Case(
        lambda f: ("PUT", "/mobs/a-mob", {"json": {"devices": ["a-cow"]}}),
        lambda f, r: (is_problem(r, 422, "'a-cow' not registered to this farm"), a_mob_untouched(f)),
    ),
    ("DELETE", "/mobs/{mob_id}"): Case(lambda f: ("DELETE", "/mobs/a-mob", {}), mob_not_found),
    ("GET", "/herd/settings"): Case(lambda f: ("GET", "/herd/settings", {}), b_has_its_own_settings),
    ("PUT", "/herd/settings"): Case(
        lambda f: ("PUT", "/herd/settings", {"json": {"confirm_fixes": 3}}), b_has_its_own_settings
    ),
    ("GET", "/alerts"): Case(lambda f: ("GET", "/alerts", {}), b_gets_only_b),
    ("GET", "/admin/tenants/{tenant}/herd/settings"): Case(
        lambda f: ("GET", "/admin/tenants/farm-a/herd/settings", {}), admin_only
    ),
    ("PUT", "/admin/tenants/{tenant}/herd/settings"): Case(
        lambda f: ("PUT", "/admin/tenants/farm-a/herd/settings", {"json": {"confirm_fixes": 1}}), admin_only
    ),
    ("GET", "/events"): Case(lambda f: ("GET", "/events", {"params": {"device": "a-cow"}}), b_gets_only_b),
    ("GET", "/events/stream"): Case(
        lambda f: ("GET", "/events/stream", {"headers": {"Last-Event-ID": f.a_event_id}}),
        b_stream_carries_nothing_of_a,
        stream=True,
    ),
    ("POST", "/locations"): Case(
        lambda f: (
            "POST",
            "/locations",
            {"json": {"device_id": "a-cow", "ts": 1_780_000_009_000, "lon": 0.0, "lat": 0.0}},
        ),
        b_cannot_move_a_cow,
    ),
    ("GET", "/keys"): Case(lambda f: ("GET", "/keys", {}), lambda f, r: _no_key_of_a(f, r)),
    ("POST", "/keys/rotate"): Case(lambda f: ("POST", "/keys/rotate", {}), b_rotates_only_its_own),
    ("POST", "/admin/tenants"): Case(lambda f: ("POST", "/admin/tenants", {"json": {"id": "farm-c"}}), admin_only),
    ("POST", "/admin/tenants/{tenant}/keys"): Case(lambda f: ("POST", "/admin/tenants/farm-a/keys", {}), admin_only),
    ("GET", "/admin/tenants/{tenant}/keys"): Case(lambda f: ("GET", "/admin/tenants/farm-a/keys", {}), admin_only),
    ("DELETE", "/admin/tenants/{tenant}/keys/{key_id}"): Case(
        lambda f: ("DELETE", f"/admin/tenants/farm-a/keys/{f.a_key_id}", {}), admin_only
    ),
    ("POST", "/admin/tenants/{tenant}/keys/{key_id}/rotate"): Case(
        lambda f: ("POST", f"/admin/tenants/farm-a/keys/{f.a_key_id}/rotate", {}), admin_only
    ),
    ("PUT", "/admin/devices/{device_id}"): Case(
        lambda f: ("PUT", "/admin/devices/a-cow", {"json": {"tenant": "farm-b"}}), admin_only
    ),
    # public: no key, no farm data
    ("GET", "/healthz"): Case(lambda f: ("GET", "/healthz", {}), nothing_of_a),
    ("GET", "/readyz"): Case(lambda f: ("GET", "/readyz", {}), nothing_of_a),
    ("GET", "/metrics"): Case(lambda f: ("GET", "/metrics", {}), nothing_of_a),
    ("GET", "/openapi.json"): Case(lambda f: ("GET", "/openapi.json", {}), nothing_of_a),
    ("GET", "/docs"): Case(lambda f: ("GET", "/docs", {}), nothing_of_a),
    ("GET", "/docs/oauth2-redirect"): Case(lambda f: ("GET", "/docs/oauth2-redirect", {}), nothing_of_a),
    ("GET", "/redoc"): Case(lambda f: ("GET", "/redoc", {}), nothing_of_a),
}
# answered from the API's memory (the fence index), not Redis: they keep answering while it is down
FROM_MEMORY = {
    ("GET", "/query/fences"),
    ("POST", "/query/fences"),
    ("GET", "/healthz"),
    ("GET", "/fences/quarantined"),
} | {("GET", p) for p in ("/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")}


def _no_key_of_a(f: Farms, r: httpx.Response) -> None:
    assert r.status_code == 200 and f.a_key_id not in r.text, r.text


def route_table() -> set[tuple[str, str]]:
    app = create_app(Settings()).app
    return {
        (m, r.path)  # type: ignore[attr-defined]
        for r in flat_routes(app.routes)
        for m in getattr(r, "methods", None) or ()
        if m != "HEAD"
    }


def test_every_route_has_an_isolation_case():
    routes = route_table()
    assert routes - set(CASES) == set(), "routes without an isolation case: add one to CASES"
    assert set(CASES) - routes == set(), "cases for routes that no longer exist"


def call(f: Farms, case: Case, headers: dict[str, str]) -> httpx.Response:
    method, url, kw = case.request(f)
    kw = {**kw, "headers": {**headers, **kw.get("headers", {})}}
    if not case.stream:
        return f.api.request(method, url, **kw)
    with f.api.stream(method, url, **kw, timeout=5) as s:
        s.read() if s.status_code != 200 else None
        return s


async def _broken_fences_of(tenant: str, live: Any) -> None:
    store = RedisStore(live.redis_url, live.prefix)
    await store.connect()
    try:
        await write_broken(store, tenant)
        # farm A's grazing of its fence, as the worker's save writes it (HINCRBY)
        for key, fields in store.grazing_writes({(tenant, "a-fence", "a-mob", "2026-05-28"): 7_654_321}).items():
            for field, ms in fields.items():
                await store.redis.hincrby(key, field, ms)
    finally:
        await store.close()


@pytest.fixture
def farms(live) -> Iterator[Farms]:
    proc, port = live.start_worker()
    api_proc, base = live.start_api()
    wait_api(base, api_proc)
    with httpx.Client(base_url=base, timeout=10) as api:
        made = api.post("/admin/tenants", json={"id": "farm-a"}, headers=ADMIN).json()
        a = {"Authorization": f"Bearer {made['api_key']}"}
        made_b = api.post("/admin/tenants", json={"id": "farm-b"}, headers=ADMIN).json()
        b = {"Authorization": f"Bearer {made_b['api_key']}"}
        assert api.post("/fences", json=feature("a-fence", geometry=A_SQUARE, name="A"), headers=a).status_code == 201
        assert api.post("/fences", json=feature("b-fence", geometry=B_SQUARE), headers=b).status_code == 201
        assert api.put("/devices/a-cow", headers=a).status_code == 200
        mob = {"id": "a-mob", "fences": ["a-fence"], "devices": ["a-cow"]}
        assert api.post("/mobs", json=mob, headers=a).status_code == 201
        assert api.put("/herd/settings", json={"confirm_fixes": 5}, headers=a).status_code == 200
        run(_broken_fences_of("farm-a", live))  # A has a fence the index quarantines: A's alone to see
        deadline = time.monotonic() + 10
        while len(api.get("/fences/quarantined", headers=a).json()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [q["id"] for q in api.get("/fences/quarantined", headers=a).json()] == ["garbage", "old-3d"]
        wait_ready(port, proc)
        time.sleep(1.0)  # the claim reaches the worker through the change feed
        fixes = [
            {"device_id": "a-cow", "ts": 1_780_000_000_000, **OUTSIDE},
            {"device_id": "a-cow", "ts": 1_780_000_060_000, **POINT},  # 600 m in a minute: a cow, not a jump
        ]
        assert api.post("/locations", json=fixes, headers=a).status_code == 202
        deadline = time.monotonic() + 20
        while not (history := api.get("/events", headers=a).json()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert history and history[0]["fence_id"] == "a-fence"
        ids = api.get("/events", headers=a)
        assert ids.status_code == 200
        a_event_id = _first_stream_id(api, a)
        yield Farms(api, a, b, made["id"], a_event_id)


def _first_stream_id(api: httpx.Client, a: dict[str, str]) -> str:
    with api.stream("GET", "/events/stream", headers={**a, "Last-Event-ID": "0-0"}, timeout=10) as s:
        for line in s.iter_lines():
            if line.startswith("id:"):
                return line[3:].strip()
    raise AssertionError("farm A's stream sent no event")


def test_another_farm_sees_and_changes_nothing(farms):
    received: list[str] = []
    stop = threading.Event()

    def listen() -> None:  # farm B's live stream while A's device moves
        try:
            with httpx.stream("GET", f"{farms.api.base_url}/events/stream", headers=farms.b, timeout=20) as s:
                for line in s.iter_lines():
                    received.append(line)
                    if stop.is_set():
                        return
        except httpx.HTTPError:
            pass

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    for (method, path), case in sorted(CASES.items()):
        r = call(farms, case, farms.b)
        try:
            case.check(farms, r)
        except AssertionError as exc:
            raise AssertionError(f"{method} {path}: {exc}") from exc
    # A's cow leaves A's fence: an event for A, none for B
    out = {"device_id": "a-cow", "ts": 1_780_000_120_000, **OUTSIDE}
    assert farms.api.post("/locations", json=out, headers=farms.a).status_code == 202
    deadline = time.monotonic() + 20
    while len(farms.api.get("/events", headers=farms.a).json()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)  # past the reader's wait: had it been sent to B, it would have arrived
    stop.set()
    assert not [x for x in received if x.startswith("data:")], received
    with farms.api.stream("GET", "/events/stream", headers={**farms.b, "Last-Event-ID": "0-0"}, timeout=3) as s:
        lines = []
        try:
            for line in s.iter_lines():
                lines.append(line)
        except httpx.ReadTimeout:
            pass
    assert not [x for x in lines if x.startswith("data:")], lines  # B's whole history: nothing of A's


def roles() -> dict[tuple[str, str], str | None]:
    app = create_app(Settings()).app
    return {
        (m, r.path): role_of(r)  # type: ignore[attr-defined]
        for r in flat_routes(app.routes)
        for m in getattr(r, "methods", None) or ()
        if m != "HEAD"
    }


def expected_in_outage(route: tuple[str, str], role: str | None, caller: str) -> int:
    """What a route answers with Redis down: 503, unless it needs no Redis for this caller."""
    if role is None:
        return 200 if route in FROM_MEMORY else 503
    if role == "admin":
        return 503 if caller == "admin" else 401
    if caller == "admin":
        return 401  # the admin key is not a farm's: refused without asking Redis
    if caller == "unknown":
        return 503  # the key cannot be looked up
    return 200 if route in FROM_MEMORY else 503


def test_every_route_answers_503_while_redis_is_down(live, tmp_path):
    port = free_port()
    table = roles()
    checked = 0
    with start_redis(port, logdir=tmp_path) as redis:
        proc, base = live.start_api(redis_url=f"redis://127.0.0.1:{port}/0")
        wait_api(base, proc)
        with httpx.Client(base_url=base, timeout=10) as api:
            a = api.post("/admin/tenants", json={"id": "farm-a"}, headers=ADMIN).json()
            b = api.post("/admin/tenants", json={"id": "farm-b"}, headers=ADMIN).json()
            keys = {"farm": {"Authorization": f"Bearer {b['api_key']}"}, "unknown": {"Authorization": "Bearer nope"}}
            f = Farms(api, {"Authorization": f"Bearer {a['api_key']}"}, keys["farm"], a["id"], "1-0")
            assert api.get("/fences", headers=f.b).status_code == 200  # B's key is in the cache now
            redis.stop()
            for route, case in sorted(CASES.items()):
                for caller, headers in (*keys.items(), ("admin", ADMIN)):
                    started = time.monotonic()
                    r = call(f, case, headers)
                    assert time.monotonic() - started < 5.0, (route, caller)
                    want = expected_in_outage(route, table[route], caller)
                    assert r.status_code == want, (route, caller, r.status_code)
                    if want == 503:
                        assert r.headers["retry-after"], (route, caller)
                        if route != ("GET", "/readyz"):
                            assert r.headers["content-type"] == "application/problem+json", (route, caller)
                    checked += 1
        assert proc.poll() is None
    assert checked == 3 * len(CASES)

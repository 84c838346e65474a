"""The herd over REST against the real servers: mobs (ETags, If-Match, per-farm ids, the farm's
own fences and collars, one mob per collar, limits), herd settings (the farm's and the admin's,
validated), the device's herd fields and the paged alert lists."""

from __future__ import annotations

import asyncio

import pytest

from fencex.detector import DeviceState
from fencex.event import Event
from fencex.store.redis import RedisStore
from tests.integration.conftest import two_farms
from tests.integration.test_api import ADMIN, FAR, feature, is_problem

pytestmark = pytest.mark.integration


@pytest.fixture
def api(live):
    with two_farms(live, FENCEX_MAX_DEVICES_PER_MOB="3", FENCEX_MAX_MOBS_PER_TENANT="3") as client:
        assert client.post("/fences", json=feature("north"), headers=client.a).status_code == 201
        pond = feature("pond", geometry=FAR, kind="exclusion")
        assert client.post("/fences", json=pond, headers=client.a).status_code == 201
        assert client.post("/fences", json=feature("b-field", geometry=FAR), headers=client.b).status_code == 201
        for cow in ("cow-1", "cow-2", "cow-3", "cow-4"):
            assert client.put(f"/devices/{cow}", headers=client.a).status_code == 200
        assert client.put("/devices/b-cow", headers=client.b).status_code == 200
        yield client


def test_mob_crud_with_etags(api):
    r = api.post("/mobs", json={"id": "ewes", "name": "Ewes", "fences": ["north"], "devices": ["cow-1"]}, headers=api.a)
    assert r.status_code == 201 and r.headers["etag"] == '"1"' and r.headers["location"] == "/mobs/ewes", r.text
    assert r.json() == {**r.json(), "id": "ewes", "fences": ["north"], "devices": ["cow-1"], "version": 1}
    assert "tenant" not in r.json()
    is_problem(api.post("/mobs", json={"id": "ewes"}, headers=api.a), 409, "exists")
    got = api.get("/mobs/ewes", headers=api.a)
    assert got.status_code == 200 and got.headers["etag"] == '"1"'
    body = {"name": "Ewes", "fences": ["north", "pond"], "devices": ["cow-1", "cow-2"]}
    put = api.put("/mobs/ewes", json=body, headers={**api.a, "If-Match": '"1"'})
    assert put.status_code == 200 and put.json()["version"] == 2
    stale = api.put("/mobs/ewes", json=body, headers={**api.a, "If-Match": '"1"'})
    is_problem(stale, 412, "the mob is at version 2")
    assert stale.json()["current_version"] == 2
    made = api.put("/mobs/rams", json={}, headers=api.a)
    assert made.status_code == 201 and made.json()["version"] == 1
    listed = api.get("/mobs", params={"limit": 1}, headers=api.a).json()
    assert [m["id"] for m in listed["mobs"]] == ["ewes"] and listed["total"] == 2 and listed["next_offset"] == 1
    is_problem(api.delete("/mobs/ewes", headers={**api.a, "If-Match": '"1"'}), 412)
    assert api.delete("/mobs/ewes", headers={**api.a, "If-Match": '"2"'}).status_code == 204
    is_problem(api.get("/mobs/ewes", headers=api.a), 404)
    is_problem(api.put("/mobs/rams", json={"id": "ewes"}, headers=api.a), 422, "differs from the URL")


def test_a_mob_names_the_farms_own_fences_and_collars_once(api):
    is_problem(
        api.post("/mobs", json={"fences": ["north", "b-field", "nope"]}, headers=api.a), 422, "'b-field', 'nope'"
    )
    is_problem(api.post("/mobs", json={"devices": ["cow-1", "b-cow"]}, headers=api.a), 422, "'b-cow' not registered")
    assert api.post("/mobs", json={"id": "ewes", "devices": ["cow-1", "cow-2"]}, headers=api.a).status_code == 201
    taken = api.post("/mobs", json={"id": "rams", "devices": ["cow-3", "cow-2"]}, headers=api.a)
    is_problem(taken, 409, "already in mob 'ewes'")
    assert taken.json()["mob"] == "ewes" and taken.json()["devices"] == ["cow-2"]
    many = api.post("/mobs", json={"devices": ["cow-1", "cow-2", "cow-3", "cow-4"]}, headers=api.a)
    is_problem(many, 422, "limit of 3")
    assert many.json()["limit"] == "max_devices_per_mob"
    is_problem(api.post("/mobs", json={"devices": "cow-1"}, headers=api.a), 422)  # a list, strictly
    is_problem(api.post("/mobs", json={"id": "bad id"}, headers=api.a), 422)
    for _ in range(2):
        assert api.post("/mobs", json={}, headers=api.a).status_code == 201
    is_problem(api.post("/mobs", json={}, headers=api.a), 422, "limit is 3")
    # the same id on another farm is another mob
    assert api.post("/mobs", json={"id": "ewes", "devices": ["b-cow"]}, headers=api.b).status_code == 201
    assert api.get("/mobs/ewes", headers=api.a).json()["devices"] == ["cow-1", "cow-2"]


def test_herd_settings_the_farms_and_the_admins(api):
    defaults = api.get("/herd/settings", headers=api.a).json()
    assert defaults == {
        "confirm_fixes": 2,
        "battery_low_pct": 20.0,
        "battery_margin_pct": 5.0,
        "accuracy_limit_m": 25.0,
        "max_speed_mps": 20.0,
        "silence_s": 3600.0,
        "timezone": "UTC",
        "track_window_s": 86400.0,
    }
    put = api.put("/herd/settings", json={"silence_s": 120, "confirm_fixes": 3.0}, headers=api.a)  # 3.0: an integer
    assert put.status_code == 200 and put.json() == {**defaults, "silence_s": 120.0, "confirm_fixes": 3}
    time = {"silence_s": 120, "confirm_fixes": 3, "timezone": "Europe/Stockholm", "track_window_s": 7200}
    put = api.put("/herd/settings", json=time, headers=api.a)
    assert put.status_code == 200 and put.json() == {**defaults, **time}
    assert api.get("/herd/settings", headers=api.a).json()["timezone"] == "Europe/Stockholm"
    assert api.get("/herd/settings", headers=api.a).json()["silence_s"] == 120.0
    assert api.get("/herd/settings", headers=api.b).json() == defaults  # farm B's own
    for bad, where in (
        ({"confirm_fixes": 0}, "confirm_fixes"),
        ({"confirm_fixes": 1000}, "confirm_fixes"),
        ({"confirm_fixes": 2.5}, "confirm_fixes"),
        ({"confirm_fixes": "2"}, "confirm_fixes"),
        ({"battery_low_pct": -1}, "battery_low_pct"),
        ({"battery_low_pct": 95}, "battery_low_pct"),  # bounded: battery_ok stays reachable
        ({"battery_margin_pct": 11}, "battery_margin_pct"),
        ({"max_speed_mps": 0}, "max_speed_mps"),
        ({"silence_s": -5}, "silence_s"),
        ({"silence_s": 59.9}, "silence_s"),  # floors: below them every collar or fix is an alarm or slow
        ({"max_speed_mps": 0.5}, "max_speed_mps"),
        ({"accuracy_limit_m": 0.1}, "accuracy_limit_m"),
        ({"accuracy_limit_m": "25"}, "accuracy_limit_m"),
        ({"colour": "red"}, "colour"),
        ({"timezone": "Europe/Atlantis"}, "timezone"),
        ({"timezone": 1}, "timezone"),
        ({"track_window_s": 60}, "track_window_s"),  # floor: an hour
        ({"track_window_s": 30 * 86_400}, "track_window_s"),  # ceiling: a week
    ):
        is_problem(api.put("/herd/settings", json=bad, headers=api.a), 422, where)
    assert api.get("/herd/settings", headers=api.a).json()["silence_s"] == 120.0  # unchanged
    admin = api.put("/admin/tenants/farm-b/herd/settings", json={"battery_low_pct": 30}, headers=ADMIN)
    assert admin.status_code == 200 and api.get("/herd/settings", headers=api.b).json()["battery_low_pct"] == 30.0
    assert api.get("/admin/tenants/farm-a/herd/settings", headers=ADMIN).json()["silence_s"] == 120.0
    is_problem(api.get("/admin/tenants/nobody/herd/settings", headers=ADMIN), 404)
    is_problem(api.put("/admin/tenants/farm-a/herd/settings", json={}, headers=api.a), 401, "admin key")


async def _save(live, states: dict[str, DeviceState], events: list[Event]) -> None:
    store = RedisStore(live.redis_url, live.prefix)
    await store.connect()
    try:
        await store.save_packed(store.pack_save(states, events))
    finally:
        await store.close()


def test_the_device_shows_its_herd_state_and_the_farm_its_alerts(api):
    """What a worker saved (written here as the worker's save writes it), as the farmer reads it."""
    made = api.post("/mobs", json={"id": "ewes", "fences": ["north"], "devices": ["cow-1"]}, headers=api.a)
    assert made.status_code == 201, made.text
    cow1 = DeviceState(
        "farm-a",
        1_780_000_000_000,
        17.7,
        59.9,
        out=True,
        pasture="north",
        battery=12.5,
        low=True,
        seen_ms=1_780_000_000_250,
    )
    others = {f"cow-{i}": DeviceState("farm-a", 1_780_000_000_000, 17.7, 59.9, silent=True) for i in (2, 3, 4)}
    events = [
        Event("escape", "farm-a", "cow-1", "north", 0, 1_780_000_000_000, 17.7, 59.9, distance_m=40.0),
        Event("battery_low", "farm-a", "cow-1", "", 0, 1_780_000_000_000, 17.7, 59.9, battery=12.5),
        *(Event("silent", "farm-a", d, "", 0, 1_780_000_000_000 + i, 17.7, 59.9) for i, d in enumerate(others)),
    ]
    asyncio.run(_save(api.live, {"cow-1": cow1, **others}, events))
    d = api.get("/devices/cow-1", headers=api.a).json()
    assert d["mob"] == "ewes" and d["out"] is True and d["pasture"] == "north"
    assert d["battery"] == 12.5 and d["battery_low"] is True and d["silent"] is False
    assert d["last_seen"] == "2026-05-28T20:26:40.000Z" and d["last_arrival"] == "2026-05-28T20:26:40.250Z"
    d2 = api.get("/devices/cow-2", headers=api.a).json()
    assert d2["mob"] is None and d2["silent"] is True and d2["last_arrival"] is None and d2["pasture"] is None
    page = api.get("/alerts", params={"limit": 2}, headers=api.a).json()
    assert page["counts"] == {"out": 1, "silent": 3, "battery_low": 1}
    seen = [(a["kind"], a["device_id"]) for a in page["alerts"]]
    while page["next_cursor"]:
        page = api.get("/alerts", params={"limit": 2, "cursor": page["next_cursor"]}, headers=api.a).json()
        seen += [(a["kind"], a["device_id"]) for a in page["alerts"]]
    assert seen == [
        ("out", "cow-1"),
        ("silent", "cow-2"),
        ("silent", "cow-3"),
        ("silent", "cow-4"),
        ("battery_low", "cow-1"),
    ]
    silent = api.get("/alerts", params={"kind": "silent"}, headers=api.a).json()
    assert [a["device_id"] for a in silent["alerts"]] == ["cow-2", "cow-3", "cow-4"]
    assert silent["counts"] == {"silent": 3} and silent["next_cursor"] is None
    assert api.get("/alerts", headers=api.b).json()["alerts"] == []  # farm B's lists are its own
    is_problem(api.get("/alerts", params={"cursor": "lost.1.cow-1"}, headers=api.a), 422, "cursor")
    # a cursor of a list before the one asked for: that list from its start
    after_out = api.get("/alerts", params={"kind": "silent", "cursor": "out.1.cow-1"}, headers=api.a).json()
    assert [a["device_id"] for a in after_out["alerts"]] == ["cow-2", "cow-3", "cow-4"]
    past = api.get("/alerts", params={"kind": "out", "cursor": "silent.1.cow-1"}, headers=api.a).json()
    assert past["alerts"] == [] and past["next_cursor"] is None  # past the end of the list asked for
    is_problem(api.get("/alerts", params={"kind": "lost"}, headers=api.a), 422)

"""Rotation schedules against the real API, broker and redis-server (issue 12 part 4): the fence
schema carries a schedule, ``POST /rotations`` sets several at once (all or none), and a schedule
set while the partitions move between workers gives each device its transitions once, at their
scheduled instants, with the ids a replay would give."""

from __future__ import annotations

import time
from collections import defaultdict

import orjson
import pytest

from fencex.event import event_id
from fencex.fence import Fence
from fencex.schedule import Schedule
from fencex.store.redis import RedisStore
from tests.integration.conftest import events_of, read, run, two_farms, wait_ready
from tests.integration.test_api import FAR, feature, is_problem

pytestmark = pytest.mark.integration

DAILY = {"timezone": "Europe/Stockholm", "windows": [{"kind": "daily", "start": "06:00", "end": "18:00"}]}
WEEK = {
    "timezone": "Europe/Stockholm",
    "windows": [{"kind": "absolute", "from": "2026-11-22T06:00:00+01:00", "to": "2026-11-29T18:00:00+01:00"}],
}


@pytest.fixture
def api(live):
    with two_farms(live) as client:
        yield client


def _schedule_of(api, fid: str) -> tuple[int, dict | None]:
    got = api.get(f"/fences/{fid}", headers=api.a)
    assert got.status_code == 200, got.text
    return got.json()["properties"]["version"], got.json()["properties"]["schedule"]


def test_a_rotation_sets_the_schedules_of_several_fences_all_or_none(api):
    a = api.a
    assert api.post("/fences", json=feature("north", name="North"), headers=a).status_code == 201
    assert api.post("/fences", json=feature("south", geometry=FAR, schedule=WEEK), headers=a).status_code == 201
    assert _schedule_of(api, "south") == (1, Schedule.model_validate(WEEK).model_dump(mode="json"))
    r = api.post(
        "/rotations",
        json={"fences": {"north": {"schedule": DAILY}, "south": {"schedule": None, "if_match": 1}}},
        headers=a,
    )
    assert r.status_code == 200, r.text
    assert [(f["id"], f["properties"]["version"]) for f in r.json()["features"]] == [("north", 2), ("south", 2)]
    daily = Schedule.model_validate(DAILY).model_dump(mode="json")
    assert _schedule_of(api, "north") == (2, daily) and _schedule_of(api, "south") == (2, None)
    assert daily["windows"][0]["start"] == "06:00:00"
    # one stale if_match: 412 naming that fence, and nothing written
    r = api.post(
        "/rotations",
        json={"fences": {"north": {"schedule": WEEK, "if_match": 2}, "south": {"schedule": WEEK, "if_match": 1}}},
        headers=a,
    )
    is_problem(r, 412, "fence 'south'")
    assert _schedule_of(api, "north") == (2, daily) and _schedule_of(api, "south") == (2, None)
    # a fence not the farm's (another farm's is not there for it): 404, nothing written
    b_side = api.post("/rotations", json={"fences": {"north": {"schedule": None}}}, headers=api.b)
    is_problem(b_side, 404, "no fence 'north' on this farm")
    r = api.post(
        "/rotations",
        json={"fences": {"north": {"schedule": None}, "nowhere": {"schedule": None}}},
        headers=a,
    )
    is_problem(r, 404, "'nowhere'")
    assert _schedule_of(api, "north") == (2, daily)
    # a bad zone, a bad window, no fence, a version that is not a number: 422
    bad_zone = {**DAILY, "timezone": "Europe/Atlantis"}
    is_problem(api.post("/rotations", json={"fences": {"north": {"schedule": bad_zone}}}, headers=a), 422)
    backwards = {"windows": [{"kind": "absolute", "from": "2026-11-29T00:00:00Z", "to": "2026-11-22T00:00:00Z"}]}
    is_problem(api.post("/rotations", json={"fences": {"north": {"schedule": backwards}}}, headers=a), 422)
    is_problem(api.post("/rotations", json={"fences": {}}, headers=a), 422)
    is_problem(api.post("/rotations", json={"fences": {"north": {"schedule": None, "if_match": "2"}}}, headers=a), 422)
    is_problem(api.post("/fences", json=feature("east", schedule=bad_zone), headers=a), 422)
    assert _schedule_of(api, "north") == (2, daily)
    # the fence routes carry it too: PATCH sets and clears it
    assert api.patch("/fences/north", json={"schedule": WEEK}, headers=a).status_code == 200
    assert _schedule_of(api, "north") == (3, Schedule.model_validate(WEEK).model_dump(mode="json"))
    assert api.patch("/fences/north", json={"schedule": None}, headers=a).status_code == 200
    assert _schedule_of(api, "north") == (4, None)


# ------------------------------------------------------------------ the workers

SQUARE = {
    "type": "Polygon",
    "coordinates": [[[17.60, 59.80], [17.61, 59.80], [17.61, 59.81], [17.60, 59.81], [17.60, 59.80]]],
}
COWS = [f"cow-{i}" for i in range(8)]  # spread over the 4 partitions


async def _put(live, schedule: Schedule | None) -> None:
    store = RedisStore(live.redis_url, live.prefix)
    await store.connect()
    try:
        await store.put_fences([Fence(id="north", tenant="farm", geometry=SQUARE, kind="zone", schedule=schedule)])
        await store.register_devices({c: "farm" for c in COWS})
    finally:
        await store.close()


def _window(start_ms: int, end_ms: int) -> Schedule:
    iso = [time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(x / 1000)) for x in (start_ms, end_ms)]
    return Schedule.model_validate({"windows": [{"kind": "absolute", "from": iso[0], "to": iso[1]}]})


def test_a_schedule_set_across_a_rebalance_gives_each_transition_once(live):
    run(_put(live, None))
    a, port_a = live.start_worker()
    wait_ready(port_a, a)
    reader = live.consumer(live.events)
    ts0 = (int(time.time()) - 1) * 1000
    live.produce([(c, orjson.dumps({"device_id": c, "ts": ts0, "lon": 17.605, "lat": 59.805})) for c in COWS])
    got = read(reader, lambda g: len(g) >= len(COWS))
    assert sorted(e["type"] for e in events_of(got)) == ["enter"] * len(COWS)
    # the zone is made active from 8 s from now, for 10 s; a second worker joins meanwhile
    opens = (int(time.time()) + 8) * 1000
    closes = opens + 10_000
    run(_put(live, _window(opens, closes)))
    b, port_b = live.start_worker()
    wait_ready(port_b, b)

    def by_cow(msgs: list) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for e in events_of(msgs):
            out[e["device_id"]].append(e["event_id"])
        return out

    got += read(reader, lambda g: sum(len(v) for v in by_cow(got + g).values()) >= 4 * len(COWS), timeout=90)
    time.sleep(4.0)  # more than a transition's worth: nobody repeats one
    got += read(reader, lambda g: False, timeout=2.0)
    expected = {
        c: [
            event_id(c, "north", 1, "enter", ts0),
            # the schedule is set while the zone was inactive at the cow's last fix: an exit, as from a
            # deleted fence (of the version the cow entered)
            event_id(c, "north", 1, "exit", ts0),
            event_id(c, "north", 2, "enter", opens),  # at the scheduled instants, with no fix
            event_id(c, "north", 2, "exit", closes),
        ]
        for c in COWS
    }
    assert dict(by_cow(got)) == expected
    assert a.poll() is None and b.poll() is None

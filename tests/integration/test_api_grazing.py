"""Grazing time through a real Redis and the API process: a hand-computed track of two collars (over the
farm's midnight, a gap past the silence, a mob, a late fix that moves an exit earlier) is credited by the
core, written with HINCRBY and an expiry as the worker's save does, and read back per day and mob, and
as the farm's table; another farm sees none of it."""

from __future__ import annotations

from datetime import datetime

import pytest

from fencex.detector import DeviceState
from fencex.fix import Fix
from fencex.grazing import Grazing
from fencex.herd import Mob
from fencex.index import FenceIndex
from fencex.late import merge
from fencex.pipeline import process
from fencex.store.grazing import GRAZING_TTL_S, IN_A_THREAD, GrazingRow
from fencex.store.redis import RedisStore
from fencex.track import Track
from tests.integration.conftest import run, two_farms
from tests.integration.test_api import FAR, feature, is_problem

pytestmark = pytest.mark.integration
MIN = 60_000
IN, OUT = (17.605, 59.805), (17.59, 59.79)  # inside "north" (17.60..17.61, 59.80..59.81), and outside it


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


@pytest.fixture
def api(live):
    with two_farms(live) as client:
        assert client.post("/fences", json=feature("north", name="North paddock"), headers=client.a).status_code == 201
        assert client.post("/fences", json=feature("b-field", geometry=FAR), headers=client.b).status_code == 201
        settings = {"timezone": "Europe/Stockholm", "silence_s": 3600, "max_speed_mps": 100}
        assert client.put("/herd/settings", json=settings, headers=client.a).status_code == 200
        yield client


async def save(store: RedisStore, acc: Grazing) -> None:
    """As the worker's save: HINCRBY each field, and the key's expiry, in one step."""
    async with store.redis.pipeline(transaction=True) as pipe:
        for key, fields in store.grazing_writes(acc).items():
            for f, v in fields.items():
                pipe.hincrby(key, f, v)
            pipe.expire(key, GRAZING_TTL_S)
        await pipe.execute()


async def graze(live) -> None:
    """The track, credited by the core as the worker does (its farm's stored rules), and saved.

    cow-1 (no mob): out at 23:30 local (22:30Z), in at 23:40, in at 00:10, out at 00:20: inside from 22:40Z
    to 23:20Z, 20 min on the 20th and 20 min on the 21st (Stockholm's midnight is 23:00Z). Then a late fix,
    out at 00:15 local: the exit 5 min earlier, 15 min on the 21st.
    cow-2 (mob ewes): in at 09:00, 09:30 and 11:30 local on the 21st: 30 min, then a 2 h gap counted as the
    farm's silence (1 h): 1.5 h on the 21st. Farm B's collar: 10 min in its own field."""
    store = RedisStore(live.redis_url, live.prefix)
    await store.connect()
    try:
        rules = await store.get_herd_rules("farm-a")
        assert rules.timezone == "Europe/Stockholm"
        rules_of = {"farm-a": rules, "farm-b": await store.get_herd_rules("farm-b")}.__getitem__
        index = FenceIndex(await store.fences())
        ewes = Mob(id="ewes")
        owner = {"cow-1": "farm-a", "cow-2": "farm-a", "b-cow": "farm-b"}
        mobs = {"cow-2": ewes}
        fixes = [
            Fix("cow-1", ms("2026-11-20T22:30:00Z"), *OUT),
            Fix("cow-1", ms("2026-11-20T22:40:00Z"), *IN),
            Fix("cow-1", ms("2026-11-20T23:10:00Z"), *IN),
            Fix("cow-1", ms("2026-11-20T23:20:00Z"), *OUT),
            Fix("cow-2", ms("2026-11-21T08:00:00Z"), *IN),
            Fix("cow-2", ms("2026-11-21T08:30:00Z"), *IN),
            Fix("cow-2", ms("2026-11-21T10:30:00Z"), *IN),
            Fix("b-cow", ms("2026-11-21T08:00:00Z"), 18.005, 60.005),
            Fix("b-cow", ms("2026-11-21T08:10:00Z"), 18.005, 60.005),
        ]
        states: dict[str, DeviceState] = {}
        track = Track()
        for f in fixes:  # a fix a batch: cow-1's track kept for the late merge
            out = process([f], index, states, owner.__getitem__, rules_of, mobs.get)
            if f.device_id == "cow-1":
                track.extend([f], out.events, states["cow-1"])
            await save(store, out.grazing)
        late = merge("cow-1", states["cow-1"], track, [Fix("cow-1", ms("2026-11-20T23:15:00Z"), *OUT)], index, rules)
        assert late.grazing == {("farm-a", "north", "", "2026-11-21"): -5 * MIN}
        await save(store, late.grazing)
        ttl = await store.redis.ttl(store.keys.grazing("farm-a", "2026-11-21"))
        assert GRAZING_TTL_S - 60 < ttl <= GRAZING_TTL_S
    finally:
        await store.close()


def amount(minutes: float) -> dict:
    return {"ms": int(minutes * MIN), "animal_hours": round(minutes / 60, 3)}


def test_a_fences_grazing_per_day_and_mob_from_a_hand_computed_track(api):
    run(graze(api.live))
    r = api.get("/fences/north/grazing", params={"from": "2026-11-19", "to": "2026-11-22"}, headers=api.a)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "fence_id": "north",
        "name": "North paddock",
        "timezone": "Europe/Stockholm",
        "from": "2026-11-19",
        "to": "2026-11-22",
        "days": [
            {"date": "2026-11-20", **amount(20), "mobs": [{"mob_id": "", **amount(20)}]},
            {
                "date": "2026-11-21",
                **amount(105),
                "mobs": [{"mob_id": "", **amount(15)}, {"mob_id": "ewes", **amount(90)}],
            },
        ],
        "total": amount(125),
    }
    one = api.get("/fences/north/grazing", params={"from": "2026-11-21", "to": "2026-11-21"}, headers=api.a).json()
    assert [d["date"] for d in one["days"]] == ["2026-11-21"] and one["total"] == amount(105)


def test_the_farms_table_and_another_farm(api):
    run(graze(api.live))
    days = {"from": "2026-11-20", "to": "2026-11-21"}
    table = api.get("/grazing", params=days, headers=api.a)
    assert table.status_code == 200, table.text
    assert table.json()["fences"] == [
        {
            "fence_id": "north",
            "name": "North paddock",
            **amount(125),
            "days": [{"date": "2026-11-20", **amount(20)}, {"date": "2026-11-21", **amount(105)}],
        }
    ]
    # farm B: its own field only; farm A's fence does not exist for it
    theirs = api.get("/grazing", params=days, headers=api.b).json()
    assert [(f["fence_id"], f["ms"]) for f in theirs["fences"]] == [("b-field", 10 * MIN)]
    assert "north" not in str(theirs) and theirs["timezone"] == "UTC"
    is_problem(api.get("/fences/north/grazing", params=days, headers=api.b), 404, "no fence 'north'")
    is_problem(api.get("/fences/north/grazing", params={"from": "2026-11-22", "to": "2026-11-21"}, headers=api.a), 422)
    is_problem(api.get("/grazing", params={"from": "2020-01-01", "to": "2026-11-21"}, headers=api.a), 422, "366")


def test_a_year_of_days_reads_in_one_request(api):
    run(graze(api.live))
    r = api.get("/fences/north/grazing", params={"from": "2025-11-22", "to": "2026-11-21"}, headers=api.a)
    assert r.status_code == 200 and r.json()["total"] == amount(125), r.text
    assert api.get("/grazing", params={"from": "2025-11-22", "to": "2026-11-21"}, headers=api.a).status_code == 200


def test_a_large_farms_days_read_back_whole(live):
    """Past IN_A_THREAD fields a round trip, the days are decoded off the event loop: the same rows."""

    async def go() -> None:
        store = RedisStore(live.redis_url, live.prefix)
        await store.connect()
        try:
            fields = {f"f{i:05d}": i + 1 for i in range(IN_A_THREAD + 1)}
            for day in ("2026-11-20", "2026-11-21"):
                acc = {("farm-a", fid, "ewes", day): ms for fid, ms in fields.items()}
                await save(store, acc)
            rows = await store.grazing("farm-a", ["2026-11-20", "2026-11-21"])
            assert len(rows) == 2 * len(fields) and sum(r.ms for r in rows) == 2 * sum(fields.values())
            assert rows[0] == GrazingRow("2026-11-20", "f00000", "ewes", 1) and rows[-1].day == "2026-11-21"
            few = await store.grazing("farm-a", ["2026-11-21"], ["f00007", "f00009"])
            assert few == [
                GrazingRow("2026-11-21", "f00007", "ewes", 8),
                GrazingRow("2026-11-21", "f00009", "ewes", 10),
            ]
        finally:
            await store.close()

    run(go())

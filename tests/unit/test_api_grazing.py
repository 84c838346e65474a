"""Grazing over REST without servers: the OpenAPI contract of the two routes, the day ranges as a table,
and the answers' shape from an in-memory store."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from fencex.errors import NotFound
from fencex.herd import HerdRules
from fencex.store.grazing import GrazingRow
from services.api.app import create_app
from services.api.problem import Problem
from services.api.routers.grazing import MAX_DAYS, day_range
from services.api.settings import Settings
from tests.unit.factory import fence

SPEC = create_app(Settings()).app.openapi()
H = 3_600_000


def test_the_routes_are_documented_with_their_errors_and_examples():
    fence_op = SPEC["paths"]["/fences/{fence_id}/grazing"]["get"]
    farm_op = SPEC["paths"]["/grazing"]["get"]
    assert {p["name"] for p in fence_op["parameters"]} == {"fence_id", "from", "to"}
    assert {p["name"] for p in farm_op["parameters"]} == {"from", "to", "limit", "cursor"}
    for op in (fence_op, farm_op):
        assert op["tags"] == ["grazing"] and "422" in op["responses"]
        for p in op["parameters"]:
            if p["name"] in ("from", "to"):
                assert p["schema"]["anyOf"][0]["pattern"] == r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$" and p["schema"]["examples"]
    assert "404" in fence_op["responses"]
    example = SPEC["components"]["schemas"]["FenceGrazing"]["example"]
    day = example["days"][0]
    assert day["ms"] == sum(m["ms"] for m in day["mobs"]) == example["total"]["ms"]
    assert day["animal_hours"] == round(day["ms"] / H, 3)


TODAY = "2026-11-20"
RANGES = [
    # (rule, from, to, the days or the problem's words)
    ("one day", "2026-11-20", "2026-11-20", ["2026-11-20"]),
    ("both ends included", "2026-11-19", "2026-11-21", ["2026-11-19", "2026-11-20", "2026-11-21"]),
    ("over a month's end", "2026-02-28", "2026-03-01", ["2026-02-28", "2026-03-01"]),
    ("no from: the week ending at to", None, "2026-11-20", [f"2026-11-{d}" for d in range(14, 21)]),
    ("at most 366 days", "2025-11-20", "2026-11-20", 366),
    ("a day that does not exist", "2026-02-30", "2026-03-01", "not a day"),
    ("backwards", "2026-11-21", "2026-11-20", "after to"),
    ("more than 366 days", "2025-11-19", "2026-11-20", "at most 366"),
    (
        "a week before the first day there is: from the first",
        None,
        "0001-01-03",
        ["0001-01-01", "0001-01-02", "0001-01-03"],
    ),
]


@pytest.mark.parametrize("rule,first,last,want", RANGES, ids=[r[0] for r in RANGES])
def test_day_ranges(rule, first, last, want):
    if isinstance(want, str):
        with pytest.raises(Problem, match=want) as got:
            day_range(first, last, "UTC")
        assert got.value.status == 422
    else:
        days = day_range(first, last, "UTC")
        assert (len(days) if isinstance(want, int) else days) == want
        assert len(days) <= MAX_DAYS


def test_no_to_is_today_in_the_farms_zone():
    auckland, honolulu = day_range(None, None, "Pacific/Auckland"), day_range(None, None, "Pacific/Honolulu")
    assert len(auckland) == len(honolulu) == 7 and auckland[-1] > honolulu[-1]  # a day apart, always


# -- the answers, from an in-memory store -----------------------------------------------------------

ROWS = [
    GrazingRow("2026-11-19", "north", "", 2 * H),
    GrazingRow("2026-11-20", "north", "", H),
    GrazingRow("2026-11-20", "north", "ewes", 3 * H + 1800_000),
    GrazingRow("2026-11-20", "gone", "", H),  # a fence since deleted
    GrazingRow("2026-11-20", "south", "", 5 * H),
]


class Store:
    """Just enough of the store for the grazing routes: one farm's rows, its fences and settings."""

    def __init__(self) -> None:
        self.fences = {"north": fence("north", name="North paddock"), "south": fence("south", tenant="other")}
        self.asked: list[tuple[str, list[str], Any]] = []

    async def get_fence(self, tenant: str, fid: str) -> Any:
        got = self.fences.get(fid)
        if got is None or got.tenant != tenant:
            raise NotFound(f"no fence {fid!r}")
        return got

    async def get_herd_rules(self, tenant: str) -> HerdRules:
        return HerdRules(timezone="Europe/Stockholm")

    async def grazing(self, tenant: str, days: list[str], fence_ids: Any = None) -> list[GrazingRow]:
        self.asked.append((tenant, list(days), fence_ids))
        return [r for r in ROWS if r.day in days and (fence_ids is None or r.fence_id in fence_ids)]

    async def fences_by_id(self, ids: list[str], *, tenant: str | None = None) -> dict[str, Any]:
        return {i: self.fences.get(i) for i in ids}

    async def tenant_for_key(self, key: str) -> str | None:
        return "farm" if key == "key-a" else None


def get(url: str, store: Store | None = None, **params: Any) -> httpx.Response:
    edge = create_app(Settings(key_cache_s=0))
    s = store or Store()
    for name in ("get_fence", "get_herd_rules", "grazing", "fences_by_id", "tenant_for_key"):
        setattr(edge.state.store, name, getattr(s, name))
    edge.state.ready = True

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=edge), base_url="http://api") as client:
            return await client.get(url, params=params, headers={"Authorization": "Bearer key-a"})

    return asyncio.run(call())


def test_a_fence_per_day_and_per_mob():
    store = Store()
    r = get("/fences/north/grazing", store, **{"from": "2026-11-19", "to": "2026-11-20"})
    assert r.status_code == 200, r.text
    assert store.asked == [("farm", ["2026-11-19", "2026-11-20"], ["north"])]
    assert r.json() == {
        "fence_id": "north",
        "name": "North paddock",
        "timezone": "Europe/Stockholm",
        "from": "2026-11-19",
        "to": "2026-11-20",
        "days": [
            {
                "date": "2026-11-19",
                "ms": 2 * H,
                "animal_hours": 2.0,
                "mobs": [{"mob_id": "", "ms": 2 * H, "animal_hours": 2.0}],
            },
            {
                "date": "2026-11-20",
                "ms": 4 * H + 1800_000,
                "animal_hours": 4.5,
                "mobs": [
                    {"mob_id": "", "ms": H, "animal_hours": 1.0},
                    {"mob_id": "ewes", "ms": 3 * H + 1800_000, "animal_hours": 3.5},
                ],
            },
        ],
        "total": {"ms": 6 * H + 1800_000, "animal_hours": 6.5},
    }


@pytest.mark.parametrize(
    "url,params,status,words",
    [
        ("/fences/south/grazing", {}, 404, "no fence 'south'"),  # another farm's fence
        ("/fences/nope/grazing", {}, 404, "no fence 'nope'"),
        ("/fences/north/grazing", {"from": "2026-11-21", "to": "2026-11-20"}, 422, "after to"),
        ("/fences/north/grazing", {"from": "2024-01-01", "to": "2026-11-20"}, 422, "at most 366"),
        ("/fences/north/grazing", {"from": "20261120"}, 422, "from"),  # not YYYY-MM-DD
        ("/grazing", {"to": "2026-13-01"}, 422, "not a day"),
        ("/grazing", {"limit": 0}, 422, "limit"),
    ],
)
def test_refusals_are_problems(url, params, status, words):
    r = get(url, **params)
    assert r.status_code == status and r.headers["content-type"].startswith("application/problem+json"), r.text
    assert words in r.text


def test_the_farm_table_fence_by_day_with_names_paged():
    r = get("/grazing", **{"from": "2026-11-19", "to": "2026-11-20", "limit": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["timezone"], body["from"], body["to"], body["next_cursor"]) == (
        "Europe/Stockholm",
        "2026-11-19",
        "2026-11-20",
        "north",
    )
    assert body["fences"] == [
        {
            "fence_id": "gone",
            "name": None,
            "ms": H,
            "animal_hours": 1.0,
            "days": [{"date": "2026-11-20", "ms": H, "animal_hours": 1.0}],
        },
        {
            "fence_id": "north",
            "name": "North paddock",
            "ms": 6 * H + 1800_000,
            "animal_hours": 6.5,
            "days": [
                {"date": "2026-11-19", "ms": 2 * H, "animal_hours": 2.0},
                {"date": "2026-11-20", "ms": 4 * H + 1800_000, "animal_hours": 4.5},  # the mobs together
            ],
        },
    ]
    rest = get("/grazing", **{"from": "2026-11-19", "to": "2026-11-20", "cursor": "north"}).json()
    # south is another farm's fence now (its id taken since): this farm's grazing of it, without its name
    assert [(f["fence_id"], f["name"]) for f in rest["fences"]] == [("south", None)] and rest["next_cursor"] is None

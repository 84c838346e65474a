"""Grazing time: how long the farm's animals were inside each fence, per day of the farm (its time
zone, ``timezone`` in its herd settings) and per mob, in animal-hours (:mod:`fencex.grazing`)."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from fencex.grazing import hours
from fencex.herd import zone
from fencex.store.grazing import GrazingRow
from services.api.deps import Store, Tenant
from services.api.problem import Problem
from services.api.routers.fences import FENCE_ID, FenceIdPath

router = APIRouter(tags=["grazing"])
MAX_DAYS = 366
DAY = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
FromDay = Annotated[
    str | None,
    Query(
        alias="from",
        pattern=DAY,
        description="the first day (YYYY-MM-DD, the farm's); default: 6 days before `to` (a week)",
        examples=["2026-11-14"],
    ),
]
ToDay = Annotated[
    str | None,
    Query(
        alias="to",
        pattern=DAY,
        description="the last day, included (default: today, the farm's)",
        examples=["2026-11-20"],
    ),
]


def amount(ms: int) -> dict[str, Any]:
    return {"ms": ms, "animal_hours": round(hours(ms), 3)}


class Amount(BaseModel):
    ms: int = Field(description="milliseconds of animal-time inside")
    animal_hours: float = Field(description="the same in animal-hours (rounded to 0.001)")


class MobAmount(Amount):
    mob_id: str = Field(description='the mob ("": the farm\'s collars in no mob)')


class DayAmount(Amount):
    date: str = Field(description="the day (YYYY-MM-DD, the farm's time zone)")


class DayByMob(DayAmount):
    mobs: list[MobAmount] = Field(description="by mob id")


class FenceGrazing(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "example": {
                "fence_id": "north-paddock",
                "name": "North paddock",
                "timezone": "Europe/Stockholm",
                "from": "2026-11-20",
                "to": "2026-11-20",
                "days": [
                    {
                        "date": "2026-11-20",
                        **amount(1_483_200_000),
                        "mobs": [
                            {"mob_id": "", **amount(403_200_000)},
                            {"mob_id": "ewes", **amount(1_080_000_000)},
                        ],
                    }
                ],
                "total": amount(1_483_200_000),
            }
        },
    )

    fence_id: str
    name: str
    timezone: str = Field(description="the farm's time zone: its days")
    from_: str = Field(alias="from")
    to: str
    days: list[DayByMob] = Field(description="the days with grazing, oldest first (a day without is left out)")
    total: Amount


class FenceDays(Amount):
    fence_id: str
    name: str | None = Field(description="the fence's name; null for a fence since deleted")
    days: list[DayAmount] = Field(description="the days with grazing, oldest first, all mobs together")


class FarmGrazing(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "example": {
                "timezone": "Europe/Stockholm",
                "from": "2026-11-19",
                "to": "2026-11-20",
                "fences": [
                    {
                        "fence_id": "north-paddock",
                        "name": "North paddock",
                        **amount(2_966_400_000),
                        "days": [
                            {"date": "2026-11-19", **amount(1_483_200_000)},
                            {"date": "2026-11-20", **amount(1_483_200_000)},
                        ],
                    }
                ],
                "next_cursor": None,
            }
        },
    )

    timezone: str
    from_: str = Field(alias="from")
    to: str
    fences: list[FenceDays] = Field(description="by fence id: the fences with grazing in the range")
    next_cursor: str | None = Field(None, description="pass as cursor for the next page of fences; null on the last")


def day_range(first: str | None, last: str | None, tz: str) -> list[str]:
    """The days asked for, oldest first: 422 (problem+json) for a date that does not exist, a range
    backwards or longer than :data:`MAX_DAYS`."""
    try:
        end = date.fromisoformat(last) if last is not None else datetime.now(zone(tz)).date()
        start = date.fromisoformat(first) if first is not None else date.fromordinal(max(1, end.toordinal() - 6))
    except ValueError as exc:
        raise Problem(422, f"not a day: {exc} (YYYY-MM-DD)") from None
    if start > end:
        raise Problem(422, f"from ({start}) is after to ({end})")
    n = (end - start).days + 1
    if n > MAX_DAYS:
        raise Problem(422, f"{n} days asked for: at most {MAX_DAYS} in one request")
    return [(start + timedelta(days=i)).isoformat() for i in range(n)]


@router.get(
    "/fences/{fence_id}/grazing",
    response_model=FenceGrazing,
    summary="A fence's grazing time, per day and per mob",
    description="The animal-time spent inside the fence on each day of the farm (its time zone, in its herd "
    "settings), from each collar's enter to its exit (an interval between two fixes counts at most the farm's "
    "silence_s), per mob, corrected by late fixes. At most 366 days a request.",
    responses={404: {"description": "no such fence of my farm"}, 422: {"description": "a bad day or range"}},
)
async def fence_grazing(
    fence_id: FenceIdPath, tenant: Tenant, store: Store, first: FromDay = None, last: ToDay = None
) -> dict[str, Any]:
    fence = await store.get_fence(tenant, fence_id)  # 404 unless the caller's
    tz = (await store.get_herd_rules(tenant)).timezone
    days = day_range(first, last, tz)
    rows = await store.grazing(tenant, days, [fence_id])
    by_day: dict[str, list[GrazingRow]] = defaultdict(list)
    for r in rows:
        by_day[r.day].append(r)
    out = []
    for day, got in by_day.items():
        mobs = [{"mob_id": r.mob_id, **amount(r.ms)} for r in got]
        out.append({"date": day, **amount(sum(r.ms for r in got)), "mobs": mobs})
    return {
        "fence_id": fence.id,
        "name": fence.name,
        "timezone": tz,
        "from": days[0],
        "to": days[-1],
        "days": out,
        "total": amount(sum(r.ms for r in rows)),
    }


@router.get(
    "/grazing",
    response_model=FarmGrazing,
    summary="My farm's grazing time: fence by day",
    description="Each fence's animal-time inside on each day of the farm (all mobs together), with the fences' "
    "names; paged by fence id. At most 366 days a request.",
    responses={422: {"description": "a bad day or range"}},
)
async def farm_grazing(
    tenant: Tenant,
    store: Store,
    first: FromDay = None,
    last: ToDay = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="fences a page")] = 100,
    cursor: Annotated[
        str | None,
        Query(
            description="next_cursor of the page before",
            examples=["north-paddock"],
            min_length=1,
            max_length=128,
            pattern=FENCE_ID,
        ),
    ] = None,
) -> dict[str, Any]:
    tz = (await store.get_herd_rules(tenant)).timezone
    days = day_range(first, last, tz)
    per: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))  # fence -> day -> ms
    for r in await store.grazing(tenant, days):
        if cursor is None or r.fence_id > cursor:
            per[r.fence_id][r.day] += r.ms
    ids = sorted(per)
    page = ids[:limit]
    fences = await store.fences_by_id(page, tenant=tenant) if page else {}
    rows = []
    for fid in page:
        f = fences.get(fid)
        name = f.name if f is not None and f.tenant == tenant else None  # an id since taken by another farm: no name
        got = per[fid]
        rows.append(
            {
                "fence_id": fid,
                "name": name,
                **amount(sum(got.values())),
                "days": [{"date": d, **amount(ms)} for d, ms in got.items()],
            }
        )
    return {
        "timezone": tz,
        "from": days[0],
        "to": days[-1],
        "fences": rows,
        "next_cursor": page[-1] if len(ids) > limit else None,
    }

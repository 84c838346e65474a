"""The herd: a farm's herd settings (the farm's own, and the operator's for any farm) and its
alert lists: the collars out, silent or low on battery, paged."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Query

from fencex.event import rfc3339
from fencex.store.base import ALERT_KINDS
from services.api.deps import Admin, Store, Tenant
from services.api.routers.admin import TenantPath, existing
from services.api.schema import AlertKind, AlertPage, HerdSettings

router = APIRouter(tags=["herd"])
# a position in the lists: kind, since (ms) and device id of the last alert of the page before
CURSOR = r"^(out|silent|battery_low)\.[0-9]{1,16}\.[\s\S]{1,128}$"


def settings_of(rules: Any) -> dict[str, Any]:
    return dataclasses.asdict(rules)


@router.get("/herd/settings", response_model=HerdSettings, summary="My farm's herd settings")
async def get_herd_settings(tenant: Tenant, store: Store) -> dict[str, Any]:
    return settings_of(await store.get_herd_rules(tenant))


@router.put(
    "/herd/settings",
    response_model=HerdSettings,
    summary="Change my farm's herd settings (a field left out takes its default)",
    description="The workers apply them from the next fix: confirmation count, battery threshold and margin, "
    "the accuracy limit, the speed of a jump, the silence time.",
)
async def put_herd_settings(body: HerdSettings, tenant: Tenant, store: Store) -> dict[str, Any]:
    return settings_of(await store.put_herd_rules(tenant, body.rules()))


@router.get(
    "/admin/tenants/{tenant}/herd/settings",
    response_model=HerdSettings,
    tags=["admin"],
    summary="A farm's herd settings",
    responses={404: {"description": "no such tenant"}},
)
async def admin_get_herd_settings(tenant: TenantPath, _: Admin, store: Store) -> dict[str, Any]:
    await existing(store, tenant)
    return settings_of(await store.get_herd_rules(tenant))


@router.put(
    "/admin/tenants/{tenant}/herd/settings",
    response_model=HerdSettings,
    tags=["admin"],
    summary="Change a farm's herd settings (a field left out takes its default)",
    responses={404: {"description": "no such tenant"}},
)
async def admin_put_herd_settings(tenant: TenantPath, body: HerdSettings, _: Admin, store: Store) -> dict[str, Any]:
    await existing(store, tenant)
    return settings_of(await store.put_herd_rules(tenant, body.rules()))


def encode_cursor(kind: str, since: int, device: str) -> str:
    return f"{kind}.{since}.{device}"


def decode_cursor(cursor: str) -> tuple[str, int, str]:
    kind, since, device = cursor.split(".", 2)  # the pattern checked the shape
    return kind, int(since), device


@router.get(
    "/alerts",
    response_model=AlertPage,
    summary="My collars that are out, silent or low on battery (paged)",
    description="By kind (out, silent, battery_low), then oldest first. A collar leaves a list with its "
    "return, resumed or battery_ok event, and from all three with transferred (registered to another farm).",
)
async def alerts(
    tenant: Tenant,
    store: Store,
    kind: Annotated[AlertKind | None, Query(description="one list; all three when left out")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None,
        Query(description="next_cursor of the page before", examples=["out.1780000000000.collar-7"], pattern=CURSOR),
    ] = None,
) -> dict[str, Any]:
    kinds: tuple[str, ...] = (kind,) if kind else ALERT_KINDS
    at, after = "", None  # the cursor's list, and its position in it
    if cursor is not None:
        at, since, device = decode_cursor(cursor)
        after = (since, device)
    found: list[tuple[str, str, int]] = []
    for k in kinds:
        if at and ALERT_KINDS.index(k) < ALERT_KINDS.index(at):
            continue  # before the cursor's list: read on earlier pages
        got = await store.alerts(tenant, k, limit + 1 - len(found), after if k == at else None)
        found.extend((k, d, since) for d, since in got)
        if len(found) > limit:
            break
    page = found[:limit]
    nxt = encode_cursor(page[-1][0], page[-1][2], page[-1][1]) if len(found) > limit else None
    return {
        "alerts": [{"device_id": d, "kind": k, "since": rfc3339(since)} for k, d, since in page],
        "counts": await store.alert_counts(tenant, kinds),
        "next_cursor": nxt,
    }

"""Ingest over HTTP: fixes checked as the processor checks them, then produced to ``locations``."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from fencex.errors import InvalidFix
from fencex.fix import fix_from_obj, fix_json, reason_of
from services.api.deps import State, Tenant
from services.api.problem import Problem, problem
from services.api.schema import LocationsAccepted

router = APIRouter(tags=["ingest"])


@router.post(
    "/locations",
    status_code=202,
    response_model=LocationsAccepted,
    summary="Send one fix or a list of your farm's collars; good ones are produced, bad ones listed",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"$ref": "#/components/schemas/FixIn"},
                            {"type": "array", "items": {"$ref": "#/components/schemas/FixIn"}, "maxItems": 10_000},
                        ]
                    },
                    "example": [{"device_id": "collar-7", "ts": "2026-05-28T20:26:41Z", "lon": 17.605, "lat": 59.805}],
                }
            },
        }
    },
    responses={422: {"description": "some fixes were invalid: listed; the others were produced"}},
)
async def post_locations(request: Request, tenant: Tenant, state: State) -> Response:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise Problem(422, f"the body is not JSON: {exc}") from None
    items = body if isinstance(body, list) else [body]
    if len(items) > state.settings.max_fixes_per_request:
        raise Problem(
            413,
            f"{len(items)} fixes; the limit is {state.settings.max_fixes_per_request} a request",
            limit="max_fixes_per_request",
        )
    parsed, errors = [], []
    for i, item in enumerate(items):
        try:
            parsed.append((i, fix_from_obj(item)))  # ts within [2000, now + the skew], as the worker checks
        except InvalidFix as exc:
            errors.append({"index": i, "message": str(exc)})
            state.metrics.fixes_rejected.labels(reason_of(str(exc))).inc()
    # a farm moves only its own collars: the device must be registered to the caller's farm
    owners = await state.store.tenants_of(sorted({f.device_id for _, f in parsed}))
    good = []
    for i, fix in parsed:
        if owners.get(fix.device_id) != tenant:
            errors.append(
                {
                    "index": i,
                    "message": f"device {fix.device_id!r} is not registered to your farm "
                    f"(PUT /devices/{fix.device_id})",
                }
            )
            state.metrics.fixes_rejected.labels("not_your_device").inc()
            continue
        # the fix as fencex reads it, not as sent: no unknown members carried into the shared topic
        good.append((fix.device_id.encode(), fix_json(fix), None))
    if good:
        if not state.broker_ok:
            raise Problem(503, "the broker is not reachable yet; nothing was produced", headers={"Retry-After": "2"})
        await state.producer.send_all(state.settings.locations_topic, good, state.settings.ingest_ack_timeout_s)
        state.metrics.fixes_ingested.inc(len(good))
    if errors:
        return problem(
            422,
            f"{len(errors)} of {len(items)} fixes are invalid; the other {len(good)} were accepted",
            request.url.path,
            errors=errors,
            accepted=len(good),
            rejected=len(errors),
        )
    return Response(
        orjson.dumps({"accepted": len(good), "rejected": 0, "errors": []}),
        status_code=202,
        media_type="application/json",
    )

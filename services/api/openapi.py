"""The OpenAPI document says what the API really does: every error a route can answer, as
``application/problem+json``, and the links between operations (create a fence, then read,
change or delete it; claim a device, then read it) that a stateful fuzzer follows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from services.api.problem import PROBLEM, TITLES

PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details; some problems carry more members (errors, limit, ...)",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "limit": {"type": "string", "description": "the setting whose limit was reached"},
    },
    "additionalProperties": True,
}
WHY = {
    400: "the body is not JSON",
    405: "the method is not allowed here (see Allow)",
    401: "no API key, an unknown one, or the wrong kind (the admin key for farm data, or the reverse)",
    403: "the admin endpoints are off (no admin key set)",
    404: "no such resource, or another farm's",
    409: "the id is taken (or a collar is in another mob)",
    412: "If-Match does not match the current version",
    413: "over a size limit: the body (max_body_bytes), a fence (max_fence_bytes) or a batch",
    422: "invalid input, or over a count limit (the problem's limit member names it)",
    429: "over a rate or stream limit (the problem's limit member names it); see Retry-After",
    503: "Redis or the broker is unavailable, or the API is starting; see Retry-After",
}
FENCE_LINKS = {
    "GetFence": ("get_fence", {"fence_id": "$response.body#/id"}),
    "PatchFence": ("patch_fence", {"fence_id": "$response.body#/id"}),
    "ReplaceFence": ("replace_fence", {"fence_id": "$response.body#/id"}),
    "DeleteFence": ("delete_fence", {"fence_id": "$response.body#/id"}),
    "FenceDevices": ("fence_devices", {"fence_id": "$response.body#/id"}),
}
DEVICE_LINKS = {"GetDevice": ("get_device", {"device_id": "$response.body#/device_id"})}
MOB_LINKS = {
    "GetMob": ("get_mob", {"mob_id": "$response.body#/id"}),
    "ReplaceMob": ("replace_mob", {"mob_id": "$response.body#/id"}),
    "DeleteMob": ("delete_mob", {"mob_id": "$response.body#/id"}),
}
LINKS: dict[tuple[str, str], dict[str, tuple[str, dict[str, str]]]] = {
    ("create_fence", "201"): FENCE_LINKS,
    ("replace_fence", "200"): FENCE_LINKS,
    ("replace_fence", "201"): FENCE_LINKS,
    ("claim_device", "200"): DEVICE_LINKS,
    ("create_mob", "201"): MOB_LINKS,
    ("replace_mob", "200"): MOB_LINKS,
    ("replace_mob", "201"): MOB_LINKS,
}


def errors_of(op: dict[str, Any], role: str | None) -> set[int]:
    """The error statuses an operation can answer, besides those its route declares."""
    out: set[int] = set()
    if role is not None:
        out |= {401, 429, 503}
    if role == "admin":
        out.add(403)
    if op.get("parameters") or "requestBody" in op:
        out.add(422)
    if "requestBody" in op:
        out |= {400, 413}  # 400: the body is not JSON
    if any(p.get("in") == "path" for p in op.get("parameters", [])):
        out.add(404)
    if any(p.get("in") == "header" and p.get("name") == "if-match" for p in op.get("parameters", [])):
        out.add(412)
    return out


def install(
    app: FastAPI,
    role_of_operation: Callable[[str, str], str | None],
    models: tuple[type[BaseModel], ...] = (),
    schemas_by_name: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Replace ``app.openapi`` with one that documents problems and links (and ``models`` that
    bodies parsed by hand refer to, and ``schemas_by_name``: JSON Schemas that responses written by
    hand refer to, as ``#/components/schemas/{name}``)."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = plain()
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        schemas["Problem"] = PROBLEM_SCHEMA
        for model in models:
            schemas[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schemas_by_name or {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        ref = {"$ref": "#/components/schemas/Problem"}
        for path, item in spec["paths"].items():
            for method, op in item.items():
                responses = op.setdefault("responses", {})
                declared = {int(code) for code in responses if code.isdigit() and int(code) >= 400}
                for code in sorted(declared | errors_of(op, role_of_operation(method.upper(), path))):
                    entry = responses.setdefault(str(code), {})
                    if path == "/readyz":
                        continue  # a readiness report, not a problem
                    entry["description"] = entry.get("description") or WHY.get(code, TITLES.get(code, "error"))
                    if entry["description"] == "Validation Error":
                        entry["description"] = WHY[422]
                    entry["content"] = {PROBLEM: {"schema": ref}}
                    if code in (429, 503):
                        entry["headers"] = {
                            "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
                        }
                for (op_id, status), links in LINKS.items():
                    if op.get("operationId") == op_id and status in responses:
                        responses[status]["links"] = {
                            name: {"operationId": target, "parameters": params}
                            for name, (target, params) in links.items()
                        }
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]

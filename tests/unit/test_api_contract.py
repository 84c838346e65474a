"""The API's public contract, checked without servers: the OpenAPI document and the error format."""

from __future__ import annotations

from typing import Any

import pytest

from fencex.herd import DEFAULT_RULES
from services.api.app import create_app
from services.api.settings import Settings

SPEC = create_app(Settings()).app.openapi()
COMPONENTS = SPEC["components"]["schemas"]
EXPECTED = {
    ("post", "/fences"),
    ("get", "/fences"),
    ("get", "/fences/{fence_id}"),
    ("get", "/fences/quarantined"),
    ("put", "/fences/{fence_id}"),
    ("patch", "/fences/{fence_id}"),
    ("delete", "/fences/{fence_id}"),
    ("post", "/fences/import"),
    ("post", "/rotations"),
    ("get", "/query/fences"),
    ("post", "/query/fences"),
    ("post", "/query/devices"),
    ("get", "/fences/{fence_id}/devices"),
    ("get", "/occupancy"),
    ("get", "/devices/{device_id}"),
    ("put", "/devices/{device_id}"),
    ("get", "/devices/{device_id}/track"),
    ("get", "/events"),
    ("get", "/events/stream"),
    ("post", "/locations"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("post", "/admin/tenants"),
    ("post", "/admin/tenants/{tenant}/keys"),
    ("put", "/admin/devices/{device_id}"),
    ("get", "/admin/tenants/{tenant}/keys"),
    ("delete", "/admin/tenants/{tenant}/keys/{key_id}"),
    ("post", "/admin/tenants/{tenant}/keys/{key_id}/rotate"),
    ("get", "/keys"),
    ("post", "/keys/rotate"),
    ("post", "/mobs"),
    ("get", "/mobs"),
    ("get", "/mobs/{mob_id}"),
    ("put", "/mobs/{mob_id}"),
    ("delete", "/mobs/{mob_id}"),
    ("get", "/herd/settings"),
    ("put", "/herd/settings"),
    ("get", "/admin/tenants/{tenant}/herd/settings"),
    ("put", "/admin/tenants/{tenant}/herd/settings"),
    ("get", "/alerts"),
    ("get", "/fences/{fence_id}/grazing"),
    ("get", "/grazing"),
}


def has_example(node: Any, seen: set[str]) -> bool:
    if isinstance(node, list):
        return any(has_example(x, seen) for x in node)
    if not isinstance(node, dict):
        return False
    if "example" in node or "examples" in node:
        return True
    ref = node.get("$ref")
    if ref:
        name = ref.rsplit("/", 1)[-1]
        if name in seen:
            return False
        return has_example(COMPONENTS[name], seen | {name})
    return any(has_example(v, seen) for v in node.values())


def test_every_operation_is_documented_with_an_example():
    ops = {(m, p) for p, item in SPEC["paths"].items() for m in item}
    assert ops == EXPECTED
    missing = [
        (m, p)
        for p, item in SPEC["paths"].items()
        for m, op in item.items()
        if not (op.get("summary") and has_example(op, set()))
    ]
    assert not missing, missing


def test_fence_and_mob_writes_document_if_match_and_412():
    for path, methods in (("/fences/{fence_id}", ("put", "patch", "delete")), ("/mobs/{mob_id}", ("put", "delete"))):
        for method in methods:
            op = SPEC["paths"][path][method]
            assert any(p["name"] == "if-match" for p in op["parameters"]), (method, path)
            assert "412" in op["responses"], (method, path)


def test_herd_settings_are_the_core_rules_with_bounds():
    """The API's settings are HerdRules' fields, each bounded (a new rule cannot be left out)."""
    import dataclasses

    from fencex.herd import HerdRules

    settings = COMPONENTS["HerdSettings"]
    assert set(settings["properties"]) == {f.name for f in dataclasses.fields(HerdRules)}
    assert settings["additionalProperties"] is False
    for name, prop in settings["properties"].items():
        if prop["type"] == "string":
            assert "maxLength" in prop, name
        else:
            assert ("minimum" in prop or "exclusiveMinimum" in prop) and "maximum" in prop, name


def test_every_error_is_documented_as_problem_json():
    """Issue 9 #15: problem+json bodies and 401/413/429/503 were not in the document."""
    for path, item in SPEC["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            errors = [code for code in responses if code.isdigit() and int(code) >= 400]
            if path == "/readyz":
                continue
            for code in errors:
                assert list(responses[code]["content"]) == ["application/problem+json"], (method, path, code)
            needs_key = any("HTTPBearer" in s for s in op.get("security", []))
            if needs_key:
                assert {"401", "429", "503"} <= set(responses), (method, path)
            if "requestBody" in op:
                assert {"400", "413", "422"} <= set(responses), (method, path)
            for code in ("429", "503"):
                if code in responses:
                    assert "Retry-After" in responses[code]["headers"], (method, path)
    assert "HTTPValidationError" not in COMPONENTS


def test_links_let_a_fuzzer_follow_a_fence_and_a_device():
    created = SPEC["paths"]["/fences"]["post"]["responses"]["201"]["links"]
    assert {link["operationId"] for link in created.values()} >= {
        "get_fence",
        "patch_fence",
        "replace_fence",
        "delete_fence",
    }
    claimed = SPEC["paths"]["/devices/{device_id}"]["put"]["responses"]["200"]["links"]
    assert [link["operationId"] for link in claimed.values()] == ["get_device"]
    mob = SPEC["paths"]["/mobs"]["post"]["responses"]["201"]["links"]
    assert {link["operationId"] for link in mob.values()} == {"get_mob", "replace_mob", "delete_mob"}


def test_patch_schema_is_the_core_properties_made_optional():
    """Issue 10 #4: FenceUpdate was looser than FenceProperties ({"tags": [""]} answered 500)."""
    core = COMPONENTS["FencePropertiesIn"]["properties"]  # the core's FenceProperties, read strictly
    patch = COMPONENTS["FenceUpdate"]["properties"]
    assert set(patch) == set(core)
    assert patch["tags"]["items"]["minLength"] == 1 and patch["tags"]["maxItems"] == core["tags"]["maxItems"]
    assert COMPONENTS["FenceUpdate"]["additionalProperties"] is False


def test_herd_settings_have_floors_a_farmer_would_accept():
    """silence_s 0.001 made every collar silent between two fixes, max_speed_mps or accuracy_limit_m
    0.001 made every fix untrusted (the slow path, for every fix of the farm): refused (422)."""
    import pydantic
    import pytest

    from services.api.schema import HerdSettings

    for bad in ({"silence_s": 59.9}, {"max_speed_mps": 0.99}, {"accuracy_limit_m": 0.5}):
        with pytest.raises(pydantic.ValidationError):
            HerdSettings(**bad)
    ok = HerdSettings(silence_s=60.0, max_speed_mps=1.0, accuracy_limit_m=1.0).rules()
    assert (ok.silence_s, ok.max_speed_mps, ok.accuracy_limit_m) == (60.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"timezone": "Europe/Atlantis"}, "unknown time zone"),  # no such zone
        ({"timezone": "../etc/passwd"}, "unknown time zone"),  # not a zone's name
        ({"timezone": ""}, "at least 1 character"),
        ({"track_window_s": 3599.0}, "greater than or equal to 3600"),  # floor: an hour
        ({"track_window_s": 7 * 86_400 + 1.0}, "less than or equal to 604800"),  # ceiling: a week
    ],
)
def test_herd_settings_time_zone_and_track_window_are_checked(fields, where):
    import pydantic

    from services.api.schema import HerdSettings

    with pytest.raises(pydantic.ValidationError, match=where):
        HerdSettings(**fields)


def test_herd_settings_time_zone_and_track_window_reach_the_rules():
    from services.api.schema import HerdSettings

    rules = HerdSettings(timezone="Pacific/Auckland", track_window_s=7200.0).rules()
    assert (rules.timezone, rules.track_window_s) == ("Pacific/Auckland", 7200.0)
    assert HerdSettings().rules() == DEFAULT_RULES  # left out: the core's defaults (UTC, 24 h)


def test_the_event_model_is_the_published_schema_and_documents_late_and_retracts():
    """Issue 12: late events and retracts reach farmers through GET /events and the stream; the
    document's Event is the event JSON Schema itself (one source), and the history answers a list of it."""
    import jsonschema

    from fencex.event import EVENT_SCHEMA
    from services.api.routers.events import EXAMPLE_EVENT, EXAMPLE_LATE, EXAMPLE_RETRACT

    event = COMPONENTS["Event"]
    assert {k: v for k, v in EVENT_SCHEMA.items() if not k.startswith("$")} == event
    assert "retract" in event["properties"]["type"]["enum"]
    assert {"late", "retracts"} <= set(event["properties"])
    history = SPEC["paths"]["/events"]["get"]["responses"]["200"]["content"]["application/json"]
    assert history["schema"] == {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}
    for example in (EXAMPLE_EVENT, EXAMPLE_LATE, EXAMPLE_RETRACT):
        jsonschema.validate(example, EVENT_SCHEMA, format_checker=jsonschema.FormatChecker())
    assert [e["type"] for e in history["example"]] == ["enter", "retract", "exit"]  # a retract before its replacement
    stream = SPEC["paths"]["/events/stream"]["get"]
    assert "retract" in stream["description"] and "late" in stream["description"]


def test_a_track_is_geojson_of_either_format_with_examples_of_both():
    op = SPEC["paths"]["/devices/{device_id}/track"]["get"]
    content = op["responses"]["200"]["content"]
    assert list(content) == ["application/geo+json"]
    assert set(content["application/geo+json"]["examples"]) == {"line", "points"}
    refs = {s["$ref"].rsplit("/", 1)[-1] for s in content["application/geo+json"]["schema"]["anyOf"]}
    assert refs == {"TrackLine", "TrackPoints"}
    params = {p["name"]: p for p in op["parameters"]}
    assert set(params) == {"device_id", "from", "to", "format", "limit", "cursor"}
    assert params["limit"]["schema"]["maximum"] == 2000 and params["limit"]["schema"]["default"] == 500
    assert {"404", "500"} <= set(op["responses"])


def test_the_api_holds_no_device_registrations():
    """Issue 15 #3: the API reads no registration from its follower (0.09 KB a device in every API process)."""
    assert create_app(Settings()).state.follower.registrations is False

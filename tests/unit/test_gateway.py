"""The way in (issue 14, item 9): a Gateway API HTTPRoute by default, an ingress-nginx Ingress as a
kustomize component; Server-Sent Events pass either way with no deadline and no buffering.

The HTTPRoute is checked against the HTTPRoute CRD of Gateway API as released (standard channel,
deploy/schema/crds/), closed the way the API server's strict field validation closes it (an unknown
field is an error), with the CRD's defaults and every CEL rule (x-kubernetes-validations) the route
meets, written out in Python below (HTTPROUTE_CEL, keyed by the rule's exact text: a rule the table
lacks is an error). tests/unit/test_deploy_crds.py can take the same table for its own CEL forms.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft4Validator, ValidationError, validators

from services.api.routers.events import KEEP_ALIVE_S
from tests.unit.test_deploy import K8S_VERSION, OVERLAYS, named, objects

ROOT = Path(__file__).parents[2]
CRDS = ROOT / "deploy" / "schema" / "crds"
HTTPROUTE_CRD = CRDS / "gateway-api-1.6.1-httproutes.yaml"
COMPONENT = ROOT / "deploy" / "k8s" / "components" / "ingress-nginx"


# ------------------------------------------------------------------ the CRD, as released


@cache
def crd() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(HTTPROUTE_CRD.read_text())
    return doc


def closed(schema: Any) -> Any:
    """The schema with every object that lists its properties closed to others, as the API server
    treats a structural schema under strict field validation (kubectl's default)."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) for k, v in schema.items()}
    preserve = out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


@cache
def served_schema(version: str) -> dict[str, Any]:
    (v,) = [v for v in crd()["spec"]["versions"] if v["name"] == version]
    assert v["served"], version
    schema: dict[str, Any] = closed(v["schema"]["openAPIV3Schema"])
    return schema


def duration_s(text: str) -> float:
    """A Gateway API duration (GEP-2257: 1h, 30m, 10s, 500ms, 1m30s)."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"([0-9]{1,5})(h|ms|m|s)", text)
    assert "".join(n + u for n, u in parts) == text, text
    return sum(int(n) * units[u] for n, u in parts)


# ------------------------------------------------------------------ the CRD's CEL rules, in Python
# `self` is the node the rule sits on, after the API server applied the CRD's defaults (below);
# has(x.f) is "f in x"; CEL's __namespace__ is the field namespace.

Doc = dict[str, Any]
DEFAULT_MATCH = {"path": {"type": "PathPrefix", "value": "/"}}


def _parent(p: Doc) -> tuple[str, str, str, str]:
    return (p.get("group", "gateway.networking.k8s.io"), p.get("kind", "Gateway"), p["name"], p.get("namespace", ""))


def _exists_one(items: list[Any], pred: Callable[[Any], bool]) -> bool:
    return sum(1 for x in items if pred(x)) == 1


def _replace_prefix(f: Doc, kind: str) -> bool:
    path = f.get(kind, {}).get("path", {})
    return kind in f and "path" in f[kind] and path.get("type") == "ReplacePrefixMatch" and "replacePrefixMatch" in path


def _one_prefix_match(rule: Doc) -> bool:
    matches = rule.get("matches", [DEFAULT_MATCH])
    return len(matches) == 1 and "path" in matches[0] and matches[0]["path"].get("type", "PathPrefix") == "PathPrefix"


def _path_rule(check: Callable[[str], bool]) -> Callable[[Doc], bool]:
    return lambda p: check(p.get("value", "/")) if p.get("type", "PathPrefix") in ("Exact", "PathPrefix") else True


HTTPROUTE_CEL: dict[str, Callable[[Any], bool]] = {
    "self.all(p1, self.all(p2, p1.group == p2.group && p1.kind == p2.kind && p1.name == p2.name && "
    "(((!has(p1.__namespace__) || p1.__namespace__ == '') && (!has(p2.__namespace__) || p2.__namespace__ == '')) || "
    "(has(p1.__namespace__) && has(p2.__namespace__) && p1.__namespace__ == p2.__namespace__ )) ? "
    "((!has(p1.sectionName) || p1.sectionName == '') == (!has(p2.sectionName) || p2.sectionName == '')) : true))": (
        lambda refs: all(
            bool(p1.get("sectionName")) == bool(p2.get("sectionName"))
            for p1 in refs
            for p2 in refs
            if _parent(p1) == _parent(p2)
        )
    ),
    "self.all(p1, self.exists_one(p2, p1.group == p2.group && p1.kind == p2.kind && p1.name == p2.name && "
    "(((!has(p1.__namespace__) || p1.__namespace__ == '') && (!has(p2.__namespace__) || p2.__namespace__ == '')) || "
    "(has(p1.__namespace__) && has(p2.__namespace__) && p1.__namespace__ == p2.__namespace__ )) && "
    "(((!has(p1.sectionName) || p1.sectionName == '') && (!has(p2.sectionName) || p2.sectionName == '')) || "
    "(has(p1.sectionName) && has(p2.sectionName) && p1.sectionName == p2.sectionName))))": (
        lambda refs: all(
            _exists_one(
                refs,
                lambda p2, p1=p1: _parent(p1) == _parent(p2) and p1.get("sectionName", "") == p2.get("sectionName", ""),
            )
            for p1 in refs
        )
    ),
    "(size(self.group) == 0 && self.kind == 'Service') ? has(self.port) : true": (
        lambda b: "port" in b if b.get("group", "") == "" and b.get("kind", "Service") == "Service" else True
    ),
    "(self.type in ['Exact','PathPrefix']) ? self.value.startsWith('/') : true": _path_rule(
        lambda v: v.startswith("/")
    ),
    "(self.type in ['Exact','PathPrefix']) ? !self.value.contains('//') : true": _path_rule(lambda v: "//" not in v),
    "(self.type in ['Exact','PathPrefix']) ? !self.value.contains('/./') : true": _path_rule(lambda v: "/./" not in v),
    "(self.type in ['Exact','PathPrefix']) ? !self.value.contains('/../') : true": _path_rule(
        lambda v: "/../" not in v
    ),
    "(self.type in ['Exact','PathPrefix']) ? !self.value.contains('%2f') : true": _path_rule(lambda v: "%2f" not in v),
    "(self.type in ['Exact','PathPrefix']) ? !self.value.contains('%2F') : true": _path_rule(lambda v: "%2F" not in v),
    "(self.type in ['Exact','PathPrefix']) ? !self.value.contains('#') : true": _path_rule(lambda v: "#" not in v),
    "(self.type in ['Exact','PathPrefix']) ? !self.value.endsWith('/..') : true": _path_rule(
        lambda v: not v.endswith("/..")
    ),
    "(self.type in ['Exact','PathPrefix']) ? !self.value.endsWith('/.') : true": _path_rule(
        lambda v: not v.endswith("/.")
    ),
    "self.type in ['Exact','PathPrefix'] || self.type == 'RegularExpression'": (
        lambda p: p.get("type", "PathPrefix") in ("Exact", "PathPrefix", "RegularExpression")
    ),
    "(self.type in ['Exact','PathPrefix']) ? self.value.matches("
    'r"""^(?:[-A-Za-z0-9/._~!$&\'()*+,;=:@]|[%][0-9a-fA-F]{2})+$""") : true': (
        _path_rule(lambda v: re.search(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$", v) is not None)
    ),
    "!(has(self.request) && has(self.backendRequest) && duration(self.request) != duration('0s') && "
    "duration(self.backendRequest) > duration(self.request))": (
        lambda t: (
            not (
                "request" in t
                and "backendRequest" in t
                and duration_s(t["request"]) != 0
                and duration_s(t["backendRequest"]) > duration_s(t["request"])
            )
        )
    ),
    "(has(self.backendRefs) && size(self.backendRefs) > 0) ? "
    "(!has(self.filters) || self.filters.all(f, !has(f.requestRedirect))): true": (
        lambda r: all("requestRedirect" not in f for f in r.get("filters", [])) if r.get("backendRefs") else True
    ),
    "(has(self.filters) && self.filters.exists_one(f, has(f.requestRedirect) && has(f.requestRedirect.path) && "
    "f.requestRedirect.path.type == 'ReplacePrefixMatch' && has(f.requestRedirect.path.replacePrefixMatch))) ? "
    "((size(self.matches) != 1 || !has(self.matches[0].path) || self.matches[0].path.type != 'PathPrefix') ? "
    "false : true) : true": (
        lambda r: (
            _one_prefix_match(r)
            if _exists_one(r.get("filters", []), lambda f: _replace_prefix(f, "requestRedirect"))
            else True
        )
    ),
    "(has(self.filters) && self.filters.exists_one(f, has(f.urlRewrite) && has(f.urlRewrite.path) && "
    "f.urlRewrite.path.type == 'ReplacePrefixMatch' && has(f.urlRewrite.path.replacePrefixMatch))) ? "
    "((size(self.matches) != 1 || !has(self.matches[0].path) || self.matches[0].path.type != 'PathPrefix') ? "
    "false : true) : true": (
        lambda r: (
            _one_prefix_match(r)
            if _exists_one(r.get("filters", []), lambda f: _replace_prefix(f, "urlRewrite"))
            else True
        )
    ),
    "(has(self.backendRefs) && self.backendRefs.exists_one(b, (has(b.filters) && b.filters.exists_one(f, "
    "has(f.requestRedirect) && has(f.requestRedirect.path) && f.requestRedirect.path.type == 'ReplacePrefixMatch' "
    "&& has(f.requestRedirect.path.replacePrefixMatch))) )) ? ((size(self.matches) != 1 || "
    "!has(self.matches[0].path) || self.matches[0].path.type != 'PathPrefix') ? false : true) : true": (
        lambda r: (
            _one_prefix_match(r)
            if _exists_one(
                r.get("backendRefs", []),
                lambda b: _exists_one(b.get("filters", []), lambda f: _replace_prefix(f, "requestRedirect")),
            )
            else True
        )
    ),
    "(has(self.backendRefs) && self.backendRefs.exists_one(b, (has(b.filters) && b.filters.exists_one(f, "
    "has(f.urlRewrite) && has(f.urlRewrite.path) && f.urlRewrite.path.type == 'ReplacePrefixMatch' && "
    "has(f.urlRewrite.path.replacePrefixMatch))) )) ? ((size(self.matches) != 1 || !has(self.matches[0].path) || "
    "self.matches[0].path.type != 'PathPrefix') ? false : true) : true": (
        lambda r: (
            _one_prefix_match(r)
            if _exists_one(
                r.get("backendRefs", []),
                lambda b: _exists_one(b.get("filters", []), lambda f: _replace_prefix(f, "urlRewrite")),
            )
            else True
        )
    ),
    " + ".join(f"(self.size() > {i} ? self[{i}].matches.size() : 0)" for i in range(16)) + " <= 128": (
        lambda rules: sum(len(r.get("matches", [DEFAULT_MATCH])) for r in rules[:16]) <= 128
    ),
}


def _cel(validator: Any, rules: list[Doc], instance: Any, schema: Doc) -> Iterator[ValidationError]:
    for rule in rules:
        check = HTTPROUTE_CEL.get(rule["rule"])
        if check is None:
            yield ValidationError(f"a CEL rule not written out in HTTPROUTE_CEL: {rule['rule']}")
            continue
        try:
            passed = check(instance)
        except (AssertionError, KeyError, TypeError, ValueError) as e:  # CEL: an error, and the rule fails
            yield ValidationError(f"{rule['rule']} cannot be evaluated ({e!r})")
            continue
        if not passed:
            yield ValidationError(rule.get("message") or f"fails {rule['rule']}")


RouteValidator = validators.extend(Draft4Validator, {"x-kubernetes-validations": _cel})


def validate_route(route: dict[str, Any]) -> None:
    group, version = route["apiVersion"].split("/")
    assert group == crd()["spec"]["group"] and route["kind"] == crd()["spec"]["names"]["kind"]
    schema = served_schema(version)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in RouteValidator(schema).iter_errors(route)]
    if errors:
        raise ValidationError("\n".join(errors))


def cel_rules(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {r["rule"] for r in node.get("x-kubernetes-validations", [])}
        return found.union(*(cel_rules(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(cel_rules(v) for v in node))
    return set()


def test_every_cel_rule_written_out_is_the_crds_word_for_word():
    (v1,) = [v for v in crd()["spec"]["versions"] if v["name"] == "v1"]
    assert set(HTTPROUTE_CEL) <= cel_rules(v1["schema"]["openAPIV3Schema"])


def test_the_crd_is_gateway_api_standard_channel_as_released_with_its_licence():
    meta = crd()["metadata"]
    assert meta["name"] == "httproutes.gateway.networking.k8s.io"
    assert meta["annotations"]["gateway.networking.k8s.io/channel"] == "standard"
    version = meta["annotations"]["gateway.networking.k8s.io/bundle-version"]
    assert HTTPROUTE_CRD.name == f"gateway-api-{version.removeprefix('v')}-httproutes.yaml"
    assert "Apache License" in (CRDS / "LICENSE.gateway-api").read_text()[:200]
    assert [v["name"] for v in crd()["spec"]["versions"] if v["storage"]] == ["v1"]


# ------------------------------------------------------------------ the HTTPRoute of the overlays


def stream_paths() -> set[str]:
    """The API's Server-Sent Events paths, from its OpenAPI document."""
    from services.api.app import create_app
    from services.api.settings import Settings

    paths = create_app(Settings()).app.openapi()["paths"]
    return {
        path
        for path, ops in paths.items()
        for op in ops.values()
        if "text/event-stream" in op.get("responses", {}).get("200", {}).get("content", {})
    }


def rule_for(route: dict[str, Any], path: str) -> dict[str, Any]:
    """The rule a request for `path` takes: an Exact match first, then the longest prefix (the
    Gateway API's precedence for path matches)."""
    best: tuple[int, int, dict[str, Any]] | None = None
    for rule in route["spec"]["rules"]:
        for match in rule.get("matches", [{"path": {"type": "PathPrefix", "value": "/"}}]):
            p = match["path"]
            value = p["value"]
            if p["type"] == "Exact" and path == value:
                rank = (1, len(value))
            elif p["type"] == "PathPrefix" and (
                value == "/" or path == value.rstrip("/") or path.startswith(value.rstrip("/") + "/")
            ):
                rank = (0, len(value))
            else:
                continue
            if best is None or rank > best[:2]:
                best = (*rank, rule)
    assert best is not None, f"no rule takes {path}"
    return best[2]


def test_the_api_has_one_stream_and_it_is_the_one_the_route_knows():
    assert stream_paths() == {"/events/stream"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_route_validates_against_the_released_crd(overlay):
    validate_route(named(overlay, "HTTPRoute", "api"))


def test_the_crd_check_catches_a_broken_route():
    route = copy.deepcopy(named("prod", "HTTPRoute", "api"))
    route["spec"]["rules"][0]["timeouts"]["request"] = "forever"
    with pytest.raises(jsonschema.ValidationError):
        validate_route(route)
    route = copy.deepcopy(named("prod", "HTTPRoute", "api"))
    route["spec"]["rules"][0]["timeout"] = {"request": "0s"}  # a typo: an unknown field
    with pytest.raises(jsonschema.ValidationError):
        validate_route(route)
    route = copy.deepcopy(named("prod", "HTTPRoute", "api"))
    route["spec"]["rules"][1]["timeouts"] = {"request": "10s", "backendRequest": "20s"}  # a CEL rule
    with pytest.raises(ValidationError, match="backendRequest timeout cannot be longer than request"):
        validate_route(route)
    route = copy.deepcopy(named("prod", "HTTPRoute", "api"))
    route["spec"]["rules"][0]["matches"][0]["path"]["value"] = "/events//stream"
    with pytest.raises(ValidationError, match="must not contain '//'"):
        validate_route(route)
    route = copy.deepcopy(named("prod", "HTTPRoute", "api"))
    route["spec"]["parentRefs"].append(dict(route["spec"]["parentRefs"][0]))
    with pytest.raises(ValidationError, match="sectionName must be unique"):
        validate_route(route)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_sent_events_have_no_deadline_and_the_rest_a_finite_one(overlay):
    route = named(overlay, "HTTPRoute", "api")
    for path in stream_paths():
        t = rule_for(route, path)["timeouts"]
        assert duration_s(t["request"]) == 0 and duration_s(t["backendRequest"]) == 0, (path, t)
    for path in ("/", "/query/fences", "/events", "/events/streams", "/app/index.html"):
        t = rule_for(route, path).get("timeouts", {})
        assert 0 < duration_s(t["request"]) <= 300, (path, t)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_route_reaches_the_api_and_the_gateway_may(overlay):
    route = named(overlay, "HTTPRoute", "api")
    service = named(overlay, "Service", "api")
    (c,) = named(overlay, "Deployment", "api")["spec"]["template"]["spec"]["containers"]
    (port,) = service["spec"]["ports"]
    container_port = {p["name"]: p["containerPort"] for p in c["ports"]}[port["targetPort"]]
    for rule in route["spec"]["rules"]:
        assert rule["backendRefs"] == [{"name": service["metadata"]["name"], "port": port["port"]}]
    (parent,) = route["spec"]["parentRefs"]
    assert parent["kind"] == "Gateway" and parent["namespace"] != route["metadata"]["namespace"]
    policy = named(overlay, "NetworkPolicy", "api-from-gateway")
    assert policy["spec"]["podSelector"] == {"matchLabels": service["spec"]["selector"]}
    (allowed,) = policy["spec"]["ingress"]
    assert allowed["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": parent["namespace"]}}}
    ]
    assert allowed["ports"] == [{"port": container_port, "protocol": "TCP"}]
    assert not objects(overlay, "Ingress"), "the Ingress is the component's, not the default"


# ------------------------------------------------------------------ the Ingress option


def with_ingress_component(tmp: Path) -> list[dict[str, Any]]:
    """The prod overlay with the ingress-nginx component, as the README's example writes it."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is needed to render kustomize (./dev test installs Debian's kubernetes-client)")
    prod = ROOT / "deploy" / "k8s" / "overlays" / "prod"
    (tmp / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "fencex",
                "resources": [os.path.relpath(prod, tmp)],  # kustomize takes no absolute paths
                "components": [os.path.relpath(COMPONENT, tmp)],
            }
        )
    )
    out = subprocess.run(
        [kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(tmp)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_the_ingress_component_replaces_the_route_and_keeps_sse_unbuffered(tmp_path):
    docs = with_ingress_component(tmp_path)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Ingress", "api") in kinds and ("NetworkPolicy", "api-from-ingress-nginx") in kinds
    assert ("HTTPRoute", "api") not in kinds and ("NetworkPolicy", "api-from-gateway") not in kinds
    (ingress,) = [d for d in docs if d["kind"] == "Ingress"]
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 4 * KEEP_ALIVE_S
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/" and path["backend"]["service"] == {"name": "api", "port": {"name": "http"}}
    for d in docs:
        if d["kind"] in ("Ingress", "NetworkPolicy"):
            assert d["metadata"]["namespace"] == "fencex", d["metadata"]
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)

"""The way in (issue 14, item 9): a Gateway API HTTPRoute by default, an ingress-nginx Ingress as a
kustomize component; Server-Sent Events pass either way with no deadline and no buffering.

The HTTPRoute is checked against the HTTPRoute CRD of Gateway API as released (standard channel,
deploy/schema/crds/) by tests/unit/crdschema.py, the validator every custom resource goes through:
the CRD's defaults, its structural schema closed to unknown fields, and its CEL rules
(x-kubernetes-validations) evaluated by cel-python.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.api.routers.events import KEEP_ALIVE_S
from tests.unit.crdschema import CRD_DIR, custom_errors
from tests.unit.test_deploy import K8S_VERSION, OVERLAYS, ROOT, named, objects

HTTPROUTE_CRD = CRD_DIR / "gateway-api-1.6.1-httproutes.yaml"
COMPONENT = ROOT / "deploy" / "k8s" / "components" / "ingress-nginx"


# ------------------------------------------------------------------ the CRD, as released


@cache
def crd() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(HTTPROUTE_CRD.read_text())
    return doc


def duration_s(text: str) -> float:
    """A Gateway API duration (GEP-2257: 1h, 30m, 10s, 500ms, 1m30s)."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"([0-9]{1,5})(h|ms|m|s)", text)
    assert "".join(n + u for n, u in parts) == text, text
    return sum(int(n) * units[u] for n, u in parts)


def test_the_crd_is_gateway_api_standard_channel_as_released_with_its_licence():
    meta = crd()["metadata"]
    assert meta["name"] == "httproutes.gateway.networking.k8s.io"
    assert meta["annotations"]["gateway.networking.k8s.io/channel"] == "standard"
    version = meta["annotations"]["gateway.networking.k8s.io/bundle-version"]
    assert HTTPROUTE_CRD.name == f"gateway-api-{version.removeprefix('v')}-httproutes.yaml"
    assert "Apache License" in (CRD_DIR / "LICENSE.gateway-api").read_text()[:200]
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
    assert custom_errors(named(overlay, "HTTPRoute", "api")) == []


def _route_with(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    route = copy.deepcopy(named("prod", "HTTPRoute", "api"))
    change(route["spec"])
    return route


BROKEN_ROUTES: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "a timeout that is no duration": (
        lambda spec: spec["rules"][0]["timeouts"].update(request="forever"),
        "'forever' does not match",
    ),
    "a typo: an unknown field": (
        lambda spec: spec["rules"][0].update(timeout={"request": "0s"}),
        "'timeout' was unexpected",
    ),
    "a backend timeout longer than the request's (CEL)": (
        lambda spec: spec["rules"][1].update(timeouts={"request": "10s", "backendRequest": "20s"}),
        "backendRequest timeout cannot be longer than request timeout",
    ),
    "a path with // (CEL)": (
        lambda spec: spec["rules"][0]["matches"][0]["path"].update(value="/events//stream"),
        "must not contain '//'",
    ),
    "the same parent twice (CEL)": (
        lambda spec: spec["parentRefs"].append(dict(spec["parentRefs"][0])),
        "sectionName must be unique",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_ROUTES))
def test_the_crd_check_catches_a_broken_route(case):
    change, expected = BROKEN_ROUTES[case]
    errors = custom_errors(_route_with(change))
    assert any(expected in e for e in errors), errors


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_sent_events_have_no_deadline_and_the_rest_a_finite_one(overlay):
    route = named(overlay, "HTTPRoute", "api")
    for path in stream_paths():
        t = rule_for(route, path)["timeouts"]
        assert duration_s(t["request"]) == 0 and duration_s(t["backendRequest"]) == 0, (path, t)
    for path in ("/query/fences", "/events", "/events/streams", "/app/index.html"):
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
        if rule["name"] != "home":  # the redirect to /app/ answers at the gateway
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
    for path in rule["http"]["paths"]:
        assert path["backend"]["service"] == {"name": "api", "port": {"name": "http"}}
    for d in docs:
        if d["kind"] in ("Ingress", "NetworkPolicy"):
            assert d["metadata"]["namespace"] == "fencex", d["metadata"]
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)


# ------------------------------------------------------------------ what the internet reaches

INTERNAL = {"/metrics", "/healthz", "/readyz"}  # Prometheus and the kubelet, inside the cluster


def public_segments() -> set[str]:
    """The first path segment of every route of the API (its edge's route table), but the internal ones."""
    from services.api.app import create_app
    from services.api.settings import Settings

    edge = create_app(Settings())
    return {"/" + route.path.strip("/").split("/")[0] for route, _ in edge.routes} - INTERNAL


def takes(route: dict[str, Any], path: str) -> bool:
    try:
        rule_for(route, path)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_route_takes_every_public_route_and_not_the_metrics(overlay):
    # /metrics merges every API process's files on each scrape: open to the internet, a flood of
    # scrapes would cost the point queries; the probes tell a stranger nothing useful either.
    route = named(overlay, "HTTPRoute", "api")
    for segment in public_segments():
        assert takes(route, segment) and takes(route, segment + "/x"), segment
    for path in INTERNAL:
        assert not takes(route, path), path
    home = rule_for(route, "/")
    (redirect,) = home["filters"]
    assert redirect["requestRedirect"]["path"]["replaceFullPath"] == "/app/"


def test_the_ingress_takes_every_public_route_and_not_the_metrics(tmp_path):
    (ingress,) = [d for d in with_ingress_component(tmp_path) if d["kind"] == "Ingress"]
    (rule,) = ingress["spec"]["rules"]
    prefixes = {p["path"] for p in rule["http"]["paths"] if p["pathType"] == "Prefix"}
    assert prefixes == public_segments()
    assert not prefixes & INTERNAL and "/" not in prefixes

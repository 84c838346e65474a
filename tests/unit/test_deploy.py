"""docker-compose and Kubernetes, checked statically (no Docker engine or cluster runs here):
schemas, and agreement between code, Dockerfiles, compose and the manifests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from services.api.settings import Settings as ApiSettings
from services.processor.settings import Settings as ProcessorSettings
from services.simulator.settings import Settings as SimulatorSettings

ROOT = Path(__file__).parents[2]
SETTINGS = {"processor": ProcessorSettings, "api": ApiSettings, "simulator": SimulatorSettings}
TOPICS = {"locations": 12, "fence-events": 12, "locations.dlq": 1}
CRDS = {
    ("kafka.strimzi.io/v1beta2", "Kafka"),
    ("kafka.strimzi.io/v1beta2", "KafkaNodePool"),
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
K8S_VERSION = "1.30.0"


def env_names(service: str) -> set[str]:
    return {f"FENCEX_{name.upper()}" for name in SETTINGS[service].model_fields}


@cache
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@cache
def rendered(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is needed to render kustomize (./dev test installs Debian's kubernetes-client)")
    out = subprocess.run(
        [
            kubectl,
            "kustomize",
            "--load-restrictor",
            "LoadRestrictionsNone",
            str(ROOT / "deploy" / "k8s" / "overlays" / overlay),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def objects(overlay: str, kind: str) -> list[dict]:
    return [d for d in rendered(overlay) if d["kind"] == kind]


def named(overlay: str, kind: str, name: str) -> dict:
    (obj,) = [d for d in objects(overlay, kind) if d["metadata"]["name"] == name]
    return obj


OVERLAYS = ["dev", "prod"]


# ------------------------------------------------------------------ schemas


def test_compose_file_validates_against_the_compose_spec():
    schema = json.loads((ROOT / "deploy" / "schema" / "compose-spec.json").read_text())
    jsonschema.validate(compose(), schema)
    broken = json.loads(json.dumps(compose()))
    broken["services"]["redis"]["healthcheck"]["interval"] = ["5s"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_validate_against_kubernetes_schemas(overlay):
    kinds = set()
    for obj in rendered(overlay):
        key = (obj["apiVersion"], obj["kind"])
        kinds.add(key)
        if key in CRDS:  # no schema for operators' resources in kubernetes-validate: checked below
            assert obj["metadata"]["name"] and obj["spec"], key
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert kinds >= CRDS
    expected = {
        "Namespace",
        "ConfigMap",
        "Service",
        "StatefulSet",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Ingress",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    assert expected <= {k for _, k in kinds}


def test_a_broken_manifest_is_caught():
    deployment = json.loads(json.dumps(named("prod", "Deployment", "api")))
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


# ---------------------------------------------------------------- agreement


def compose_env(service: str) -> tuple[dict, set[str]]:
    shared = set(compose()["x-fencex-env"])
    return compose()["services"][service]["environment"], shared


@pytest.mark.parametrize(
    "service,compose_names",
    [("processor", ["processor-1", "processor-2", "processor-3"]), ("api", ["api"]), ("simulator", ["simulator"])],
)
def test_compose_environment_matches_what_the_code_reads(service, compose_names):
    readable = set().union(*(env_names(s) for s in SETTINGS))
    for name in compose_names:
        env, shared = compose_env(name)
        for var in env:
            if var in shared:
                assert var in readable, f"{var} is read by no service"
            else:
                assert var in env_names(service), f"{name}: {var} is not a setting of the {service}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_environment_matches_what_the_code_reads(overlay):
    shared = set(named(overlay, "ConfigMap", "fencex-config")["data"])
    readable = set().union(*(env_names(s) for s in SETTINGS))
    assert shared <= readable, shared - readable
    for deploy in objects(overlay, "Deployment"):
        (c,) = deploy["spec"]["template"]["spec"]["containers"]
        service = deploy["metadata"]["name"]
        for e in c.get("env", []):
            assert e["name"] in env_names(service), f"{service}: {e['name']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_and_probe_paths_agree_with_the_code(overlay):
    from services.api.app import create_app as api_app
    from services.processor.app import create_app as processor_app

    processor_paths = set(processor_app(ProcessorSettings())[0].web.views)
    api_paths = set(api_app(ApiSettings()).app.openapi()["paths"])
    ports = {"processor": (ProcessorSettings().web_port, processor_paths), "api": (ApiSettings().port, api_paths)}
    for name, (port, paths) in ports.items():
        (c,) = named(overlay, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        assert [p["containerPort"] for p in c["ports"]] == [port]
        assert {c["readinessProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["path"]} == {
            "/readyz",
            "/healthz",
        }
        assert {"/readyz", "/healthz", "/metrics"} <= paths
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert env.get("FENCEX_WEB_PORT" if name == "processor" else "FENCEX_PORT") == str(port)
        dockerfile = (ROOT / "services" / name / "Dockerfile").read_text()
        assert f"EXPOSE {port}" in dockerfile and f"127.0.0.1:{port}/healthz" in dockerfile
    for monitor in objects(overlay, "PodMonitor"):
        assert monitor["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"
    assert compose()["services"]["processor-1"]["environment"]["FENCEX_WEB_PORT"] == str(ProcessorSettings().web_port)
    assert compose()["services"]["api"]["ports"] == [f"{ApiSettings().port}:{ApiSettings().port}"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_topics_agree_everywhere(overlay):
    s = ProcessorSettings()
    assert {s.locations_topic: s.partitions, s.events_topic: s.partitions, s.dlq_topic: 1} == TOPICS
    k8s = {t["spec"]["topicName"]: t["spec"]["partitions"] for t in objects(overlay, "KafkaTopic")}
    assert k8s == TOPICS
    init = " ".join(compose()["services"]["kafka-init"]["command"])
    assert dict((m[0], int(m[1])) for m in re.findall(r"--topic (\S+) --partitions (\d+)", init)) == TOPICS
    config = named(overlay, "ConfigMap", "fencex-config")["data"]
    assert (config["FENCEX_LOCATIONS_TOPIC"], config["FENCEX_EVENTS_TOPIC"], config["FENCEX_DLQ_TOPIC"]) == tuple(
        TOPICS
    )
    assert int(config["FENCEX_PARTITIONS"]) == TOPICS["locations"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_on_the_processor_group_and_never_past_the_partitions(overlay):
    scaled = named(overlay, "ScaledObject", "processor")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka" and trigger["metadata"]["topic"] == "locations"
    assert trigger["metadata"]["consumerGroup"] == ProcessorSettings().group_id
    assert scaled["spec"]["scaleTargetRef"]["name"] == "processor"
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] <= TOPICS["locations"]
    bootstrap = named(overlay, "ConfigMap", "fencex-config")["data"]["FENCEX_KAFKA_BOOTSTRAP"]
    assert (
        trigger["metadata"]["bootstrapServers"]
        == bootstrap
        == f"{named(overlay, 'Kafka', 'fencex-kafka')['metadata']['name']}-kafka-bootstrap:9092"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workloads_are_restricted_probed_and_sized(overlay):
    for kind in ("Deployment", "StatefulSet"):
        for obj in objects(overlay, kind):
            pod = obj["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
            for c in pod["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
                assert sc["capabilities"]["drop"] == ["ALL"]
                assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
                assert "livenessProbe" in c
    for name in ("processor", "api"):
        assert named(overlay, "PodDisruptionBudget", name)
    assert named(overlay, "StatefulSet", "redis")["spec"]["volumeClaimTemplates"]
    assert "--appendonly" in named(overlay, "StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default(overlay):
    policies = {p["metadata"]["name"]: p for p in objects(overlay, "NetworkPolicy")}
    assert policies["default-deny-ingress"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    redis = policies["redis-from-fencex"]["spec"]["ingress"][0]
    allowed = redis["from"][0]["podSelector"]["matchExpressions"][0]["values"]
    assert set(allowed) == {"processor", "api", "simulator"}


def test_the_api_key_is_a_secret_and_prod_commits_none():
    for overlay in OVERLAYS:
        (c,) = named(overlay, "Deployment", "api")["spec"]["template"]["spec"]["containers"]
        admin = next(e for e in c["env"] if e["name"] == "FENCEX_ADMIN_KEY")
        assert admin["valueFrom"]["secretKeyRef"] == {"name": "fencex-api", "key": "admin-key"}
    assert named("dev", "Secret", "fencex-api")
    assert not objects("prod", "Secret")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dashboards_and_rules_are_the_same_files_as_compose(overlay):
    cm = named(overlay, "ConfigMap", "fencex-dashboards")
    for name, text in cm["data"].items():
        assert text == (ROOT / "deploy" / "grafana" / "dashboards" / name).read_text()
    assert len(cm["data"]) == 4
    rule = named(overlay, "PrometheusRule", "fencex")
    assert rule["spec"] == yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    volumes = compose()["services"]["grafana"]["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards/fencex:ro" in volumes


def test_prod_runs_three_replicated_brokers():
    assert named("prod", "KafkaNodePool", "combined")["spec"]["replicas"] == 3
    assert {t["spec"]["replicas"] for t in objects("prod", "KafkaTopic")} == {3}
    assert named("prod", "Kafka", "fencex-kafka")["spec"]["kafka"]["config"]["min.insync.replicas"] == 2


@pytest.mark.parametrize("service", ["processor", "api", "simulator"])
def test_dockerfiles(service):
    text = (ROOT / "services" / service / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) == 2, "multi-stage: a build stage and a runtime stage"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M).group(1)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), "a pinned base image"
    assert re.search(r"^USER 10001", text, re.M) and "HEALTHCHECK" in text
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    assert entry[:2] == ["python", "-m"]
    module = entry[2]
    assert (ROOT / Path(*module.split(".")) / "__main__.py").exists(), f"{module} has no __main__"
    assert '".[service]"' in text  # only what the services need
    for name, svc in compose()["services"].items():
        if "build" in svc and name.startswith(service):
            assert svc["build"]["dockerfile"] == f"services/{service}/Dockerfile"


def test_compose_starts_in_order():
    services = compose()["services"]
    for name in ("processor-1", "api"):
        deps = services[name]["depends_on"]
        assert deps["redis"]["condition"] == "service_healthy"
        assert deps["kafka-init"]["condition"] == "service_completed_successfully"
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    for name in ("kafka", "redis", "processor-1", "api", "prometheus", "grafana"):
        assert "healthcheck" in services[name], name
    assert services["redis"]["command"][:3] == ["redis-server", "--appendonly", "yes"]
    assert "redis-data:/data" in services["redis"]["volumes"]

"""docker-compose and Kubernetes, checked statically (no Docker engine or cluster runs here):
schemas, and agreement between code, Dockerfiles, compose and the manifests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
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
TOPICS = {"locations": 24, "fence-events": 24, "locations.dlq": 1}
# The API groups Kubernetes serves itself (kubernetes-validate has their schemas); any other group
# is an operator's, validated against its CRD in tests/unit/test_deploy_crds.py.
BUILT_IN_GROUPS = frozenset(
    {
        "",  # core: v1
        "admissionregistration.k8s.io",
        "apps",
        "authentication.k8s.io",
        "authorization.k8s.io",
        "autoscaling",
        "batch",
        "certificates.k8s.io",
        "coordination.k8s.io",
        "discovery.k8s.io",
        "events.k8s.io",
        "flowcontrol.apiserver.k8s.io",
        "networking.k8s.io",
        "node.k8s.io",
        "policy",
        "rbac.authorization.k8s.io",
        "resource.k8s.io",
        "scheduling.k8s.io",
        "storage.k8s.io",
    }
)
K8S_VERSION = "1.33.0"  # the oldest Kubernetes deploy/README.md supports (KEDA 2.20.2 is tested on 1.33 to 1.35)
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def built_in(api_version: str) -> bool:
    return api_version.rpartition("/")[0] in BUILT_IN_GROUPS


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
            "kustomize",  # no flags: what `kubectl apply -k` and GitOps tools do
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


@cache
def dockerfile_stages() -> dict[str, str]:
    """The Dockerfile's stages by name (each FROM line up to the next), the unnamed last one as
    "final", and what comes before the first FROM as "preamble"."""
    preamble, *blocks = re.split(r"^(?=FROM )", (ROOT / "Dockerfile").read_text(), flags=re.M)
    stages = {"preamble": preamble}
    for block in blocks:
        m = re.match(r"FROM (\S+)(?: AS (\S+))?", block)
        assert m is not None
        stages[m.group(2) or "final"] = block
    return stages


def instruction(stage: str, name: str) -> str | None:
    """The argument of the stage's instruction ``name``, continuation lines joined."""
    m = re.search(rf"^{name} (.+)$", dockerfile_stages()[stage].replace("\\\n", " "), re.M)
    return m.group(1) if m else None


def healthcheck(stage: str) -> list[str]:
    text = instruction(stage, "HEALTHCHECK")
    assert text, f"{stage} has no HEALTHCHECK"
    return json.loads(text.split(" CMD ", 1)[1])


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
        if not built_in(obj["apiVersion"]):  # an operator's: against its CRD in test_deploy_crds.py
            continue
        kinds.add((obj["apiVersion"], obj["kind"]))
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    expected = {
        "Namespace",
        "ConfigMap",
        "Service",
        "StatefulSet",
        "Deployment",
        "HorizontalPodAutoscaler",
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
        assert instruction(f"service-{name}", "EXPOSE") == str(port)
        assert f"127.0.0.1:{port}/healthz" in " ".join(healthcheck(f"service-{name}"))
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
    if overlay != "dev":  # production scales to one worker a partition, never past (a small cluster: 3)
        (locations,) = [t for t in objects(overlay, "KafkaTopic") if t["spec"]["topicName"] == "locations"]
        assert scaled["spec"]["maxReplicaCount"] == locations["spec"]["partitions"]
    bootstrap = named(overlay, "ConfigMap", "fencex-config")["data"]["FENCEX_KAFKA_BOOTSTRAP"]
    kafka = named(overlay, "Kafka", "fencex-kafka")["metadata"]
    assert bootstrap == f"{kafka['name']}-kafka-bootstrap:9092"  # the workloads' own namespace
    # KEDA's operator runs in its namespace: the same Service, named with ours (test_deploy_crds)
    host, port = bootstrap.split(":")
    assert trigger["metadata"]["bootstrapServers"] == f"{host}.{kafka['namespace']}.svc:{port}"


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
    # its configuration (AOF, noeviction, maxmemory): tests/unit/test_redis_config.py
    assert named(overlay, "StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]["args"][0].endswith(
        "redis.conf"
    )


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
    assert set(cm["data"]) == {p.name for p in (ROOT / "deploy" / "grafana" / "dashboards").glob("*.json")}
    rule = named(overlay, "PrometheusRule", "fencex")
    assert rule["spec"] == yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    volumes = compose()["services"]["grafana"]["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards/fencex:ro" in volumes


def test_the_dashboards_kustomization_lists_every_dashboard():
    # a new dashboard left out of the list would be provisioned by compose and missing in Kubernetes
    folder = ROOT / "deploy" / "grafana" / "dashboards"
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text())
    (generator,) = kust["configMapGenerator"]
    assert sorted(generator["files"]) == sorted(p.name for p in folder.glob("*.json"))


def test_prod_runs_three_replicated_brokers():
    assert named("prod", "KafkaNodePool", "combined")["spec"]["replicas"] == 3
    assert {t["spec"]["replicas"] for t in objects("prod", "KafkaTopic")} == {3}
    assert named("prod", "Kafka", "fencex-kafka")["spec"]["kafka"]["config"]["min.insync.replicas"] == 2


def test_one_dockerfile_builds_every_service():
    stages = dockerfile_stages()
    assert set(stages) == {"preamble", "webapp", "build", "runtime", "final"} | {f"service-{s}" for s in SETTINGS}
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", stages["preamble"], re.M)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base.group(1)), "a pinned base image"
    assert re.search(r"^ARG SERVICE$", stages["preamble"], re.M), "the service is a build argument"
    assert stages["build"].startswith("FROM ${PYTHON_IMAGE} AS build")
    assert "-r requirements/service.lock" in stages["build"]  # only what the services need (tests/unit/test_images.py)
    # the web app is built in a node stage; only its output reaches the package (package data) and images
    node = re.search(r"^ARG NODE_IMAGE=(\S+)", stages["preamble"], re.M)
    assert node and re.fullmatch(r"node:\d+\.\d+\.\d+-bookworm-slim", node.group(1)), "a pinned node image"
    assert "npm ci" in stages["webapp"] and "npm run build" in stages["webapp"]
    assert "COPY --from=webapp /src/services/api/static/app ./services/api/static/app" in stages["build"]
    assert stages["build"].index("static/app") < stages["build"].index("pip install --no-deps .")
    assert stages["runtime"].startswith("FROM ${PYTHON_IMAGE} AS runtime")  # no build tools or sources
    assert "COPY --from=build /venv /venv" in stages["runtime"]
    assert instruction("runtime", "USER") == "10001:10001"
    assert stages["final"].strip() == "FROM service-${SERVICE}"
    assert not list(ROOT.glob("services/*/Dockerfile")), "one Dockerfile, not one per service"


@pytest.mark.parametrize("service", list(SETTINGS))
def test_each_service_stage_runs_the_service_as_the_images_user(service):
    stage = f"service-{service}"
    assert dockerfile_stages()[stage].startswith(f"FROM runtime AS {stage}")
    assert instruction(stage, "USER") is None, "the user stays the runtime's, non-root"
    entry = json.loads(instruction(stage, "ENTRYPOINT") or "null")
    assert entry == ["python", "-m", f"services.{service}"]
    assert (ROOT / "services" / service / "__main__.py").exists()
    assert healthcheck(stage)[:2] == ["python", "-c"]


def test_the_simulator_has_no_port_and_checks_its_process():
    assert instruction("service-simulator", "EXPOSE") is None
    check = healthcheck("service-simulator")
    assert "/proc/1/cmdline" in check[2] and "b'services.simulator'" in check[2]
    for overlay in ("dev",):
        (c,) = named(overlay, "Deployment", "simulator")["spec"]["template"]["spec"]["containers"]
        assert c["livenessProbe"]["exec"]["command"] == check, "Kubernetes checks what the image checks"


@pytest.mark.parametrize("service", list(SETTINGS))
def test_compose_and_kubernetes_run_the_image_built_for_the_service(service):
    image = f"fencex/{service}:{VERSION}"
    built = {name: svc for name, svc in compose()["services"].items() if "build" in svc}
    mine = [svc for name, svc in built.items() if svc["build"]["args"]["SERVICE"] == service]
    assert mine, f"compose builds no {service} image"
    for svc in mine:
        assert svc["build"]["context"] == "." and svc["build"].get("dockerfile", "Dockerfile") == "Dockerfile"
        assert svc["image"] == image
        assert svc["read_only"] is True
    for name, svc in built.items():
        assert name.startswith(svc["build"]["args"]["SERVICE"]), f"{name} builds another service's image"
    overlays = OVERLAYS if service != "simulator" else ["dev"]
    for overlay in overlays:
        (c,) = named(overlay, "Deployment", service)["spec"]["template"]["spec"]["containers"]
        assert c["image"] == image


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
    assert services["redis"]["command"][:2] == ["redis-server", "/usr/local/etc/redis/redis.conf"]  # test_redis_config
    assert "redis-data:/data" in services["redis"]["volumes"]


def _stateful_paths(name: str, service: dict) -> list[str]:
    """Where each stateful image keeps its data, as this compose file configures it (issue 14, item 6)."""
    if name == "kafka":  # the apache/kafka image writes to /tmp/kafka-logs unless KAFKA_LOG_DIRS says
        return str(service["environment"].get("KAFKA_LOG_DIRS", "/tmp/kafka-logs")).split(",")
    if name == "redis":
        return ["/data"]
    if name == "prometheus":  # a command given replaces the image's, and with it its /prometheus default
        paths = [a.split("=", 1)[1] for a in service.get("command", []) if a.startswith("--storage.tsdb.path=")]
        return paths or ["/prometheus/data"]
    if name == "grafana":
        return [str(service.get("environment", {}).get("GF_PATHS_DATA", "/var/lib/grafana"))]
    return []


@pytest.mark.parametrize("name", ["kafka", "redis", "prometheus", "grafana"])
def test_compose_keeps_every_stateful_path_on_a_named_volume(name):
    """Recreating a container (an upgrade, `docker compose up` after a change) must not lose topics,
    offsets, device state, the metrics' 7 days or Grafana's database."""
    c = compose()
    service = c["services"][name]
    named = set(c.get("volumes") or {})
    mounts = [str(v).split(":")[:2] for v in service.get("volumes", [])]
    on_volumes = [target for source, target in mounts if source in named]
    for path in _stateful_paths(name, service):
        assert any(path == t or path.startswith(t.rstrip("/") + "/") for t in on_volumes), (name, path, mounts)


def test_security_md_names_real_settings_with_their_defaults():
    """SECURITY.md's limits are the settings' own: each FENCEX_ name it gives is a setting, and a
    table row that names one shows its default."""
    text = (ROOT / "SECURITY.md").read_text()
    readable = set().union(*(env_names(s) for s in SETTINGS))
    named_there = set(re.findall(r"`(FENCEX_[A-Z_]+)`", text))
    assert named_there and named_there <= readable, named_there - readable
    rows = re.findall(r"^\| `(FENCEX_[A-Z_]+)` \| ([^|]+) \|", text, re.M)
    assert len(rows) >= 8
    for var, cell in rows:
        (value,) = {
            s.model_fields[var.removeprefix("FENCEX_").lower()].default
            for s in SETTINGS.values()
            if var.removeprefix("FENCEX_").lower() in s.model_fields
        }
        shown = f"{value:,}" if isinstance(value, int) else f"{value:g}"
        assert shown in cell, f"SECURITY.md gives {var} as {cell.strip()!r}; its default is {shown}"


def test_the_production_partition_count_is_the_sizing_rules_at_the_issues_target():
    """Issue 15 item 4: 170,000 fixes/s (10,000,000 collars a minute) at the measured per-worker rate,
    with headroom (docs/design/partitions.md); the KEDA maximum follows it (the test above)."""
    from bench.partitions import partitions_for

    assert ProcessorSettings().partitions == partitions_for(170_000).partitions == TOPICS["locations"]

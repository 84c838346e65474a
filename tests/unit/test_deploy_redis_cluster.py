"""fencex on a Redis Cluster in both deployments (issue 15, item 1), checked statically as the rest of
deploy/ is: compose's override file merged onto docker-compose.yml as Compose merges files and then
validated against the Compose specification; the Kubernetes components rendered onto the overlays,
their built-in objects against Kubernetes' schemas and the operator's RedisCluster against its released
CRD; and that every fencex client is pointed at the cluster, reaches its nodes, and that the nodes keep
the one Redis's durability (no eviction, AOF every second)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from fencex.store.connection import cluster_seeds
from tests.unit.crdschema import CRD_DIR, custom_errors, served
from tests.unit.test_deploy import K8S_VERSION, ROOT, built_in, compose, env_names
from tests.unit.test_deploy_crds import of, one, pods, selects
from tests.unit.test_redis_config import effective, quantity, redis_bytes

OVERRIDE = ROOT / "deploy" / "compose.redis-cluster.yml"
COMPONENTS = ROOT / "deploy" / "k8s" / "components"
FENCEX = ("processor-1", "processor-2", "processor-3", "api", "simulator")
NODES = ("redis-1", "redis-2", "redis-3")
DURABLE = ("maxmemory-policy", "appendonly", "appendfsync", "no-appendfsync-on-rewrite", "save")
Doc = dict[str, Any]

# ------------------------------------------------------------------ compose


class _Override:
    """A value tagged ``!override``: it replaces what the files before said, whole."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _Reset:
    """A value tagged ``!reset``: the attribute is removed."""


class ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it: with its merge tags ``!override`` and ``!reset``."""


def _construct_override(loader: yaml.SafeLoader, node: yaml.Node) -> _Override:
    if isinstance(node, yaml.MappingNode):
        return _Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return _Override(loader.construct_sequence(node, deep=True))
    return _Override(loader.construct_scalar(node))  # type: ignore[arg-type]


ComposeLoader.add_constructor("!override", _construct_override)
ComposeLoader.add_constructor("!reset", lambda loader, node: _Reset())

REPLACED = {"command", "entrypoint"}  # shell commands are replaced, not appended (the merge rules)
UNIQUE = {"volumes", "ports", "secrets", "configs"}  # merged by their target


def _target(entry: Any) -> str:
    return str(entry.get("target") if isinstance(entry, dict) else str(entry).split(":")[1 if ":" in str(entry) else 0])


def merge(base: Any, over: Any, key: str = "") -> Any:
    """Compose's merge of two files' trees (compose-spec's 13-merge.md): mappings merged key by key,
    sequences appended (shell commands replaced, unique resources merged by target), scalars replaced;
    ``!override`` replaces and ``!reset`` removes."""
    if isinstance(over, _Override):
        return strip(over.value)
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            if isinstance(v, _Reset):
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], v, k)
            else:
                out[k] = strip(v)
        return out
    if isinstance(base, list) and isinstance(over, list) and key not in REPLACED:
        if key in UNIQUE:
            replaced = {_target(e) for e in over}
            return [e for e in base if _target(e) not in replaced] + strip(over)
        return base + strip(over)
    return strip(over)


def strip(value: Any) -> Any:
    """A tree without merge tags (as Compose hands it on)."""
    if isinstance(value, _Override):
        return strip(value.value)
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if not isinstance(v, _Reset)}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


@cache
def merged() -> Doc:
    """``docker compose -f docker-compose.yml -f deploy/compose.redis-cluster.yml``'s model."""
    over = yaml.load(OVERRIDE.read_text(), ComposeLoader)  # SafeLoader with two tags
    return merge(compose(), over)  # type: ignore[no-any-return]


def enabled(model: Doc) -> dict[str, Doc]:
    """The services `up` starts with no profile given."""
    return {n: s for n, s in model["services"].items() if not s.get("profiles")}


def test_the_merge_follows_composes_rules():
    base = {"a": {"command": ["x"], "dns": ["1"], "volumes": ["v:/data", "./c:/etc/c:ro"], "env": {"A": "1"}}}
    over = yaml.load(
        "a: {command: [y], dns: ['2'], volumes: ['w:/data'], env: {B: '2'}, depends_on: !override {b: {}}}\n"
        "b: {ports: !reset []}",
        ComposeLoader,
    )
    assert merge({**base, "b": {"ports": ["1:1"], "image": "i"}}, over) == {
        "a": {
            "command": ["y"],
            "dns": ["1", "2"],
            "volumes": ["./c:/etc/c:ro", "w:/data"],
            "env": {"A": "1", "B": "2"},
            "depends_on": {"b": {}},
        },
        "b": {"image": "i"},
    }


def test_the_cluster_compose_validates_against_the_compose_spec():
    schema = json.loads((ROOT / "deploy" / "schema" / "compose-spec.json").read_text())
    jsonschema.validate(merged(), schema)
    broken = copy.deepcopy(merged())
    broken["services"]["redis-cluster-init"]["depends_on"]["redis-1"]["condition"] = "service_ready"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_compose_points_every_fencex_service_at_the_cluster_and_nothing_at_the_one_redis():
    model = merged()
    up = enabled(model)
    assert {"redis", "redis-backup"} == {n for n, s in model["services"].items() if s.get("profiles")}
    for name, service in up.items():
        for dep in service.get("depends_on", {}):
            assert dep in up, f"{name} waits for {dep}, which does not start"
    nodes = {n: s for n, s in up.items() if "--cluster-enabled" in s.get("command", [])}
    assert set(nodes) == set(NODES)
    for name in FENCEX:
        env = up[name]["environment"]
        seeds = cluster_seeds(env["FENCEX_REDIS_URL"])
        assert seeds is not None, f"{name}: {env['FENCEX_REDIS_URL']} is no cluster URL"
        assert seeds[1] == [(n, 6379) for n in NODES]
        assert env["FENCEX_STORE_GROUPS"] == "16"
        assert {"FENCEX_REDIS_URL", "FENCEX_STORE_GROUPS"} <= env_names(name.split("-")[0])
    for name in ("processor-1", "processor-2", "processor-3", "api"):
        deps = up[name]["depends_on"]
        assert deps["redis-cluster-init"] == {"condition": "service_completed_successfully"}
        assert "redis" not in deps


def test_the_nodes_keep_the_one_redis_durability_and_their_state_on_volumes():
    model = merged()
    single = effective(model["services"]["redis"]["command"][1:], _files(model["services"]["redis"]))
    volumes = set(model["volumes"])
    for name in NODES:
        node = model["services"][name]
        assert node["image"] == model["services"]["redis"]["image"]
        conf = effective(node["command"][1:], _files(node))
        for key in DURABLE:
            assert conf[key] == single[key], (name, key)
        assert conf["cluster-enabled"] == ["yes"] and conf["dir"] == ["/data"]
        assert "/" not in conf["cluster-config-file"][0], "nodes.conf in --dir, on the volume"
        assert redis_bytes(conf["maxmemory"][0]) <= 0.6 * quantity(node["mem_limit"])
        assert conf["cluster-announce-hostname"] == [name] and conf["cluster-preferred-endpoint-type"] == ["hostname"]
        assert node["hostname"] == name
        (data,) = [v.split(":")[0] for v in node["volumes"] if v.split(":")[1] == "/data"]
        assert data in volumes
        assert node["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def _files(service: Doc) -> dict[str, str]:
    """The files a service mounts from the repository, by their path in the container."""
    files = {}
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            files[target] = (ROOT / source).read_text()
    return files


def test_the_init_joins_every_node_once_and_waits_for_the_cluster():
    init = merged()["services"]["redis-cluster-init"]
    assert init["depends_on"] == {n: {"condition": "service_healthy"} for n in NODES}
    assert init["restart"] == "no"
    script = init["command"][0]
    create = re.search(r"redis-cli --cluster create (.+)", script)
    assert create, script
    words = create.group(1).split()
    assert words[: len(NODES)] == [f"{n}:6379" for n in NODES]
    assert "--cluster-replicas" in words and words[words.index("--cluster-replicas") + 1] == "0"
    assert "--cluster-yes" in words
    assert "cluster_slots_assigned:16384" in script, "a restart does not create the cluster again"
    assert "cluster_state:ok" in script and "exit 1" in script


# ------------------------------------------------------------------ Kubernetes


@cache
def with_components(overlay: str, component: str) -> list[Doc]:
    """An overlay with a component, as deploy/README.md's example writes it."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is needed to render kustomize (./dev test installs Debian's kubernetes-client)")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        here = Path(tmp)
        (here / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "namespace": "fencex",
                    "resources": [os.path.relpath(ROOT / "deploy" / "k8s" / "overlays" / overlay, here)],
                    "components": [os.path.relpath(COMPONENTS / component, here)],
                }
            )
        )
        out = subprocess.run(
            [kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", tmp], capture_output=True, text=True
        )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


CASES = [("prod", "redis-cluster"), ("prod", "redis-cluster-operator"), ("dev", "redis-cluster-operator")]


@pytest.mark.parametrize("overlay,component", CASES)
def test_the_cluster_manifests_validate(overlay, component):
    docs = with_components(overlay, component)
    for obj in docs:
        if built_in(obj["apiVersion"]):
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        else:
            assert custom_errors(obj) == [], obj["kind"]
    clusters = of(docs, "RedisCluster")
    assert len(clusters) == (component == "redis-cluster-operator")


@pytest.mark.parametrize("overlay,component", CASES)
def test_every_fencex_workload_takes_the_cluster_url_and_the_one_redis_is_gone(overlay, component):
    docs = with_components(overlay, component)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    gone = {("StatefulSet", "redis"), ("Service", "redis"), ("CronJob", "redis-backup"), ("ConfigMap", "redis")}
    gone |= {("NetworkPolicy", n) for n in ("redis-from-fencex", "redis-from-backup", "redis-backup-egress")}
    assert not names & gone, names & gone
    config = one(docs, "ConfigMap", "fencex-config")["data"]
    assert "FENCEX_REDIS_URL" not in config and config["FENCEX_STORE_GROUPS"] == "16"
    clients = {d["metadata"]["name"] for d in of(docs, "Deployment")}
    assert clients == ({"processor", "api", "simulator"} if overlay == "dev" else {"processor", "api"})
    for name in clients:
        (c,) = one(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        (url,) = [e for e in c["env"] if e["name"] == "FENCEX_REDIS_URL"]
        assert url["valueFrom"]["secretKeyRef"] == {"name": "fencex-redis", "key": "url"}
    secrets = {s["metadata"]["name"] for s in of(docs, "Secret")}
    if component == "redis-cluster":
        assert "fencex-redis" not in secrets, "a managed cluster's URL (and token) is the operator's to create"
        assert not [p for p in of(docs, "NetworkPolicy") if "Egress" in p["spec"].get("policyTypes", [])]
    else:
        import base64

        (secret,) = [s for s in of(docs, "Secret") if s["metadata"]["name"] == "fencex-redis"]
        seeds = cluster_seeds(base64.b64decode(secret["data"]["url"]).decode())
        assert seeds is not None
        (cluster,) = of(docs, "RedisCluster")
        name, size = cluster["metadata"]["name"], cluster["spec"]["clusterSize"]
        # the leaders' pods, through their StatefulSet's headless Service (the operator's names)
        assert seeds[1] == [(f"{name}-leader-{i}.{name}-leader-headless", 6379) for i in range(size)]


def operator_pods(cluster: Doc) -> dict[str, dict[str, str]]:
    """The labels the operator (0.26.0, k8sutils/labels.go) gives the cluster's pods."""
    name = cluster["metadata"]["name"]
    extra = cluster["metadata"].get("labels", {})
    return {
        f"{name}-{role}": {**extra, "app": f"{name}-{role}", "redis_setup_type": "cluster", "role": role}
        for role in ("leader", "follower")
    }


def admitted(docs: list[Doc], namespace: str, labels: dict[str, str], target: dict[str, str], port: int) -> bool:
    """Whether the namespace's NetworkPolicies let a pod (its namespace, its labels) reach a pod of
    fencex's namespace labelled ``target`` on ``port`` (ingress; the source's egress is unrestricted)."""
    policies = [
        p
        for p in of(docs, "NetworkPolicy")
        if "Ingress" in p["spec"].get("policyTypes", ["Ingress"]) and selects(p["spec"]["podSelector"], target)
    ]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            if ports and port not in ports:
                continue
            for peer in rule.get("from", []):
                in_namespace = (
                    selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace})
                    if "namespaceSelector" in peer
                    else namespace == "fencex"
                )
                if in_namespace and selects(peer.get("podSelector", {}), labels):
                    return True
    return False


def test_the_network_policies_let_the_clients_reach_every_node_and_no_more():
    docs = with_components("dev", "redis-cluster-operator")
    (cluster,) = of(docs, "RedisCluster")
    nodes = operator_pods(cluster)
    workloads = {n: p["metadata"]["labels"] for n, p in pods(docs).items()}
    for node in nodes.values():
        for client in ("processor", "api", "simulator"):
            assert admitted(docs, "fencex", workloads[client], node, 6379), client
            assert not admitted(docs, "fencex", workloads[client], node, 16379), f"{client} reaches the bus"
        for peer in nodes.values():
            assert admitted(docs, "fencex", peer, node, 6379) and admitted(docs, "fencex", peer, node, 16379)
        assert admitted(docs, "ot-operators", {"name": "redis-operator"}, node, 6379)
        assert not admitted(docs, "fencex", {"app.kubernetes.io/name": "webapp"}, node, 6379)
        assert not admitted(docs, "monitoring", {}, node, 6379)


def test_the_reachability_check_catches_a_node_left_out():
    docs = copy.deepcopy(with_components("dev", "redis-cluster-operator"))
    policy = one(docs, "NetworkPolicy", "redis-cluster-from-fencex")
    policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]["values"] = ["api"]
    (cluster,) = of(docs, "RedisCluster")
    leader = operator_pods(cluster)[f"{cluster['metadata']['name']}-leader"]
    processor = pods(docs)["processor"]["metadata"]["labels"]
    assert not admitted(docs, "fencex", processor, leader, 6379)


def test_the_operator_cluster_keeps_the_one_redis_durability():
    docs = with_components("prod", "redis-cluster-operator")
    (cluster,) = of(docs, "RedisCluster")
    spec = cluster["spec"]
    assert spec["clusterSize"] == 3 and spec["persistenceEnabled"] is True
    configs = {spec[role]["redisConfig"]["additionalRedisConfig"] for role in ("redisLeader", "redisFollower")}
    (name,) = configs
    text = one(docs, "ConfigMap", name)["data"]["redis-additional.conf"]  # the key the operator includes
    conf = effective(["/extra.conf"], {"/extra.conf": text})
    single = effective(["/r.conf"], {"/r.conf": (ROOT / "deploy" / "redis" / "redis.conf").read_text()})
    for key in DURABLE:
        assert conf[key] == single[key], key
    limit = quantity(spec["kubernetesConfig"]["resources"]["limits"]["memory"])
    assert 0 < redis_bytes(conf["maxmemory"][0]) <= 0.6 * limit
    assert spec["storage"]["nodeConfVolume"] is True
    assert re.fullmatch(r"quay\.io/opstree/redis:v7\.2\.\d+", spec["kubernetesConfig"]["image"])


def test_the_operators_crd_is_vendored_with_its_licence():
    assert (CRD_DIR / "LICENSE.redis-operator").is_file()
    assert ("redis.redis.opstreelabs.in", "v1beta2", "RedisCluster") in served()
    broken = copy.deepcopy(of(with_components("prod", "redis-cluster-operator"), "RedisCluster")[0])
    broken["spec"]["redisLeader"]["redisConfig"]["additionalRedisConfigs"] = "typo"
    assert any("additionalRedisConfigs" in e for e in custom_errors(broken))
    del broken["spec"]["redisLeader"]["redisConfig"]["additionalRedisConfigs"]
    broken["spec"].pop("clusterSize")
    assert any("'clusterSize' is a required property" in e for e in custom_errors(broken))

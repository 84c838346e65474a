"""The operators' custom resources, checked against the operators' own released CRDs (issue 14, items
1, 3, 7 and 8): every rendered object of a group Kubernetes does not build in is validated against
the openAPIV3Schema that a CRD in deploy/schema/crds/ serves for its group, version and kind, the way
the API server would take it (unknown fields are errors here: the server would prune them silently),
and the Kafka listeners, NetworkPolicies and autoscalers are checked against the pods that use them."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.unit.crdschema import (
    CRD_DIR,
    EVALUATED,
    RULES_NOT_CHECKED,
    SKIPPED_TRANSITION,
    TYPED_FORMATS,
    Doc,
    KubernetesValidator,
    as_json_schema,
    compiled,
    crd_files,
    custom_errors,
    rules_in,
    served,
    types,
    with_defaults,
)
from tests.unit.test_deploy import K8S_VERSION, OVERLAYS, ROOT, built_in, compose, named, objects, rendered

SHARED_CRDS = ROOT.parent / "shared" / "crds"  # the released CRDs the issue names, beside the checkout

# The Kafka versions Strimzi 1.2.0 runs and the KRaft metadata version it pairs with each (the
# `supported: true` entries of kafka-versions.yaml at its 1.2.0 tag; 4.3.1 is its default).
STRIMZI_KAFKA = {"4.2.0": "4.2-IV1", "4.2.1": "4.2-IV1", "4.3.0": "4.3-IV0", "4.3.1": "4.3-IV0"}


def custom_resources(overlay: str) -> list[Doc]:
    return [obj for obj in rendered(overlay) if not built_in(obj["apiVersion"])]


# ------------------------------------------------------------------ the CRDs


def test_the_vendored_crds_are_the_released_ones() -> None:
    """deploy/schema/crds holds byte-for-byte copies of ../shared/crds (CI's fresh clone may have no
    ../shared; the copies are what the tests read)."""
    if not SHARED_CRDS.is_dir():
        pytest.skip(f"{SHARED_CRDS} is not here to compare with")
    released = sorted(SHARED_CRDS.iterdir())
    assert released
    for path in released:
        copy_ = CRD_DIR / path.name
        assert copy_.is_file(), f"{path.name} is not vendored in deploy/schema/crds"
        assert copy_.read_bytes() == path.read_bytes(), f"{path.name} differs from the released file"


def test_each_vendored_crd_carries_its_licence() -> None:
    licences = {p.name.removeprefix("LICENSE.") for p in CRD_DIR.glob("LICENSE.*")}
    assert {"strimzi", "keda", "prometheus-operator"} <= licences
    for path, _ in crd_files():
        assert any(path.name.startswith(f"{project}-") for project in licences), f"{path.name}: no LICENSE.<project>"
    kinds = {k for _, _, k in served()}
    assert {"Kafka", "KafkaNodePool", "KafkaTopic", "ScaledObject", "PodMonitor", "PrometheusRule"} <= kinds


def schema_nodes(node: Any) -> Iterator[Doc]:
    """Every schema node at or under node."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from schema_nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from schema_nodes(value)


def rule_texts(kind: str) -> set[str]:
    return {r["rule"] for (_, _, k), schema in served().items() if k == kind for _, _, r in rules_in(schema)}


def test_every_cel_rule_of_the_crds_can_run_here() -> None:
    """Every CEL rule of every served version compiles, calls only functions celpy or
    crdschema.EXTENSIONS has, and reads no string that Kubernetes would give CEL as another type."""
    problems = []
    for (_, version, kind), schema in served().items():
        for path, node, rule in rules_in(schema):
            if problem := compiled(rule["rule"]).problem:
                problems.append(f"{kind} {version} {path}: {problem}")
            for sub in schema_nodes(node):
                if sub.get("format") in TYPED_FORMATS and "string" in types(sub):
                    problems.append(f"{kind} {version} {path}: a rule reads a string of format {sub['format']}")
    assert not problems, "\n".join(problems)
    # prometheus-operator's CRDs, KafkaTopic and KafkaNodePool carry no CEL rule
    assert {k for (_, _, k) in served() if rule_texts(k)} == {"HTTPRoute", "ScaledObject", "Kafka"}


# ------------------------------------------------------- custom resources vs CRDs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_custom_resource_validates_against_its_crd(overlay: str) -> None:
    found = custom_resources(overlay)
    assert {o["kind"] for o in found} >= {
        "Kafka",
        "KafkaNodePool",
        "KafkaTopic",
        "ScaledObject",
        "PodMonitor",
        "PrometheusRule",
        "HTTPRoute",
    }
    EVALUATED.clear()
    SKIPPED_TRANSITION.clear()
    errors = [e for obj in found for e in custom_errors(obj)]
    assert not errors, "\n".join(errors)
    for kind in ("HTTPRoute", "ScaledObject"):  # their objects meet CEL rules, and the rules ran
        assert rule_texts(kind) & set(EVALUATED), f"no CEL rule of {kind} ran"
    assert not SKIPPED_TRANSITION, "no rule of today's CRDs reads oldSelf"


OLD_KAFKA = """
apiVersion: kafka.strimzi.io/v1beta2
kind: Kafka
metadata:
  name: fencex-kafka
  annotations: {strimzi.io/node-pools: enabled, strimzi.io/kraft: enabled}
spec:
  kafka:
    version: 3.8.0
    metadataVersion: 3.8-IV0
    listeners: [{name: plain, port: 9092, type: internal, tls: false}]
  entityOperator: {topicOperator: {}}
"""


def _kafka() -> Doc:
    return copy.deepcopy(named("prod", "Kafka", "fencex-kafka"))


def _broken(change: Callable[[Doc], None], obj: Callable[[], Doc]) -> Doc:
    broken = obj()
    change(broken)
    return broken


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    def change(obj: Doc) -> None:
        *parents, last = path.split("/")
        node: Any = obj
        for step in parents:
            node = node[int(step)] if isinstance(node, list) else node[step]
        node[int(last) if isinstance(node, list) else last] = value

    return change


def _scaled() -> Doc:
    return copy.deepcopy(named("prod", "ScaledObject", "processor"))


def _pool() -> Doc:
    return copy.deepcopy(named("prod", "KafkaNodePool", "combined"))


BROKEN: dict[str, tuple[Callable[[], Doc], str]] = {
    # the objects as they were before issue 14: Strimzi 1.x serves v1 only
    "v1beta2 Kafka as it was": (lambda: yaml.safe_load(OLD_KAFKA), "no CRD in deploy/schema/crds serves"),
    "v1beta2 apiVersion": (
        lambda: _broken(_set("apiVersion", "kafka.strimzi.io/v1beta2"), _kafka),
        "no CRD in deploy/schema/crds serves",
    ),
    "a kind no CRD defines": (lambda: _broken(_set("kind", "KafkaUser"), _kafka), "no CRD"),
    # fields the server would prune without a word
    "spec.kafka.replicas (gone in v1: node pools)": (
        lambda: _broken(_set("spec/kafka/replicas", 3), _kafka),
        "Additional properties are not allowed ('replicas'",
    ),
    "a listener's misspelt networkPolicyPeer": (
        lambda: _broken(_set("spec/kafka/listeners/0/networkPolicyPeer", []), _kafka),
        "'networkPolicyPeer' was unexpected",
    ),
    "a peer's podSelector misspelt": (
        lambda: _broken(_set("spec/kafka/listeners/0/networkPolicyPeers/0", {"podSelecter": {}}), _kafka),
        "'podSelecter' was unexpected",
    ),
    "an unknown metadata field": (lambda: _broken(_set("metadata/annotation", {"a": "b"}), _kafka), "metadata"),
    # types, x-kubernetes-int-or-string, enums, CEL
    "a memory request that is a list": (
        lambda: _broken(_set("spec/resources/requests/memory", ["8Gi"]), _pool),
        "is not of type 'integer', 'string'",
    ),
    "a role Strimzi does not know": (lambda: _broken(_set("spec/roles", ["zookeeper"]), _pool), "is not one of"),
    "a listener without a port": (
        lambda: _broken(lambda o: o["spec"]["kafka"]["listeners"][0].pop("port"), _kafka),
        "'port' is a required property",
    ),
    "minReplicaCount as a string": (
        lambda: _broken(_set("spec/minReplicaCount", "1"), _scaled),
        "'1' is not of type 'integer'",
    ),
    "a trigger setting that is not a string": (
        lambda: _broken(_set("spec/triggers/0/metadata/lagThreshold", 50000), _scaled),
        "50000 is not of type 'string'",
    ),
    "more minimum than maximum replicas (CEL)": (
        lambda: _broken(_set("spec/minReplicaCount", 1000), _scaled),
        "minReplicaCount must be less than or equal to maxReplicaCount",
    ),
    "an int32 out of range": (lambda: _broken(_set("spec/pollingInterval", 2**31), _scaled), "is not a 'int32'"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_custom_resource_is_caught(case: str) -> None:
    make, expected = BROKEN[case]
    errors = custom_errors(make())
    assert any(expected in e for e in errors), errors


def test_what_the_schema_leaves_open_stays_open() -> None:
    """Kafka's config preserves unknown fields, int-or-string takes both, and CPU as a number is fine."""
    kafka = _kafka()
    kafka["spec"]["kafka"]["config"]["log.retention.hours"] = 168
    pool = _pool()
    pool["spec"]["resources"]["requests"]["cpu"] = 2
    assert custom_errors(kafka) == [] and custom_errors(pool) == []


def _route() -> Doc:
    return copy.deepcopy(named("prod", "HTTPRoute", "api"))


def _redirect_beside_backends(route: Doc) -> None:
    assert len(route["spec"]["rules"]) >= 2 and route["spec"]["rules"][1]["backendRefs"]
    route["spec"]["rules"][1]["filters"] = [
        {"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}
    ]


# Objects the structural schema takes and a CEL rule of the CRD refuses, one or more per CRD family
# with rules (prometheus-operator's CRDs, KafkaTopic and KafkaNodePool have none): the errors are
# the rules' alone, each with the rule's message.
CEL_CAUGHT: dict[str, tuple[Callable[[], Doc], str]] = {
    "HTTPRoute: a RequestRedirect filter beside backendRefs in the second rule": (
        lambda: _broken(_redirect_beside_backends, _route),
        "RequestRedirect filter must not be used together with backendRefs",
    ),
    "HTTPRoute: a backend timeout (1s) longer than the request's (500ms)": (
        lambda: _broken(_set("spec/rules/1/timeouts", {"request": "500ms", "backendRequest": "1s"}), _route),
        "backendRequest timeout cannot be longer than request timeout",
    ),
    # the rule reads group and kind, which the route leaves to the CRD's defaults ("" and Service)
    "HTTPRoute: a Service backend without a port": (
        lambda: _broken(lambda o: o["spec"]["rules"][0]["backendRefs"][0].pop("port"), _route),
        "Must have port for Service reference",
    ),
    "ScaledObject: more minimum than maximum replicas": (
        lambda: _broken(_set("spec/minReplicaCount", 1000), _scaled),
        "minReplicaCount must be less than or equal to maxReplicaCount",
    ),
    "Kafka: rack by topology label (the default type) with an empty key": (
        lambda: _broken(_set("spec/kafka/rack", {"topologyKey": ""}), _kafka),
        "topologyKey property is required",
    ),
    "Kafka: a JMX exporter without its configuration": (
        lambda: _broken(_set("spec/kafka/metricsConfig", {"type": "jmxPrometheusExporter"}), _kafka),
        "valueFrom property is required",
    ),
    # CEL reads an absent field as an error, not as "": the rule has no value and the object is refused
    "Kafka: rack with no topology key at all": (
        lambda: _broken(_set("spec/kafka/rack", {}), _kafka),
        "spec/kafka/rack: CEL rule cannot be evaluated (no such member in mapping: 'topologyKey')",
    ),
}


@pytest.mark.parametrize("case", list(CEL_CAUGHT))
def test_a_cel_rule_catches_what_the_schema_lets_through(case: str) -> None:
    make, expected = CEL_CAUGHT[case]
    errors = custom_errors(make())
    assert any(expected in e for e in errors), errors
    assert all("CEL rule" in e for e in errors), errors


def test_after_a_blocking_schema_error_no_rule_runs() -> None:
    """As the API server: a maximum that is a string (a type error) leaves KEDA's replica rule
    unchecked, and the errors say so."""
    scaled = _broken(_set("spec/maxReplicaCount", "12"), _scaled)
    scaled["spec"]["minReplicaCount"] = 13
    errors = custom_errors(scaled)
    assert any("'12' is not of type 'integer'" in e for e in errors), errors
    assert any(RULES_NOT_CHECKED in e for e in errors), errors
    assert not any("CEL rule" in e for e in errors), errors


# ------------------------------------------------------------ the CEL evaluation itself


def cel_errors(schema: Doc, instance: Any) -> list[str]:
    """What crdschema's validator says of instance under a small structural schema of our own."""
    validator = KubernetesValidator(as_json_schema(schema))
    return [e.message for e in validator.iter_errors(with_defaults(instance, schema))]


def _obj(rule: str, properties: Doc, **more: Any) -> Doc:
    return {
        "type": "object",
        "properties": properties,
        "x-kubernetes-validations": [{"rule": rule, **more}],
        "required": [],
    }


STRING: Doc = {"type": "string"}
INT: Doc = {"type": "integer"}

# (schema, instance, the error expected, or None for none), one Kubernetes rule each
CEL_SEMANTICS: dict[str, tuple[Doc, Any, str | None]] = {
    # property names escaped (examples of the CRD validation rules documentation)
    "a keyword is __keyword__": (_obj("self.__namespace__ > 0", {"namespace": INT}), {"namespace": 1}, None),
    "- is __dash__": (_obj("self.x__dash__prop > 0", {"x-prop": INT}), {"x-prop": 0}, "failed rule"),
    "__ is __underscores__": (_obj("self.redact__underscores__d > 0", {"redact__d": INT}), {"redact__d": 1}, None),
    ". and / are __dot__ and __slash__": (
        _obj("self.a__dot__b == self.c__slash__d", {"a.b": STRING, "c/d": STRING}),
        {"a.b": "x", "c/d": "x"},
        None,
    ),
    "a map's keys are not escaped": (
        {"type": "object", "additionalProperties": INT, "x-kubernetes-validations": [{"rule": "self['x-y'] == 1"}]},
        {"x-y": 1},
        None,
    ),
    # presence
    "has() of an absent field is false": (_obj("!has(self.a)", {"a": STRING}), {}, None),
    "a null field is absent": (_obj("!has(self.a)", {"a": {"type": "string", "nullable": True}}), {"a": None}, None),
    "a preserved unknown field is not visible": (
        {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "x-kubernetes-validations": [{"rule": "!has(self.b)"}],
        },
        {"b": 1},
        None,
    ),
    "a default is there before the rule runs": (
        _obj("self.a == 'x'", {"a": {"type": "string", "default": "x"}}),
        {},
        None,
    ),
    "reading an absent field is an error": (_obj("self.a == ''", {"a": STRING}), {}, "cannot be evaluated"),
    # messages
    "message": (_obj("self.a > 0", {"a": INT}, message="a must be positive"), {"a": 0}, "a must be positive"),
    "messageExpression before message": (
        _obj("self.a > 0", {"a": INT}, message="static", messageExpression="'a is ' + string(self.a)"),
        {"a": -2},
        "a is -2",
    ),
    "the server's text without a message": (_obj("self.a > 0", {"a": INT}), {"a": 0}, "failed rule: self.a > 0"),
    # rules that cannot run are failures naming the rule, never skips
    "a rule that does not compile": (_obj("self.a >", {"a": INT}), {"a": 1}, "does not compile"),
    "a function nobody implemented": (
        _obj("self.a.lowerAscii() == 'a'", {"a": STRING}),
        {"a": "A"},
        "calls ['lowerAscii'], which neither celpy nor EXTENSIONS has",
    ),
    "a rule that is no predicate": (_obj("self.a", {"a": INT}), {"a": 1}, "not a bool"),
    # transition rules read oldSelf: the server runs them on update only; everything here is a create
    "a transition rule is skipped": (_obj("self.a == oldSelf.a", {"a": INT}), {"a": 1}, None),
}


@pytest.mark.parametrize("case", list(CEL_SEMANTICS))
def test_cel_rules_run_as_kubernetes_runs_them(case: str) -> None:
    schema, instance, expected = CEL_SEMANTICS[case]
    errors = cel_errors(schema, instance)
    if expected is None:
        assert errors == []
    else:
        assert len(errors) == 1 and expected in errors[0], errors
        assert schema["x-kubernetes-validations"][0]["rule"] in errors[0], "the error names the rule"


def test_transition_rules_are_counted_when_skipped() -> None:
    SKIPPED_TRANSITION.clear()
    schema, instance, _ = CEL_SEMANTICS["a transition rule is skipped"]
    assert cel_errors(schema, instance) == []
    assert SKIPPED_TRANSITION == {"self.a == oldSelf.a": 1}


# ------------------------------------------------------------ Kafka (item 1)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_runs_a_version_strimzi_supports_with_its_metadata_version(overlay: str) -> None:
    for kafka in objects(overlay, "Kafka"):
        spec = kafka["spec"]["kafka"]
        assert spec["version"] in STRIMZI_KAFKA, f"Strimzi 1.2.0 does not run Kafka {spec['version']}"
        assert spec["metadataVersion"] == STRIMZI_KAFKA[spec["version"]]
        annotations = kafka["metadata"].get("annotations", {})
        assert not {"strimzi.io/kraft", "strimzi.io/node-pools"} & set(annotations), "ignored since 0.48"
    for obj in custom_resources(overlay):
        assert not obj["apiVersion"].startswith("kafka.strimzi.io/") or obj["apiVersion"] == "kafka.strimzi.io/v1"


def test_compose_runs_the_kafka_the_cluster_runs_in_kraft_mode() -> None:
    version = named("prod", "Kafka", "fencex-kafka")["spec"]["kafka"]["version"]
    services = compose()["services"]
    for name in ("kafka", "kafka-init"):
        assert services[name]["image"] == f"apache/kafka:{version}", name
    env = services["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller" and "KAFKA_ZOOKEEPER_CONNECT" not in env
    assert env["CLUSTER_ID"], "a fixed cluster id, or a new container will not start on the old log directory"
    assert (
        env["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
        and "kafka-data:/var/lib/kafka/data" in services["kafka"]["volumes"]
    )


# ------------------------------------------------------- who reaches Kafka (item 7)


def of(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    (obj,) = [d for d in of(docs, kind) if d["metadata"]["name"] == name]
    return obj


def pods(docs: list[Doc]) -> dict[str, Doc]:
    """The pod templates of the workloads, by workload name."""
    return {w["metadata"]["name"]: w["spec"]["template"] for k in ("Deployment", "StatefulSet") for w in of(docs, k)}


def uses_kafka(docs: list[Doc], pod: Doc) -> bool:
    """Whether a container of the pod is given the broker's address (env, or a ConfigMap's envFrom)."""
    configs = {c["metadata"]["name"]: c.get("data", {}) for c in of(docs, "ConfigMap")}
    for c in pod["spec"]["containers"]:
        if any(e["name"] == "FENCEX_KAFKA_BOOTSTRAP" for e in c.get("env", [])):
            return True
        for source in c.get("envFrom", []):
            if "FENCEX_KAFKA_BOOTSTRAP" in configs.get(source.get("configMapRef", {}).get("name"), {}):
                return True
    return False


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions) applied to labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, values = e["key"], e.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[e["operator"]]
        if not ok:
            return False
    return True


# KEDA's operator (namespace keda; its pods carry app: keda-operator, in the release manifests and
# the Helm chart alike) connects to the brokers to read the consumer group's lag.
KEDA_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}},
    "podSelector": {"matchLabels": {"app": "keda-operator"}},
}


def listener_problems(docs: list[Doc]) -> list[str]:
    """Strimzi opens a listener with no networkPolicyPeers to every pod of the cluster. Each listener
    must name its peers: exactly the pods here that are given the broker's address (matched by their
    labels), plus KEDA's operator when a ScaledObject reads lag; no selector value that matches no
    pod (the simulator runs in dev only)."""
    problems = []
    workloads = pods(docs)
    users = {name for name, pod in workloads.items() if uses_kafka(docs, pod)}
    keda_reads_lag = any(t["type"] == "kafka" for s in of(docs, "ScaledObject") for t in s["spec"]["triggers"])
    for kafka in of(docs, "Kafka"):
        for listener in kafka["spec"]["kafka"]["listeners"]:
            where = f"listener {listener['name']}"
            peers = listener.get("networkPolicyPeers")
            if not peers:
                problems.append(f"{where} has no networkPolicyPeers: open to every pod of the cluster")
                continue
            for peer in peers:  # each must be a valid NetworkPolicyPeer
                policy = {
                    "apiVersion": "networking.k8s.io/v1",
                    "kind": "NetworkPolicy",
                    "metadata": {"name": "peer"},
                    "spec": {"podSelector": {}, "ingress": [{"from": [peer]}]},
                }
                try:
                    kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
                except kubernetes_validate.ValidationError as e:
                    problems.append(f"{where}: {e.message}")
            local = [p["podSelector"] for p in peers if set(p) == {"podSelector"}]
            others = [p for p in peers if set(p) != {"podSelector"}]
            admitted = {n for n, pod in workloads.items() if any(selects(s, pod["metadata"]["labels"]) for s in local)}
            if admitted != users:
                problems.append(f"{where} admits {sorted(admitted)}; the pods that use Kafka are {sorted(users)}")
            for selector in local:
                for expr in selector.get("matchExpressions", []):
                    for value in expr.get("values", []) if expr["operator"] == "In" else []:
                        if not any(pod["metadata"]["labels"].get(expr["key"]) == value for pod in workloads.values()):
                            problems.append(f"{where}: {expr['key']}={value} matches no pod")
            if others != ([KEDA_PEER] if keda_reads_lag else []):
                problems.append(f"{where}: peers beyond this namespace {others}, expected only KEDA's operator")
    return problems


def strimzi_broker_labels(kafka: Doc, pool: Doc) -> dict[str, str]:
    """Labels Strimzi gives a broker pod (its Labels and KafkaResources classes)."""
    cluster = kafka["metadata"]["name"]
    return {
        "strimzi.io/cluster": cluster,
        "strimzi.io/kind": "Kafka",
        "strimzi.io/name": f"{cluster}-kafka",
        "strimzi.io/pool-name": pool["metadata"]["name"],
        "strimzi.io/broker-role": "true",
        "app.kubernetes.io/name": "kafka",
        "app.kubernetes.io/instance": cluster,
        "app.kubernetes.io/managed-by": "strimzi-cluster-operator",
    }


def policy_problems(docs: list[Doc]) -> list[str]:
    """NetworkPolicies add up: one of ours that selected the brokers and allowed anything would open
    what the listeners' peers close (issue 14 found port 9092 open to all that way). Strimzi writes
    the brokers' policies; ours only deny."""
    problems = []
    for kafka in of(docs, "Kafka"):
        for pool in of(docs, "KafkaNodePool"):
            if pool["metadata"]["labels"].get("strimzi.io/cluster") != kafka["metadata"]["name"]:
                continue
            broker = strimzi_broker_labels(kafka, pool)
            for policy in of(docs, "NetworkPolicy"):
                if selects(policy["spec"]["podSelector"], broker) and policy["spec"].get("ingress"):
                    problems.append(f"NetworkPolicy {policy['metadata']['name']} opens the brokers")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_listener_admits_exactly_the_pods_that_use_kafka(overlay: str) -> None:
    docs = rendered(overlay)
    assert {"processor", "api"} <= {n for n, pod in pods(docs).items() if uses_kafka(docs, pod)}
    assert listener_problems(docs) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_policy_of_ours_widens_strimzis_for_the_brokers(overlay: str) -> None:
    assert policy_problems(rendered(overlay)) == []


def _with(overlay: str, change: Callable[[list[Doc]], None]) -> list[Doc]:
    docs = copy.deepcopy(rendered(overlay))
    change(docs)
    return docs


def _peers(docs: list[Doc]) -> list[Doc]:
    peers: list[Doc] = one(docs, "Kafka", "fencex-kafka")["spec"]["kafka"]["listeners"][0]["networkPolicyPeers"]
    return peers


def _names(docs: list[Doc]) -> list[str]:
    names: list[str] = _peers(docs)[0]["podSelector"]["matchExpressions"][0]["values"]
    return names


OLD_KAFKA_CLIENTS = {  # fencex's own policy before issue 14
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "kafka-clients"},
    "spec": {
        "podSelector": {"matchLabels": {"strimzi.io/cluster": "fencex-kafka"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 9092, "protocol": "TCP"}]}],
    },
}

OPEN_WRONG: dict[str, tuple[str, Callable[[list[Doc]], Any], str]] = {
    "no peers": (
        "prod",
        lambda d: one(d, "Kafka", "fencex-kafka")["spec"]["kafka"]["listeners"][0].pop("networkPolicyPeers"),
        "open to every pod",
    ),
    "the API left out": ("prod", lambda d: _names(d).remove("api"), "admits ['processor']"),
    "the simulator left out in dev": ("dev", lambda d: _names(d).remove("simulator"), "admits ['api', 'processor']"),
    "a name no pod has (the simulator in prod)": ("prod", lambda d: _names(d).append("simulator"), "matches no pod"),
    "everyone in the namespace": ("prod", lambda d: _peers(d).append({"podSelector": {}}), "redis"),
    "a whole other namespace": (
        "prod",
        lambda d: _peers(d).append({"namespaceSelector": {}}),
        "expected only KEDA's operator",
    ),
    "KEDA left out": ("prod", lambda d: _peers(d).pop(1), "expected only KEDA's operator"),
    "a peer that is no NetworkPolicyPeer": ("prod", lambda d: _peers(d).append({"pods": {}}), "unexpected"),
}


@pytest.mark.parametrize("case", list(OPEN_WRONG))
def test_the_listener_check_catches_a_wrong_peer_list(case: str) -> None:
    overlay, change, expected = OPEN_WRONG[case]
    problems = listener_problems(_with(overlay, change))
    assert any(expected in p for p in problems), problems


def test_the_policy_check_catches_fencexs_old_kafka_policy() -> None:
    problems = policy_problems(_with("prod", lambda d: d.append(copy.deepcopy(OLD_KAFKA_CLIENTS))))
    assert problems == ["NetworkPolicy kafka-clients opens the brokers"]


# -------------------------------------------------- autoscalers own replicas (item 8)

ZERO_ONLY = ("cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount")


def autoscaler_problems(docs: list[Doc]) -> list[str]:
    """No `replicas` on what an HPA or a ScaledObject scales (every `kubectl apply` would reset the
    count the autoscaler chose). Workers run silence detection and rotation schedules on their own
    clock, so KEDA keeps at least one (its default minimum is 0); then cooldownPeriod,
    initialCooldownPeriod and the triggers' activation thresholds do nothing, and idleReplicaCount
    would scale to zero when the stream is idle: none of them belongs."""
    problems = []
    targets = []
    for hpa in of(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        targets.append((f"HPA {hpa['metadata']['name']}", one(docs, ref["kind"], ref["name"])))
    for scaled in of(docs, "ScaledObject"):
        spec = scaled["spec"]
        ref = spec["scaleTargetRef"]
        targets.append(
            (f"ScaledObject {scaled['metadata']['name']}", one(docs, ref.get("kind", "Deployment"), ref["name"]))
        )
        if spec.get("minReplicaCount", 0) < 1:
            problems.append(f"ScaledObject {scaled['metadata']['name']} may scale to zero: no silence detection then")
        problems += [f"ScaledObject {scaled['metadata']['name']} sets {k}" for k in ZERO_ONLY if k in spec]
        for trigger in spec["triggers"]:
            problems += [f"a trigger sets {k}" for k in trigger.get("metadata", {}) if k.startswith("activation")]
    for scaler, target in targets:
        if "replicas" in target["spec"]:
            problems.append(f"{target['kind']} {target['metadata']['name']} sets replicas under {scaler}")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscalers_own_the_replica_counts_and_keep_a_worker(overlay: str) -> None:
    docs = rendered(overlay)
    scaled = {
        o["spec"]["scaleTargetRef"]["name"] for o in of(docs, "HorizontalPodAutoscaler") + of(docs, "ScaledObject")
    }
    assert scaled == {"processor", "api"}
    assert autoscaler_problems(docs) == []


def _spec(docs: list[Doc], kind: str, name: str) -> Doc:
    spec: Doc = one(docs, kind, name)["spec"]
    return spec


SCALING_WRONG: dict[str, tuple[Callable[[list[Doc]], Any], str]] = {
    "replicas on the API": (
        lambda d: _spec(d, "Deployment", "api").update(replicas=3),
        "Deployment api sets replicas under HPA api",
    ),
    "replicas on the processor": (
        lambda d: _spec(d, "Deployment", "processor").update(replicas=1),
        "Deployment processor sets replicas under ScaledObject processor",
    ),
    "KEDA's default minimum": (
        lambda d: _spec(d, "ScaledObject", "processor").pop("minReplicaCount"),
        "may scale to zero",
    ),
    "cooldownPeriod": (
        lambda d: _spec(d, "ScaledObject", "processor").update(cooldownPeriod=300),
        "sets cooldownPeriod",
    ),
    "idleReplicaCount": (
        lambda d: _spec(d, "ScaledObject", "processor").update(idleReplicaCount=0),
        "sets idleReplicaCount",
    ),
    "activationLagThreshold": (
        lambda d: _spec(d, "ScaledObject", "processor")["triggers"][0]["metadata"].update(
            activationLagThreshold="1000"
        ),
        "a trigger sets activationLagThreshold",
    ),
}


@pytest.mark.parametrize("case", list(SCALING_WRONG))
def test_the_autoscaler_check_catches(case: str) -> None:
    change, expected = SCALING_WRONG[case]
    docs = _with("prod", change)
    problems = autoscaler_problems(docs)
    assert any(expected in p for p in problems), problems
    assert all(custom_errors(o) == [] for o in of(docs, "ScaledObject")), "valid for KEDA: only this check sees it"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_finds_the_brokers_from_its_own_namespace(overlay: str) -> None:
    """KEDA's operator reads the lag itself, in its pod in the namespace keda: a bare Service name
    there is looked up as <name>.keda.svc.cluster.local and never found, so the scaler fails and the
    processor never scales. The bootstrap address names the Kafka's namespace: Strimzi's bootstrap
    Service <cluster>-kafka-bootstrap, as <service>.<namespace>.svc."""
    docs = rendered(overlay)
    bootstraps = {
        f"{k['metadata']['name']}-kafka-bootstrap.{k['metadata']['namespace']}.svc:{listener['port']}"
        for k in of(docs, "Kafka")
        for listener in k["spec"]["kafka"]["listeners"]
    }
    triggers = [t for s in of(docs, "ScaledObject") for t in s["spec"]["triggers"] if t["type"] == "kafka"]
    assert triggers
    for trigger in triggers:
        servers = trigger["metadata"]["bootstrapServers"].split(",")
        assert set(servers) <= bootstraps, f"{servers}: KEDA's operator resolves none of these; use {bootstraps}"

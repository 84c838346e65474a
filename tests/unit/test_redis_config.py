"""Redis as compose and Kubernetes run it (issue 14, item 11), checked statically: the truth is
never evicted (maxmemory with noeviction), every write goes to an AOF fsynced every second, and a
snapshot is taken on a schedule onto a volume by the very script the restore test exercises."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.unit.test_deploy import K8S_VERSION, OVERLAYS, ROOT, compose, named, objects, rendered

REDIS = ROOT / "deploy" / "redis"
SCRIPTS = ("redis.conf", "backup.sh", "restore.sh")
UNITS = {"k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}
K8S_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "K": 1000, "M": 1000**2, "G": 1000**3}


def redis_bytes(value: str) -> int:
    """A size as redis.conf reads it (``1gb``: 1024**3, ``1g``: 1000**3)."""
    m = re.fullmatch(r"(\d+)([a-z]*)", value.lower())
    assert m, value
    return int(m.group(1)) * (UNITS[m.group(2)] if m.group(2) else 1)


def quantity(value: str | int) -> int:
    """A memory size in bytes, as Kubernetes (``2Gi``) or compose (``2g``: 1024**3) write it."""
    m = re.fullmatch(r"(\d+)([A-Za-z]*)", str(value))
    assert m, value
    unit = m.group(2)
    if unit in K8S_UNITS:
        return int(m.group(1)) * K8S_UNITS[unit]
    return int(m.group(1)) * {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit.lower()]


def effective(argv: list[str], files: dict[str, str]) -> dict[str, list[str]]:
    """redis-server's configuration from its arguments: a config file (the first argument, if it
    is one: its text from ``files`` by path), then ``--name value ...`` options, the later winning."""
    conf: dict[str, list[str]] = {}
    if argv and not argv[0].startswith("--"):
        path, argv = argv[0], argv[1:]
        assert path in files, f"redis-server reads {path}, which is not mounted"
        for line in files[path].splitlines():
            words = shlex.split(line, comments=True)
            if words:
                conf[words[0].lower()] = words[1:]
    name = None
    for arg in argv:
        if arg.startswith("--"):
            name = arg[2:].lower()
            conf[name] = []
        else:
            assert name, argv
            conf[name].append(arg)
    return conf


def compose_redis() -> tuple[dict[str, list[str]], int]:
    """The compose Redis's configuration and its memory limit."""
    service = compose()["services"]["redis"]
    command = service["command"]
    assert command[0] == "redis-server"
    files = {}
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            files[target] = (ROOT / source).read_text()
    return effective(command[1:], files), quantity(service["mem_limit"])


def k8s_redis(overlay: str) -> tuple[dict[str, list[str]], int]:
    pod = named(overlay, "StatefulSet", "redis")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert "command" not in c, "the image's entrypoint runs redis-server with the args"
    files = {}
    volumes = {v["name"]: v for v in pod["volumes"]}  # the data volume is a claim template's
    for mount in c["volumeMounts"]:
        volume = volumes.get(mount["name"], {})
        if "configMap" in volume:
            data = named(overlay, "ConfigMap", volume["configMap"]["name"])["data"]
            for item in volume["configMap"]["items"]:
                files[f"{mount['mountPath']}/{item['path']}"] = data[item["key"]]
    return effective(c["args"], files), quantity(c["resources"]["limits"]["memory"])


def all_redis() -> list[tuple[str, dict[str, list[str]], int]]:
    return [("compose", *compose_redis())] + [(o, *k8s_redis(o)) for o in OVERLAYS]


# ------------------------------------------------------------------ the server


def test_the_parser_reads_what_redis_reads():
    conf = effective(
        ["/c", "--save", "", "--maxmemory", "2gb"],
        {"/c": 'maxmemory 1gb\nsave ""\n# appendonly no\nappendonly yes  # on\n'},
    )
    assert conf == {"maxmemory": ["2gb"], "save": [""], "appendonly": ["yes"]}
    assert redis_bytes("1gb") == quantity("1Gi") == quantity("1g") == 1024**3
    with pytest.raises(AssertionError):
        effective(["/elsewhere.conf"], {})


@pytest.mark.parametrize("where", ["compose", *OVERLAYS])
def test_redis_keeps_the_truth_never_evicts_and_logs_every_write(where):
    conf, limit = {w: (c, m) for w, c, m in all_redis()}[where]
    assert conf["maxmemory-policy"] == ["noeviction"], "evicting a key loses a fence, an API key or a device state"
    maxmemory = redis_bytes(conf["maxmemory"][0])
    assert maxmemory > 0, "an explicit maxmemory: without one, Redis grows until the kernel kills it"
    # the rest of the limit is for a fork's copy-on-write (AOF rewrite, a backup's snapshot) and buffers
    assert maxmemory <= 0.6 * limit, (where, maxmemory, limit)
    assert conf["appendonly"] == ["yes"] and conf["appendfsync"] == ["everysec"]
    assert conf.get("no-appendfsync-on-rewrite", ["no"]) == ["no"], "a rewrite must not stop the fsyncs"
    assert conf["save"] == [""], "no snapshots of its own: the backups are taken from outside"
    assert conf["dir"] == ["/data"]


def test_compose_and_kubernetes_run_the_same_redis_and_the_backups_the_same_image():
    images = {compose()["services"][s]["image"] for s in ("redis", "redis-backup")}
    for overlay in OVERLAYS:
        images.add(named(overlay, "StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]["image"])
        cron = named(overlay, "CronJob", "redis-backup")
        images.add(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"])
    images.add(restore_job()["spec"]["template"]["spec"]["containers"][0]["image"])
    # one version: a snapshot is restored by the redis-server that could have written it
    (image,) = images
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+-alpine", image), "a pinned image"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_configmap_holds_the_files_of_deploy_redis(overlay):
    data = named(overlay, "ConfigMap", "redis")["data"]
    for name in SCRIPTS:
        assert data[name] == (REDIS / name).read_text(), (
            f"the ConfigMap redis has another {name} than deploy/redis/{name}: list it in deploy/redis/kustomization"
        )


# ------------------------------------------------------------------ the backups


def cron_fields(schedule: str) -> list[str]:
    fields = schedule.split()
    assert len(fields) == 5 and all(re.fullmatch(r"[\d*/,-]+", f) for f in fields), schedule
    return fields


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_backup_cronjob_snapshots_redis_into_a_volume_on_a_schedule(overlay):
    cron = named(overlay, "CronJob", "redis-backup")
    spec = cron["spec"]
    minute, hour, *_ = cron_fields(spec["schedule"])
    assert minute.isdigit() and hour == "*", "hourly: the locations topic keeps a day, enough to replay"
    assert spec["concurrencyPolicy"] == "Forbid" and spec["timeZone"] == "Etc/UTC"
    job = spec["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] > 0 and job["backoffLimit"] >= 1
    pod = job["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    # what it runs: backup.sh of the ConfigMap, as the test of the restore runs it
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    script = c["command"][-1]
    scripts = mounts[str(Path(script).parent)]["configMap"]
    assert {"key": "backup.sh", "path": Path(script).name} in scripts["items"]
    assert scripts["name"] == "redis" and c["command"][0] == "/bin/sh"
    # where it writes: a PVC of the manifests, mounted at BACKUP_DIR
    claim = mounts[env["BACKUP_DIR"]]["persistentVolumeClaim"]["claimName"]
    pvc = named(overlay, "PersistentVolumeClaim", claim)
    assert pvc["spec"]["resources"]["requests"]["storage"]
    assert int(env["BACKUP_KEEP"]) >= 1
    # whom it asks: the Redis Service
    service = named(overlay, "Service", env["REDIS_HOST"])
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "redis"}
    assert int(env["REDIS_PORT"]) in {p["port"] for p in service["spec"]["ports"]}
    # restricted and sized as the other workloads (test_deploy checks Deployments and StatefulSets)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["fsGroup"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]


def selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels, matchExpressions with In) selects ``labels``."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        assert e["operator"] == "In", e
        if labels.get(e["key"]) not in e["values"]:
            return False
    return True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_the_backup_job_reach_redis_and_nothing_else(overlay):
    cron = named(overlay, "CronJob", "redis-backup")
    backup = cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    redis = named(overlay, "StatefulSet", "redis")["spec"]["template"]["metadata"]["labels"]
    policies = objects(overlay, "NetworkPolicy")
    ingress = [
        rule
        for p in policies
        if selects(p["spec"]["podSelector"], redis) and "Ingress" in p["spec"]["policyTypes"]
        for rule in p["spec"].get("ingress", [])
    ]
    assert any(
        any(
            "podSelector" in peer and "namespaceSelector" not in peer and selects(peer["podSelector"], backup)
            for peer in rule["from"]
        )
        and {"port": 6379, "protocol": "TCP"} in rule["ports"]
        for rule in ingress
    ), "no NetworkPolicy lets the backup job reach Redis (default-deny-ingress refuses it)"
    (egress,) = [
        p for p in policies if selects(p["spec"]["podSelector"], backup) and "Egress" in p["spec"]["policyTypes"]
    ]
    targets = [peer for rule in egress["spec"]["egress"] for peer in rule["to"]]
    assert any(selects(peer.get("podSelector", {}), redis) and "namespaceSelector" not in peer for peer in targets)
    assert all("ipBlock" not in peer for peer in targets), "it talks to Redis and DNS only"


# ------------------------------------------------------------------ compose


def test_compose_backs_redis_up_onto_a_named_volume_with_the_same_script():
    c = compose()
    service = c["services"]["redis-backup"]
    env = service["environment"]
    mounts = dict(v.split(":")[:2][::-1] for v in service["volumes"])  # target -> source
    assert mounts[env["BACKUP_DIR"]] in set(c["volumes"]), "the backups on a named volume"
    script = [t for t, s in mounts.items() if s == "./deploy/redis/backup.sh"]
    assert script and script[0] in " ".join(service["command"]), "the loop runs deploy/redis/backup.sh"
    assert env["REDIS_HOST"] == "redis" and service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert int(env["BACKUP_KEEP"]) >= 1 and int(env["BACKUP_INTERVAL_S"]) >= 60
    assert service["read_only"] is True and service["user"] == "redis"
    assert "redis-backups" in c["volumes"]


# ------------------------------------------------------------------ restore


def restore_job() -> dict:
    return yaml.safe_load((REDIS / "restore-job.yaml").read_text())


def test_the_restore_job_is_valid_and_mounts_what_the_backups_and_redis_use():
    job = restore_job()
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert job["kind"] == "Job" and job["metadata"]["namespace"] == "fencex"
    assert all(d["kind"] != "Job" for d in rendered("prod")), "the restore is never applied by kustomize"
    pod = job["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    sts = named("prod", "StatefulSet", "redis")
    (template,) = sts["spec"]["volumeClaimTemplates"]
    data_claim = f"{template['metadata']['name']}-{sts['metadata']['name']}-0"  # the PVC of the pod redis-0
    assert claims == {data_claim, "redis-backup"}
    (c,) = pod["containers"]
    assert "/etc/redis/restore.sh" in c["command"][-1]
    (scripts,) = [v["configMap"] for v in pod["volumes"] if "configMap" in v]
    assert scripts["name"] == "redis" and {"key": "restore.sh", "path": "restore.sh"} in scripts["items"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True

"""The yearly budget (issue 16, item 4): what a farm, a cooperative and a national service cost to run.

Two halves:

1. **Measure** (``Sampler``, ``redis_breakdown``, ``kafka_bytes``): the CPU-seconds and memory (RSS) of
   each process class (workers, broker, Redis, API) over a measured push run, per million fixes; Redis
   memory per device, per fence and per track fix (``MEMORY USAGE`` of every key, grouped by what the key
   belongs to); Kafka bytes per fix (the records' bytes as Kafka's log format v2 stores them: the local
   broker keeps its log in memory, so the size comes from the records read back, not from a disk).
   ``bench.evaluate`` measures its push run through ``Sampler(evaluation_pids(ev))`` and
   ``from_evaluation``; ``python -m bench.budget --tiny`` (or ``--measure``) makes a measured run of its
   own (one fix a record, as collars send them).
2. **Budget** (pure: ``budget``, ``row``): from a measurement, the cores, memory, Redis memory and Kafka
   storage for each scenario, with the headroom stated, the minimum install deploy/ describes, and the
   yearly cost at prices given as parameters (``Prices``; defaults and their sources there).

Writes budget.json, budget.md (the table with its assumptions) and budget.png.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).parents[1]
CLASSES = ("worker", "broker", "redis", "api")
HOURS_A_YEAR = 24 * 365
MB = 1024 * 1024
GB = 1024 * MB

# ---------------------------------------------------------------------------------------------- measuring


class Sampler:
    """CPU-seconds and RSS of process classes over a measured section, sampled in a thread.

    ``pids`` is called at every sample and names the processes of each class (``{"worker": [pid, ...],
    "broker": [pid], ...}``); each process counts with its descendants (the API's granian workers, say).
    Processes may come and go during the section (a killed worker, a restarted one): each counts the CPU
    it used while it was seen, from the section's start or from its own start if later. RSS is summed over
    a class at each sample: ``peak`` is the largest sum, ``steady`` the median of the section's second half.
    """

    def __init__(self, pids: Callable[[], Mapping[str, Iterable[int]]], interval: float = 0.5) -> None:
        self.pids = pids
        self.interval = interval
        self._first: dict[tuple[str, int], float] = {}
        self._last: dict[tuple[str, int], float] = {}
        self._rss: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = self._t1 = 0.0
        self._lock = threading.Lock()

    def _sample(self, first: bool) -> None:
        import psutil

        rss: dict[str, float] = {}
        for cls, pids in self.pids().items():
            rss.setdefault(cls, 0.0)
            for pid in pids:
                try:
                    root = psutil.Process(pid)
                    procs = [root, *root.children(recursive=True)]
                except psutil.Error:
                    continue
                for p in procs:
                    try:
                        with p.oneshot():
                            t = p.cpu_times()
                            cpu = t.user + t.system
                            mem = p.memory_info().rss
                    except psutil.Error:
                        continue
                    key = (cls, p.pid)
                    if key not in self._first:
                        # seen at the start: its CPU from now on; started later: all of its CPU
                        self._first[key] = cpu if first else 0.0
                    self._last[key] = cpu
                    rss[cls] += mem
        with self._lock:
            self._rss.append((time.monotonic(), rss))

    def start(self) -> Sampler:
        self._t0 = time.monotonic()
        self._sample(first=True)

        def run() -> None:
            while not self._stop.wait(self.interval):
                self._sample(first=False)

        self._thread = threading.Thread(target=run, daemon=True, name="budget-sampler")
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        """Stop sampling; the section's use: seconds, and per class cpu_s, rss_peak_mb, rss_steady_mb."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample(first=False)
        self._t1 = time.monotonic()
        out: dict[str, Any] = {"seconds": self._t1 - self._t0, "classes": {}}
        half = self._t0 + (self._t1 - self._t0) / 2
        for cls in sorted({c for c, _ in self._first}):
            cpu = sum(self._last[k] - self._first[k] for k in self._first if k[0] == cls)
            series = [r.get(cls, 0.0) for _, r in self._rss]
            steady = sorted(r.get(cls, 0.0) for t, r in self._rss if t >= half) or series
            out["classes"][cls] = {
                "cpu_s": cpu,
                "rss_peak_mb": max(series) / MB,
                "rss_steady_mb": steady[len(steady) // 2] / MB,
                "processes": len({k[1] for k in self._first if k[0] == cls}),
            }
        return out

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if not self._stop.is_set():
            self.result = self.stop()

    result: dict[str, Any]


def per_million(use: Mapping[str, Any], fixes: int) -> dict[str, float]:
    """CPU-seconds per million fixes of each class, from a ``Sampler.stop()`` result."""
    return {cls: c["cpu_s"] / max(fixes, 1) * 1e6 for cls, c in use["classes"].items()}


async def _redis_keys(url: str) -> list[tuple[str, int]]:
    from redis.asyncio import Redis

    r = Redis.from_url(url)
    try:
        out = []
        async for key in r.scan_iter(count=1000):
            size = await r.memory_usage(key, samples=0)
            out.append((key.decode(errors="replace"), int(size or 0)))
        return out
    finally:
        await r.aclose()


async def redis_used_memory(url: str) -> int:
    from redis.asyncio import Redis

    r = Redis.from_url(url)
    try:
        info = await r.info("memory")
        return int(info["used_memory"])
    finally:
        await r.aclose()


def classify(key: str, device: re.Pattern[str], fence: re.Pattern[str], tenant: re.Pattern[str]) -> str:
    """What a Redis key belongs to: a device's track ("track"), a device, a fence, a farm's event history
    ("history"), a farm, or the service."""
    if device.search(key):
        return "track" if ":track:" in key else "device"
    if fence.search(key):
        return "fence"
    if tenant.search(key):
        return "history" if ":events:" in key else "tenant"
    return "service"


def redis_breakdown(
    url: str,
    devices: int,
    fences: int,
    tenants: int,
    track_fixes: int,
    history_events: int,
    device_re: str = r"collar-\d+",
    fence_re: str = r"pasture-\d+",
    tenant_re: str = r"farm-\d+",
) -> dict[str, Any]:
    """Every key's ``MEMORY USAGE``, summed by what it belongs to, and the bytes per device (state and the
    like), per track fix (tracks: ``track_fixes`` fixes kept in all), per fence, per farm and per event
    in a farm's history (``history_events`` kept in all)."""
    keys = asyncio.run(_redis_keys(url))
    pats = re.compile(device_re), re.compile(fence_re), re.compile(tenant_re)
    sums: dict[str, int] = {"device": 0, "track": 0, "fence": 0, "tenant": 0, "history": 0, "service": 0}
    families: dict[str, int] = {}
    for key, size in keys:
        sums[classify(key, *pats)] += size
        fam = re.sub(r"\d+", "#", key)
        families[fam] = families.get(fam, 0) + size
    return {
        "keys": len(keys),
        "bytes": sums,
        "used_memory": asyncio.run(redis_used_memory(url)),
        "bytes_per_device": sums["device"] / max(devices, 1),
        "bytes_per_track_fix": sums["track"] / max(track_fixes, 1),
        "bytes_per_fence": sums["fence"] / max(fences, 1),
        "bytes_per_tenant": sums["tenant"] / max(tenants, 1),
        "bytes_per_history_event": sums["history"] / max(history_events, 1),
        "track_fixes_per_device": track_fixes / max(devices, 1),
        "largest_families": dict(sorted(families.items(), key=lambda kv: -kv[1])[:12]),
    }


# Kafka's record format v2 (KIP-98): a record is its key and value plus a length, attributes, timestamp and
# offset deltas, key and value lengths and a header count, 7 to 15 bytes of varints (12 taken); a batch adds
# a 61-byte header. A collar's fix is sent alone, so at a farm's rate a batch holds one record.
RECORD_OVERHEAD = 12
BATCH_OVERHEAD = 61


def kafka_bytes(
    bootstrap: str, topic: str, sample: int = 20_000, quiet_s: float = 2.0, fixes_per_record: int = 1
) -> dict[str, Any]:
    """The records of ``topic``, read back from the start: how many, and from the first ``sample`` of them
    their mean key and value bytes, the bytes Kafka stores a record (format v2, uncompressed, one and 100
    records a batch) and a fix sent alone (``stored_bytes_per_fix``: the key, a ``fixes_per_record``-th of
    the value, one record a batch), and what lz4 makes of 100 records of a partition together. (The local
    broker's offsets are not to be trusted for a count: records are read until none came for ``quiet_s``.)"""
    import cramjam  # aiokafka's lz4 (installed with aiokafka[lz4])
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"budget-{time.time()}", "enable.auto.commit": False})
    by_part: dict[int, list[bytes]] = {}
    keys = values = kept = records = 0
    try:
        # every partition from its start, without a group's join (which may take longer than quiet_s)
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        quiet = time.monotonic() + 20  # the first records may take a while
        while time.monotonic() - quiet < quiet_s:
            msgs = c.consume(5000, 0.5)
            for m in msgs:
                if m.error():
                    continue
                records += 1
                if kept < sample:
                    key, value = m.key() or b"", m.value() or b""
                    keys += len(key)
                    values += len(value)
                    by_part.setdefault(m.partition() or 0, []).append(key + value)
                    kept += 1
            if msgs:
                quiet = time.monotonic()
    finally:
        c.close()
    mean = (keys + values) / max(kept, 1)
    raw = comp = 0
    for bs in by_part.values():
        for i in range(0, len(bs) - 99, 100):
            chunk = b"".join(bs[i : i + 100])
            raw += len(chunk)
            comp += len(bytes(cramjam.lz4.compress(chunk)))
    return {
        "topic": topic,
        "records": records,
        "sampled": kept,
        "fixes_per_record": fixes_per_record,
        "key_value_bytes": mean,
        "stored_bytes_single": mean + RECORD_OVERHEAD + BATCH_OVERHEAD,
        "stored_bytes_batched": mean + RECORD_OVERHEAD + BATCH_OVERHEAD / 100,
        "stored_bytes_per_fix": (keys + values / fixes_per_record) / max(kept, 1) + RECORD_OVERHEAD + BATCH_OVERHEAD,
        "lz4_ratio_100": comp / raw if raw else None,
        "method": "records read back from the broker (its log is in memory): key + value bytes, plus "
        f"format v2's {RECORD_OVERHEAD} bytes a record and {BATCH_OVERHEAD} a batch",
    }


def measurement(
    use: Mapping[str, Any],
    fixes: int,
    fixes_per_record: int,
    fences: int,
    devices: int,
    tenants: int,
    redis: Mapping[str, Any] | None = None,
    locations: Mapping[str, Any] | None = None,
    events: Mapping[str, Any] | None = None,
    events_published: float | None = None,
    worker_mb: Mapping[str, float] | None = None,
    idle: Mapping[str, Any] | None = None,
    note: str = "",
) -> dict[str, Any]:
    """The measurement ``budget`` reads, from a ``Sampler`` result and the other measures (JSON-ready)."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "note": note,
        "fixes": fixes,
        "fixes_per_record": fixes_per_record,
        "fences": fences,
        "devices": devices,
        "tenants": tenants,
        "seconds": use["seconds"],
        "cpu_s_per_million_fixes": per_million(use, fixes),
        "rss_mb": {
            k: {x: v[x] for x in ("rss_peak_mb", "rss_steady_mb", "processes")} for k, v in use["classes"].items()
        },
        "redis": dict(redis) if redis else None,
        "kafka_locations": dict(locations) if locations else None,
        "kafka_events": dict(events) if events else None,
        "events_per_million_fixes": None if events_published is None else events_published / max(fixes, 1) * 1e6,
        "worker_mb": dict(worker_mb) if worker_mb else None,
        # cores each class uses with no fix coming (a Sampler result over an idle section)
        "idle_cores": None if idle is None else {k: v["cpu_s"] / idle["seconds"] for k, v in idle["classes"].items()},
    }


def evaluation_pids(ev: Any) -> Callable[[], dict[str, list[int]]]:
    """The process classes of a ``bench.push.Bench`` (``bench.evaluate.Evaluation``): its live workers, its
    broker and its Redis, for a ``Sampler``."""

    def pids() -> dict[str, list[int]]:
        return {
            "worker": [w.pid for w in ev.workers if w.poll() is None],
            "broker": [ev.broker.proc.pid],
            "redis": [ev.redis.proc.pid],
        }

    return pids


def from_evaluation(
    ev: Any, use: Mapping[str, Any], topic: str, events_topic: str, fixes_per_record: int, note: str = ""
) -> dict[str, Any]:
    """The measurement of a push run of ``bench.evaluate`` (``ev``) from its ``Sampler`` result ``use``: the
    fixes and events counted in its topics (every fix sent was processed: the push sweep waits for that),
    Redis' keys as they are now (each device's track holds the fixes so far, under the cap)."""
    loc = kafka_bytes(ev.bootstrap, topic, fixes_per_record=fixes_per_record)
    evs = kafka_bytes(ev.bootstrap, events_topic)
    fixes = loc["records"] * fixes_per_record
    tenants = len(set(ev.herd.tenants().values()))
    devices = len(ev.herd.ids)
    redis = redis_breakdown(
        ev.redis_url, devices, len(ev.fences), tenants, track_fixes=fixes, history_events=evs["records"]
    )
    return measurement(
        use,
        fixes=fixes,
        fixes_per_record=fixes_per_record,
        fences=len(ev.fences),
        devices=devices,
        tenants=tenants,
        redis=redis,
        locations=loc,
        events=evs,
        events_published=evs["records"],
        note=note or "bench.evaluate's push run",
    )


# ---------------------------------------------------------------------------------------------- the budget


@dataclass(frozen=True)
class Scenario:
    name: str
    devices: int
    fix_interval_s: float
    fences: int
    farms: int

    @property
    def fixes_per_s(self) -> float:
        return self.devices / self.fix_interval_s


SCENARIOS = (
    # 100 fences a farm, as the evaluation's workload (10,000 pasture fences in 100 farms)
    Scenario("farm: 1,500 animals, a fix per 10 min", 1_500, 600.0, 100, 1),
    Scenario("cooperative: 100 such farms", 150_000, 600.0, 10_000, 100),
    # a million fences: issue 15's national scale
    Scenario("national: 10,000,000 collars, a fix a minute", 10_000_000, 60.0, 1_000_000, 6_667),
)


@dataclass(frozen=True)
class Prices:
    """Prices in USD. Defaults: Google Compute Engine on-demand list prices, us-central1, for the
    resource-based SKUs "N2 Core" ($0.031611 a vCPU-hour) and "N2 Ram" ($0.004237 a GB-hour), as OpenCost
    carries them for its default GCP prices (github.com/opencost/opencost, configs/gcp.json at commit
    1ea64d0, read 2026-11-21; 2 vCPU and 8 GB give n2-standard-2's $0.0971 an hour); and a GB-month of SSD
    persistent disk $0.17 (cloud.google.com/compute/disks-image-pricing: "a 200 GB SSD Persistent Disk
    volume would cost $34.00 for the whole month", read 2026-11-21). For scale: AWS lists m7g.large (2
    vCPU, 8 GiB) at $0.0816 an hour in us-east-1 in June 2026 (factualminds.com, 2026-06-17), where these
    rates give $0.097. On-demand: no committed-use, reserved or spot discount (they take 30 to 70 % off)."""

    vcpu_hour: float = 0.031611
    gb_hour: float = 0.004237
    disk_gb_month: float = 0.17
    currency: str = "USD"
    source: str = "GCE on-demand, us-central1 (N2 vCPU and RAM SKUs, SSD PD); read 2026-11-21"


@dataclass(frozen=True)
class Install:
    """The smallest production install, from deploy/k8s (base and the prod overlay): processor pods of
    1 CPU and 1 GiB (KEDA's minReplicaCount 1), API pods of 1 CPU and 512 MiB (prod minReplicas 3),
    Redis 250m and 2 GiB (maxmemory 1gb: half the limit, the other half for forks), Kafka 3 KRaft nodes
    of 2 CPU, 8 GiB and a 100 GiB volume each."""

    worker_cpu: float = 1.0
    worker_gb: float = 1.0
    min_workers: int = 1
    api_cpu: float = 1.0
    api_gb: float = 0.5
    min_api: int = 3
    redis_cpu: float = 0.25
    redis_gb: float = 2.0
    kafka_nodes: int = 3
    kafka_cpu: float = 2.0
    kafka_gb: float = 8.0
    kafka_disk_gb: float = 100.0


@dataclass(frozen=True)
class Assumptions:
    peak: float = 2.0  # CPU provisioned for this many times the mean fix rate (bursts, catch-up after an outage)
    memory_margin: float = 1.25  # memory above the computed need
    n_plus_one: bool = True  # one more worker and API pod than needed, and a Redis replica
    redis_fork_factor: float = 2.0  # Redis' memory limit over its data (deploy: maxmemory is half the limit)
    locations_retention_days: float = 1.0  # deploy/k8s/base/kafka.yaml, topic locations (read by deploy_kafka())
    events_retention_days: float = 7.0  # ... topic fence-events
    replication: int = 3  # the prod overlay's replicas of every topic
    disk_fill: float = 0.7  # Kafka volumes sized so the retained log fills this share of them
    track_window_s: float = 86_400.0  # fencex.herd.HerdRules.track_window_s: a track keeps this long ...
    track_cap: int = 2_000  # ... and this many fixes at most (services/processor/settings.py track_cap)
    history_maxlen: int = 10_000  # a farm's event history, at most (services/processor/settings.py)
    events_per_million_fixes: float | None = None  # None: as measured (the evaluation's workload)
    # the API's load: the web app open 8 h a day per farm, 2 requests every 15 s (README, The map)
    api_requests_per_farm_s: float = 2 / 15 * 8 / 24
    api_cpu_s_per_request: float = 1e-4  # README: 18,900-27,700 point queries/s from 2 cores, wrk on them too
    worker_kb_per_fence: float = 7.5  # README, fence index: 1.3 KB index + 6.2 KB record a fence (when unmeasured)
    worker_kb_per_device: float = 2.0  # a device's state in a worker (when unmeasured)
    worker_base_mb: float = 150.0  # a worker with nothing loaded (when unmeasured)
    api_base_mb: float = 150.0  # an API process with nothing loaded (its index: the worker's per fence)
    # a worker's CPU-seconds per million fixes when every fix comes from another collar, one a record (each its
    # own state write: what collars reporting once a minute send), from the scale run (docs/figures/scale.json:
    # one worker's push rate with 10,000,000 collars held, a core): a floor under the measured figure, which
    # comes from backlogs of fewer collars sending many fixes each. None: no floor (no scale run).
    worker_cpu_s_floor: float | None = None
    worker_cpu_s_floor_source: str = ""


def deploy_kafka(root: Path = ROOT) -> dict[str, float]:
    """The configured retention (days) of the topics and the prod overlay's replicas, from deploy/k8s."""
    import yaml

    out: dict[str, float] = {}
    for doc in yaml.safe_load_all((root / "deploy/k8s/base/kafka.yaml").read_text()):
        if doc and doc.get("kind") == "KafkaTopic":
            ms = doc["spec"].get("config", {}).get("retention.ms")
            if ms is not None:
                out[f"{doc['spec']['topicName']}_retention_days"] = int(ms) / 86_400_000
    prod = yaml.safe_load((root / "deploy/k8s/overlays/prod/kustomization.yaml").read_text())
    for p in prod.get("patches", []):
        if p.get("target", {}).get("kind") == "KafkaTopic":
            for op in yaml.safe_load(p["patch"]):
                if op.get("path") == "/spec/replicas":
                    out["replication"] = float(op["value"])
    return out


SCALE_RUN = ROOT / "docs" / "figures" / "scale.json"  # the full-size scale run's JSON (README, Sizing)


def scale_floor(path: Path = SCALE_RUN) -> dict[str, Any]:
    """The worker CPU floor from a scale run's JSON (see :attr:`Assumptions.worker_cpu_s_floor`); {} if none."""
    try:
        run = orjson.loads(path.read_bytes())
        rate = float(run["push"]["known"]["fixes_per_s"])
    except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return {}
    return {
        "worker_cpu_s_floor": 1e6 / rate,
        "worker_cpu_s_floor_source": f"the scale run of {run.get('date', '?')} ({run.get('devices', 0):,} collars "
        f"held, every fix from another: {rate:,.0f} fixes/s a worker)",
    }


def assumptions_from_deploy(root: Path = ROOT, **overrides: Any) -> Assumptions:
    k = deploy_kafka(root)
    return replace(
        Assumptions(),
        **{
            "locations_retention_days": k.get("locations_retention_days", 1.0),
            "events_retention_days": k.get("fence-events_retention_days", 7.0),
            "replication": int(k.get("replication", 3)),
            **scale_floor(root / SCALE_RUN.relative_to(ROOT)),
            **overrides,
        },
    )


@dataclass
class Row:
    scenario: str
    devices: int
    fixes_per_s: float
    fences: int
    # the need: from the measurement, with the peak factor and margin, no minimum (a share of a shared service)
    cores_need: dict[str, float] = field(default_factory=dict)
    memory_gb_need: dict[str, float] = field(default_factory=dict)
    redis_data_gb: float = 0.0
    kafka_gb: dict[str, float] = field(default_factory=dict)  # retained log, all replicas
    yearly_need: float = 0.0
    # provisioned: whole pods, N+1, never under the minimum install
    workers: int = 0
    api_pods: int = 0
    cores: float = 0.0
    memory_gb: float = 0.0
    disk_gb: float = 0.0
    yearly: float = 0.0
    yearly_per_device: float = 0.0
    yearly_need_per_device: float = 0.0
    yearly_as_share: float = 0.0  # its animals' share of the largest scenario's provisioned service


def _cost(cores: float, memory_gb: float, disk_gb: float, prices: Prices) -> float:
    return (cores * prices.vcpu_hour + memory_gb * prices.gb_hour) * HOURS_A_YEAR + disk_gb * prices.disk_gb_month * 12


def row(m: Mapping[str, Any], s: Scenario, a: Assumptions, prices: Prices, install: Install) -> Row:
    """One scenario's budget from a measurement ``m`` (see ``measurement``)."""
    rate = s.fixes_per_s
    cpu = dict(m["cpu_s_per_million_fixes"])
    if a.worker_cpu_s_floor is not None:
        cpu["worker"] = max(cpu.get("worker", 0.0), a.worker_cpu_s_floor)
    cores = {c: rate * cpu.get(c, 0.0) / 1e6 * a.peak for c in ("worker", "broker", "redis")}
    requests = s.farms * a.api_requests_per_farm_s
    cores["api"] = (rate * cpu.get("api", 0.0) / 1e6 + requests * a.api_cpu_s_per_request) * a.peak

    wm = m.get("worker_mb") or {}  # MB: a worker's base, and per fence and per device
    base = wm.get("base", a.worker_base_mb)
    per_fence = wm.get("per_fence", a.worker_kb_per_fence / 1024)
    per_device = wm.get("per_device", a.worker_kb_per_device / 1024)
    red = m.get("redis") or {}
    epm = a.events_per_million_fixes
    events_per_fix = (m.get("events_per_million_fixes") or 0.0) / 1e6 if epm is None else epm / 1e6
    history_per_farm = rate * events_per_fix * a.track_window_s / s.farms  # a day's events: the cap or under
    track_fixes = min(a.track_cap, a.track_window_s / s.fix_interval_s)
    per_device_redis = red.get("bytes_per_device", 0.0) + track_fixes * red.get("bytes_per_track_fix", 0.0)
    redis_data = (
        s.devices * per_device_redis
        + s.fences * red.get("bytes_per_fence", 0.0)
        + s.farms * red.get("bytes_per_tenant", 0.0)
        + s.farms * min(a.history_maxlen, history_per_farm) * red.get("bytes_per_history_event", 0.0)
        + red.get("bytes", {}).get("service", 0)
    ) / GB

    def kafka(topic: Mapping[str, Any] | None, per_fix: float, days: float) -> float:
        if not topic:
            return 0.0
        per_record = float(topic.get("stored_bytes_per_fix", topic["stored_bytes_single"]))
        return rate * per_fix * per_record * days * 86_400 * a.replication / GB

    loc = m.get("kafka_locations")
    ev = m.get("kafka_events")
    kafka_gb = {
        "locations": kafka(loc, 1.0, a.locations_retention_days),
        "fence-events": kafka(ev, events_per_fix, a.events_retention_days),
    }

    # the need: the data and the work, pro rata: processes as many as the cores needed (a fraction of one for
    # a farm: its share of a shared service's), each holding every fence, and the devices' states spread over them
    memory_need = {
        "worker": (base + s.fences * per_fence) / 1024 * cores["worker"] + s.devices * per_device / 1024,
        "api": (a.api_base_mb + s.fences * per_fence) / 1024 * cores["api"],
        "redis": redis_data * a.redis_fork_factor,
        "broker": 0.0,  # Kafka's page cache and heap: in the minimum install's nodes
    }
    memory_need = {k: v * a.memory_margin for k, v in memory_need.items()}
    kafka_total = sum(kafka_gb.values())
    disk_need = kafka_total / a.disk_fill
    yearly_need = _cost(sum(cores.values()), sum(memory_need.values()), disk_need, prices)

    # provisioned: whole pods of the deploy/ sizes, N+1, at least the minimum install
    extra = 1 if a.n_plus_one else 0
    workers = max(install.min_workers, math.ceil(cores["worker"] / install.worker_cpu)) + extra
    api_pods = max(install.min_api, math.ceil(cores["api"] / install.api_cpu) + extra)
    worker_gb = max(install.worker_gb, (base + s.fences * per_fence) / 1024 * a.memory_margin)
    worker_gb += s.devices * per_device / 1024 * a.memory_margin / max(workers - extra, 1)
    api_gb = max(install.api_gb, (a.api_base_mb + s.fences * per_fence) / 1024 * a.memory_margin)
    redis_copies = 2 if a.n_plus_one else 1
    redis_gb = max(install.redis_gb, redis_data * a.redis_fork_factor * a.memory_margin) * redis_copies
    redis_cores = max(install.redis_cpu, cores["redis"]) * redis_copies
    kafka_nodes = max(install.kafka_nodes, math.ceil(cores["broker"] / install.kafka_cpu))
    kafka_cores = kafka_nodes * install.kafka_cpu
    disk = max(install.kafka_disk_gb * install.kafka_nodes, disk_need)
    prov_cores = workers * install.worker_cpu + api_pods * install.api_cpu + redis_cores + kafka_cores
    prov_mem = workers * worker_gb + api_pods * api_gb + redis_gb + kafka_nodes * install.kafka_gb
    yearly = _cost(prov_cores, prov_mem, disk, prices)
    return Row(
        scenario=s.name,
        devices=s.devices,
        fixes_per_s=rate,
        fences=s.fences,
        cores_need=cores,
        memory_gb_need=memory_need,
        redis_data_gb=redis_data,
        kafka_gb=kafka_gb,
        yearly_need=yearly_need,
        workers=workers,
        api_pods=api_pods,
        cores=prov_cores,
        memory_gb=prov_mem,
        disk_gb=disk,
        yearly=yearly,
        yearly_per_device=yearly / s.devices,
        yearly_need_per_device=yearly_need / s.devices,
    )


def budget(
    m: Mapping[str, Any],
    scenarios: Iterable[Scenario] = SCENARIOS,
    a: Assumptions | None = None,
    prices: Prices | None = None,
    install: Install | None = None,
) -> dict[str, Any]:
    a = a or assumptions_from_deploy()
    prices = prices or Prices()
    install = install or Install()
    rows = [row(m, s, a, prices, install) for s in scenarios]
    largest = max(rows, key=lambda r: r.devices)
    for r in rows:
        r.yearly_as_share = r.devices * largest.yearly_per_device
    return {
        "largest": largest.scenario,
        "measurement": {
            k: m.get(k)
            for k in (
                "date",
                "machine",
                "note",
                "fixes",
                "fixes_per_record",
                "fences",
                "redis",
                "events_per_million_fixes",
                "cpu_s_per_million_fixes",
                "idle_cores",
            )
        },
        "assumptions": asdict(a),
        "prices": asdict(prices),
        "install": asdict(install),
        "rows": [asdict(r) for r in rows],
    }


def _n(x: float, unit: str = "") -> str:
    if x >= 100:
        return f"{x:,.0f}{unit}"
    if x >= 1:
        return f"{x:,.1f}{unit}"
    return f"{x:.2g}{unit}"


def markdown(b: Mapping[str, Any]) -> str:
    a, p, m, i = b["assumptions"], b["prices"], b["measurement"], b["install"]
    red = m.get("redis") or {}
    epm = (
        a["events_per_million_fixes"]
        if a["events_per_million_fixes"] is not None
        else m.get("events_per_million_fixes") or 0.0
    )
    how_many = (
        "as measured on the evaluation's workload: pastures with lanes between them"
        if a["events_per_million_fixes"] is None
        else "given"
    )
    cpu_text = ", ".join(f"{k} {v:.1f}" for k, v in (m.get("cpu_s_per_million_fixes") or {}).items())
    idle_text = ", ".join(f"{k} {v:.3f}" for k, v in (m.get("idle_cores") or {}).items()) or "(not measured)"
    cur = "$" if p["currency"] == "USD" else p["currency"] + " "
    lines = [
        "| scenario | fixes/s | cores needed (workers / broker / Redis / API) | memory needed | Redis data "
        "| Kafka retained (all replicas) | yearly, needed | provisioned: pods, cores, memory, disk | yearly, "
        "provisioned | per animal a year (needed / provisioned) | as a share of the largest service |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in b["rows"]:
        c = r["cores_need"]
        lines.append(
            f"| {r['scenario']} | {_n(r['fixes_per_s'])} | {_n(sum(c.values()))} ({_n(c['worker'])} / "
            f"{_n(c['broker'])} / {_n(c['redis'])} / {_n(c['api'])}) | {_n(sum(r['memory_gb_need'].values()))} GB "
            f"| {_n(r['redis_data_gb'])} GB | {_n(sum(r['kafka_gb'].values()))} GB | {cur}{_n(r['yearly_need'])} "
            f"| {r['workers']} workers, {r['api_pods']} API; {_n(r['cores'])} cores, {_n(r['memory_gb'])} GB, "
            f"{_n(r['disk_gb'])} GB | {cur}{_n(r['yearly'])} | {cur}{r['yearly_need_per_device']:.3f} / "
            f"{cur}{r['yearly_per_device']:.2f} | {cur}{_n(r['yearly_as_share'])} |"
        )
    lines += [
        "",
        f"From the measurement of {m['date']} on {m['machine']} ({m['fixes']:,} fixes, {m['fixes_per_record']} a "
        f"record, {m['fences']:,} fences){'; ' + m['note'] if m.get('note') else ''}. Assumptions:",
        "",
        f"- **Needed**: CPU for {a['peak']:g}x the mean fix rate (peaks, catching up after an outage); memory "
        f"{a['memory_margin']:g}x the computed need; Redis {a['redis_fork_factor']:g}x its data (deploy/ sets "
        "maxmemory to half the limit: forks for AOF rewrites and backups). No minimum: the needed cost is a "
        "share of a shared service (a single farm served by a cooperative's or the national deployment pays about "
        "this).",
        f"- **CPU**: CPU-seconds per million fixes as measured ({cpu_text})"
        + (
            f"; for the workers at least {a['worker_cpu_s_floor']:.1f} core-seconds, from "
            f"{a['worker_cpu_s_floor_source']}: a worker pod's core for the time it takes (wall time: its waits "
            "on Redis included, as a pod's core is held through them), since collars reporting once a minute send "
            "every fix from another collar, each its own state write"
            if a.get("worker_cpu_s_floor") is not None
            else ""
        )
        + f"; idle, with no fix coming, the processes use {idle_text} cores, inside the provisioned pods' cores "
        "(a share of a shared service carries none of it).",
        f"- **Provisioned**: whole pods of deploy/'s sizes ({i['worker_cpu']:g} CPU workers, {i['api_cpu']:g} CPU "
        f"API pods), {'N+1 (one more worker and API pod, a Redis replica)' if a['n_plus_one'] else 'no spare'}, "
        f"never under the production minimum of deploy/k8s/overlays/prod: {i['min_api']} API pods and a "
        f"{i['kafka_nodes']}-node Kafka of {i['kafka_cpu']:g} CPU, {i['kafka_gb']:g} GiB and "
        f"{i['kafka_disk_gb']:g} GiB each. A farm alone on its own install pays this minimum.",
        f"- **Kafka**: `locations` kept {a['locations_retention_days']:g} day(s) and `fence-events` "
        f"{a['events_retention_days']:g} days (deploy/k8s/base/kafka.yaml), {a['replication']} replicas (prod "
        f"overlay), one fix a record (a collar's fix sent alone) stored uncompressed, disks filled to "
        f"{a['disk_fill']:.0%}. The broker measured is Tansu (in memory), not Kafka: its CPU stands in for "
        "Kafka's; the minimum install's three nodes cover it at every scale here.",
        f"- **Redis**: per device its state and its track (up to {a['track_cap']:,} fixes or "
        f"{a['track_window_s'] / 3600:g} h: 144 fixes at one per 10 min, 1,440 at one a minute; "
        f"{_n(red.get('bytes_per_track_fix', 0.0))} bytes a track fix, measured on tracks of "
        f"{_n(red.get('track_fixes_per_device', 0.0))} fixes), per fence its record, per farm its keys and its "
        f"event history (a day's events, at most {a['history_maxlen']:,}), as measured with MEMORY USAGE.",
        f"- **Events**: {_n(epm)} a million fixes ({how_many}); they size `fence-events` and the histories.",
        f"- **API**: the web app open 8 h a day on every farm, {a['api_requests_per_farm_s']:.3f} requests/s a farm, "
        f"{a['api_cpu_s_per_request'] * 1e6:.0f} us of CPU a request (README's pull figures); each API process "
        "holds the fences like a worker.",
        f"- **Prices** ({p['currency']}): {cur}{p['vcpu_hour']} a vCPU-hour, {cur}{p['gb_hour']} a GB-hour of "
        f"memory, {cur}{p['disk_gb_month']} a GB-month of disk; {p['source']}; on-demand, 8,760 hours a year, "
        "no discounts, no network or load balancer.",
    ]
    return "\n".join(lines)


def plot(b: Mapping[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = b["rows"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = [r["scenario"].split(":")[0] for r in rows]
    xs = range(len(rows))
    parts = ("worker", "broker", "redis", "api")
    bottom = [0.0] * len(rows)
    for part in parts:
        vals = [r["cores_need"][part] for r in rows]
        ax.bar(xs, vals, bottom=bottom, label=f"{part} cores (needed)")
        bottom = [x + y for x, y in zip(bottom, vals)]
    ax.scatter(xs, [r["cores"] for r in rows], color="black", marker="_", s=400, label="provisioned cores")
    ax.set_yscale("log")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("cores")
    ax.set_title("Cores: needed (with peak headroom) and provisioned", fontsize=10)
    ax.legend(fontsize=8)
    w = 0.38
    bx.bar([x - w / 2 for x in xs], [r["yearly_need"] for r in rows], w, label="needed (share of a shared service)")
    bx.bar([x + w / 2 for x in xs], [r["yearly"] for r in rows], w, label="provisioned (own install, N+1)")
    for x, r in zip(xs, rows):
        bx.text(x + w / 2, r["yearly"], f"{r['yearly_per_device']:.2f}/animal", ha="center", va="bottom", fontsize=8)
    bx.set_yscale("log")
    bx.set_xticks(list(xs), names)
    bx.set_ylabel(f"{b['prices']['currency']} a year")
    bx.set_title("Yearly cost at on-demand prices", fontsize=10)
    bx.legend(fontsize=8)
    m = b["measurement"]
    fig.suptitle(f"fencex yearly budget, from the measurement of {m['date']} ({m['machine']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write(b: Mapping[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "budget.json").write_bytes(orjson.dumps(b, option=orjson.OPT_INDENT_2))
    (out / "budget.md").write_text(markdown(b) + "\n")
    return [out / "budget.json", out / "budget.md", plot(b, out / "budget.png")]


# ---------------------------------------------------------------------------------------------- a measured run


def measured_run(fences: int, devices: int, fixes: int, out: Path, seed: int = 1) -> dict[str, Any]:
    """A push run of its own, one fix a record: a broker, Redis, one worker and one API process, all measured."""
    import subprocess

    from bench.push import Bench, metric, say
    from devtools.localserver import free_port
    from fencex.kafka.admin import ensure_topics
    from fencex.store.redis import RedisStore

    args = argparse.Namespace(fences=fences, devices=devices, seed=seed, out=str(out), step_s=5.0)
    bench = Bench(args)
    api: subprocess.Popen[bytes] | None = None
    try:
        topic, events = "budget-locations", "budget-events"
        ensure_topics(bench.bootstrap, {topic: 12, events: 12, "locations.dlq": 1})
        # a worker with nothing to load: the base of a worker's memory
        empty = bench.start_worker(topic, "budget-empty", events, prefix="empty")
        while metric(empty, "fencex_partitions_assigned") < 12:
            time.sleep(0.2)
        time.sleep(2)
        base_use = Sampler(lambda: {"worker": [bench.workers[-1].pid]}).start().stop()
        bench.stop_workers()

        async def seed_fences() -> None:
            store = RedisStore(bench.redis_url, "fx")
            await store.connect()
            for start in range(0, len(bench.fences), 2000):
                await store.put_fences(bench.fences[start : start + 2000])
            await store.register_devices(bench.herd.tenants())
            await store.close()

        say(f"budget: seeding {fences:,} fences, {devices:,} collars")
        used = {"before": asyncio.run(redis_used_memory(bench.redis_url))}
        asyncio.run(seed_fences())
        used["seeded"] = asyncio.run(redis_used_memory(bench.redis_url))
        port = bench.start_worker(topic, "budget", events)
        api_port = free_port()
        env = dict(
            os.environ,
            FENCEX_REDIS_URL=bench.redis_url,
            FENCEX_KAFKA_BOOTSTRAP=bench.bootstrap,
            FENCEX_PORT=str(api_port),
            FENCEX_HOST="127.0.0.1",
            FENCEX_WORKERS="1",
            FENCEX_EVENTS_TOPIC=events,
            FENCEX_LOG_LEVEL="warning",
        )
        with (out / "logs" / "budget-api.log").open("wb") as log:
            api = subprocess.Popen(
                [sys.executable, "-m", "services.api"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        while metric(port, "fencex_partitions_assigned") < 12:
            time.sleep(0.2)
        time.sleep(2)

        def pids() -> dict[str, list[int]]:
            return {
                "worker": [w.pid for w in bench.workers],
                "broker": [bench.broker.proc.pid],
                "redis": [bench.redis.proc.pid],
                "api": [api.pid] if api else [],
            }

        idle = Sampler(pids).start()  # the floor: every process ready, no fix coming
        time.sleep(5)
        ready = idle.stop()
        say(f"budget: measuring {fixes:,} fixes, one a record")
        sampler = Sampler(pids).start()
        bench.backlog(topic, fixes, 1)
        bench.time_drain([port], fixes, "budget")
        use = sampler.stop()
        processed = int(metric(port, "fencex_fixes_processed_total"))
        published = metric(port, "fencex_events_published_total")  # every type
        w_ready = ready["classes"]["worker"]["rss_steady_mb"]
        w_after = use["classes"]["worker"]["rss_steady_mb"]
        w_base = base_use["classes"]["worker"]["rss_steady_mb"]
        worker_mb = {
            "base": w_base,
            "ready": w_ready,
            "after": w_after,
            "per_fence": max(w_ready - w_base, 0.0) / fences,
            "per_device": max(w_after - w_ready, 0.0) / devices,
        }
        tenants = len(set(bench.herd.tenants().values()))
        redis = redis_breakdown(
            bench.redis_url, devices, fences, tenants, track_fixes=processed, history_events=int(published)
        )
        # INFO's used_memory across the seeding and the run, beside the keys' own sizes (MEMORY USAGE)
        redis["info_used_memory"] = {**used, "after": redis["used_memory"]}
        m = measurement(
            use,
            fixes=processed,
            fixes_per_record=1,
            fences=fences,
            devices=devices,
            tenants=tenants,
            redis=redis,
            locations=kafka_bytes(bench.bootstrap, topic),
            events=kafka_bytes(bench.bootstrap, events),
            events_published=published,
            worker_mb=worker_mb,
            idle=ready,
            note=f"python -m bench.budget run: {processed:,} fixes produced and processed in {use['seconds']:.1f} s",
        )
        say(f"budget: CPU-s per million fixes {m['cpu_s_per_million_fixes']}")
        return m
    finally:
        if api is not None:
            api.terminate()
            try:
                api.wait(15)
            except subprocess.TimeoutExpired:
                api.kill()
                api.wait()
        bench.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.budget", description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--measurement", type=Path, help="a measurement JSON (bench.evaluate's, or an earlier run's)")
    src.add_argument("--tiny", action="store_true", help="measure a tiny run first (2,000 fences, 20,000 fixes)")
    src.add_argument("--measure", action="store_true", help="measure a medium run first (200,000 fixes)")
    ap.add_argument("--out", type=Path, default=Path("out/budget"))
    ap.add_argument("--peak", type=float, default=2.0, help="CPU for this many times the mean fix rate")
    ap.add_argument("--no-n-plus-one", action="store_true")
    ap.add_argument("--retention-days", type=float, help="the locations topic's retention (default: deploy/'s)")
    ap.add_argument("--events-per-million-fixes", type=float, help="events a million fixes make (default: as measured)")
    ap.add_argument("--vcpu-hour", type=float, default=Prices.vcpu_hour)
    ap.add_argument("--gb-hour", type=float, default=Prices.gb_hour)
    ap.add_argument("--disk-gb-month", type=float, default=Prices.disk_gb_month)
    ap.add_argument("--currency", default=Prices.currency)
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.measurement:
        m = orjson.loads(a.measurement.read_bytes())
        m = m.get("budget_measurement", m)  # bench.evaluate's results.json holds it under this key
    else:
        m = measured_run(2_000, 2_000, 20_000 if a.tiny else 200_000, a.out)
        if a.tiny:
            m["note"] = (m.get("note", "") + "; tiny").lstrip("; ")
        (a.out / "measurement.json").write_bytes(orjson.dumps(m, option=orjson.OPT_INDENT_2))
    over: dict[str, Any] = {"peak": a.peak, "n_plus_one": not a.no_n_plus_one}
    if a.retention_days is not None:
        over["locations_retention_days"] = a.retention_days
    if a.events_per_million_fixes is not None:
        over["events_per_million_fixes"] = a.events_per_million_fixes
    prices = Prices(a.vcpu_hour, a.gb_hour, a.disk_gb_month, a.currency)
    if (a.vcpu_hour, a.gb_hour, a.disk_gb_month) != (Prices.vcpu_hour, Prices.gb_hour, Prices.disk_gb_month):
        prices = replace(prices, source="given on the command line")
    b = budget(m, a=assumptions_from_deploy(**over), prices=prices)
    for p in write(b, a.out):
        print(f"wrote {p}")
    print(markdown(b))
    return 0


if __name__ == "__main__":
    sys.exit(main())

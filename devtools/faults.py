"""Fault injection against real servers: a private broker and redis-server, two processor
workers and the API, a herd streaming fixes across fence borders and a few API requests a
second; then one fault, and the checks that nothing was lost.

Used by ``tests/integration/test_faults.py`` (one fault each) and as a longer randomized run::

    python -m devtools.faults --minutes 10

Each scenario asserts (see :class:`Outcome`):

- 0 events lost: every event the pure pipeline (``fencex.pipeline.process`` over the fixes the
  broker acknowledged, in order per device) predicts is published on the events topic, with the
  same ``event_id`` (duplicates allowed);
- one id per transition: per device and fence, the distinct events alternate
  enter (dwell) exit; the same exit published twice with two ids shows as two exits in a row;
- the workers recovered without a restart: the same processes answer ``/readyz`` with 200
  and count new fixes after the fault;
- the API answered, while a dependency was down, either normally or 503 problem+json with a
  ``Retry-After`` header (never another error), at least once 503 when the dependency was
  needed, and normally again after.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import redis
from confluent_kafka import Consumer, Producer, TopicPartition

from devtools.localserver import HOST, Server, free_port, start_broker, start_redis, start_s3
from fencex.detector import DeviceState
from fencex.errors import ServerStartError
from fencex.fence import Fence
from fencex.fix import Fix
from fencex.index import FenceIndex
from fencex.kafka.admin import ensure_topics
from fencex.pipeline import default_rules, process
from fencex.store.redis import RedisStore
from services.simulator.herd import Herd, pastures

ROOT = Path(__file__).parents[1]
ADMIN_KEY = "admin-key-for-fault-tests"
PARTITIONS = 4
SESSION_TIMEOUT_S = 6.0  # the local broker's group joins take half of it
FLUSH_INTERVAL_S = 1.0
HUNG_S = 12.0  # an answer slower than this during a fault hung (the store's socket timeout is 10 s)
FAULTS = (
    "redis-kill",
    "redis-pause",
    "redis-oom",
    "broker-kill",
    "broker-freeze",
    "worker-kill-fence-change",
    "worker-stall",
)
# far from every pasture: a probe device there never makes an event
PROBE_LON, PROBE_LAT = 10.0, 50.0
AWAY = {"type": "Polygon", "coordinates": [[[11.0, 51.0], [11.01, 51.0], [11.01, 51.01], [11.0, 51.01], [11.0, 51.0]]]}


def say(msg: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------- servers


class Servers:
    """A private broker and redis-server that the faults may kill, pause or starve."""

    def __init__(self, tmp: Path, persistent_broker: bool = False) -> None:
        self.tmp = tmp
        self.s3: Server | None = None
        self._broker_args: dict = {}
        if persistent_broker:
            self.s3 = start_s3(logdir=tmp / "s3")
            self._broker_args = {"storage": "s3://tansu/", "env": self.s3.extra["env"]}
        self.broker = start_broker(logdir=tmp / "broker", **self._broker_args)
        self.redis_dir = Path(tempfile.mkdtemp(prefix="fencex-faults-redis-"))
        self.redis = self._start_redis()

    def _start_redis(self, port: int | None = None) -> Server:
        return start_redis(
            port,
            logdir=self.tmp / "redis",
            appendonly=True,
            workdir=self.redis_dir,
            config={"appendfsync": "always", "maxmemory-policy": "noeviction"},
        )

    @property
    def redis_url(self) -> str:
        return f"redis://{self.redis.address}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.redis.port, socket_timeout=5)

    def kill_redis(self) -> None:
        self.redis.proc.send_signal(signal.SIGKILL)
        self.redis.proc.wait(5)

    def restart_redis(self) -> None:
        self.redis = self._start_redis(self.redis.port)  # on the same files: its append-only file

    def kill_broker(self) -> None:
        self.broker.proc.send_signal(signal.SIGKILL)
        self.broker.proc.wait(5)

    def restart_broker(self) -> None:
        self.broker = start_broker(self.broker.port, logdir=self.tmp / "broker", **self._broker_args)

    def close(self) -> None:
        for s in (self.broker, self.redis, self.s3):
            if s is not None:
                with contextlib.suppress(Exception):
                    s.proc.send_signal(signal.SIGCONT)
                s.stop()


# ------------------------------------------------------------------- services


@dataclass
class Proc:
    kind: str
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://{HOST}:{self.port}/readyz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def metric(self, name: str) -> float:
        total = 0.0
        text = httpx.get(f"http://{HOST}:{self.port}/metrics", timeout=2.0).text
        for line in text.splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total


@dataclass
class Stack:
    """One namespace (topics, group, key prefix) on the servers, and the processes serving it."""

    servers: Servers
    tmp: Path
    name: str = field(default_factory=lambda: f"f{uuid.uuid4().hex[:8]}")
    procs: list[Proc] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def topics(self) -> dict[str, str]:
        return {
            "locations": f"{self.name}.locations",
            "events": f"{self.name}.fence-events",
            "dlq": f"{self.name}.locations.dlq",
        }

    @property
    def prefix(self) -> str:
        return f"fx{self.name}"

    def env(self, **extra: str) -> dict[str, str]:
        t = self.topics
        return dict(
            os.environ,
            FENCEX_KAFKA_BOOTSTRAP=self.servers.broker.address,
            FENCEX_REDIS_URL=self.servers.redis_url,
            FENCEX_KEY_PREFIX=self.prefix,
            FENCEX_LOCATIONS_TOPIC=t["locations"],
            FENCEX_EVENTS_TOPIC=t["events"],
            FENCEX_DLQ_TOPIC=t["dlq"],
            FENCEX_GROUP_ID=f"{self.name}-processor",
            FENCEX_HISTORY_GROUP=f"{self.name}-history",
            FENCEX_SESSION_TIMEOUT_S=str(SESSION_TIMEOUT_S),
            FENCEX_HEARTBEAT_S="1",
            # a longer flush than the default 0.2 s: a fault is more likely to meet state not saved yet
            FENCEX_FLUSH_INTERVAL_S=str(FLUSH_INTERVAL_S),
            FENCEX_ADMIN_KEY=ADMIN_KEY,
            **{**self.extra_env, **extra},
        )

    def create_topics(self) -> None:
        t = self.topics
        ensure_topics(self.servers.broker.address, {t["locations"]: PARTITIONS, t["events"]: PARTITIONS, t["dlq"]: 1})

    def _spawn(self, kind: str, module: str, port: int, **extra: str) -> Proc:
        n = len(self.procs)
        log = self.tmp / f"{kind}-{n}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env(**extra),
            )
        p = Proc(kind, proc, port, log)
        self.procs.append(p)
        return p

    def start_worker(self) -> Proc:
        port = free_port()
        n = len(self.procs)
        return self._spawn(
            "worker", "services.processor", port, FENCEX_WEB_PORT=str(port), FENCEX_DATADIR=str(self.tmp / f"data-{n}")
        )

    def start_api(self) -> Proc:
        port = free_port()
        return self._spawn("api", "services.api", port, FENCEX_PORT=str(port), FENCEX_HOST=HOST)

    @property
    def workers(self) -> list[Proc]:
        return [p for p in self.procs if p.kind == "worker"]

    def wait_ready(self, procs: list[Proc], timeout: float = 60.0, assigned: bool = True) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(procs)
        while waiting and time.monotonic() < deadline:
            for p in list(waiting):
                if not p.alive:
                    raise AssertionError(f"{p.kind} exited with {p.proc.returncode}; its log {p.log}")
                if p.ready():
                    try:
                        if p.kind != "worker" or not assigned or p.metric("fencex_partitions_assigned") > 0:
                            waiting.remove(p)
                    except httpx.HTTPError:
                        pass
            time.sleep(0.2)
        if waiting:
            raise AssertionError(f"not ready within {timeout:.0f} s: {[(p.kind, str(p.log)) for p in waiting]}")

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.proc.wait(10)


# ------------------------------------------------------------------- traffic


class FixStream(threading.Thread):
    """A herd crossing pasture borders: one fix per animal per step, ``rate`` fixes a second.
    Keeps the fixes the broker acknowledged, in the order sent (one request in flight: per
    device, acknowledged order is sent order)."""

    CHUNK = 10

    def __init__(self, bootstrap: str, topic: str, herd: Herd, rate: float = 300.0, t0_ms: int | None = None) -> None:
        super().__init__(daemon=True, name="fix-stream")
        self.herd = herd
        self.topic = topic
        self.interval = len(herd.ids) / rate
        # a day back, one second of fix time a step: never ahead of the receiving clock
        self.t0_ms = t0_ms if t0_ms is not None else int(time.time() * 1000) - 86_400_000
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "linger.ms": 5,
                "max.in.flight.requests.per.connection": 1,
                "message.timeout.ms": 300_000,
                "socket.timeout.ms": 10_000,
            }
        )
        self.acked: list[Fix] = []
        self.failed: list[tuple[Fix, str]] = []
        self.steps = 0
        self.stepped = threading.Event()
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._go = threading.Event()
        self._idle = threading.Event()
        self._go.set()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self._halt.is_set():
            if not self._go.is_set():
                self._idle.set()
                self._go.wait()
                self._idle.clear()
            if self._halt.is_set():
                break
            lon, lat = self.herd.step()
            ts = self.t0_ms + self.steps * 5000  # a fix every 5 s: the herd's steps are a walk at that pace
            rows = list(zip(self.herd.ids, lon.tolist(), lat.tolist()))
            # spread over the step, not in one burst: at any moment the workers hold fixes not saved yet
            for i in range(0, len(rows), self.CHUNK):
                for d, x, y in rows[i : i + self.CHUNK]:
                    f = Fix(d, ts, float(x), float(y))
                    value = orjson.dumps({"device_id": d, "ts": ts, "lon": f.lon, "lat": f.lat})
                    while True:
                        try:
                            self.producer.produce(self.topic, value, key=d, on_delivery=self._callback(f))
                            break
                        except BufferError:
                            self.producer.poll(0.05)
                chunk_at = next_at + self.interval * (i + self.CHUNK) / len(rows)
                while not self._halt.is_set() and time.monotonic() < chunk_at:
                    self.producer.poll(0.01)
            self.steps += 1
            self.stepped.set()
            next_at += self.interval
            if time.monotonic() - next_at > 5 * self.interval:
                next_at = time.monotonic()  # the broker was away: do not burst to catch up
        self.producer.flush(120)

    def _callback(self, f: Fix) -> Callable:
        def done(err, _msg) -> None:
            with self._lock:
                if err is None:
                    self.acked.append(f)
                else:
                    self.failed.append((f, str(err)))

        return done

    def pause(self) -> None:
        """Stop after the current step; return when all that was sent is acknowledged."""
        self._go.clear()
        if not self._idle.wait(30):
            raise AssertionError("the fix stream did not pause")
        self.producer.flush(60)

    def resume(self) -> None:
        self._go.set()

    def stop(self) -> None:
        self._halt.set()
        self._go.set()
        self.join(150)

    def newest(self) -> dict[str, Fix]:
        out: dict[str, Fix] = {}
        with self._lock:
            for f in self.acked:
                if f.device_id not in out or f.ts_ms > out[f.device_id].ts_ms:
                    out[f.device_id] = f
        return out


@dataclass
class Sample:
    kind: str
    started: float
    ended: float
    status: int  # 0: no answer (a timeout or a refused connection)
    retry_after: str | None
    content_type: str


class ApiTraffic:
    """A few requests a second, one thread per kind: point queries and device reads (the
    in-memory index and Redis), fence reads and claims (Redis), and ingest (the broker)."""

    def __init__(self, base: str, key: str, fence_ids: list[str], devices: list[str], probe: str) -> None:
        self.base = base
        self.auth = {"Authorization": f"Bearer {key}"}
        self.samples: list[Sample] = []
        self._halt = threading.Event()
        self._lock = threading.Lock()
        rnd = random.Random(7)
        self.kinds: dict[str, Callable[[httpx.Client], httpx.Response]] = {
            "point": lambda c: c.get("/query/fences", params={"lon": 17.3, "lat": 59.6}),
            "fence": lambda c: c.get(f"/fences/{rnd.choice(fence_ids)}"),
            "fences": lambda c: c.get("/fences", params={"limit": 5}),
            "device": lambda c: c.get(f"/devices/{rnd.choice(devices)}"),
            "claim": lambda c: c.put(f"/devices/probe-{uuid.uuid4().hex[:10]}"),
            "ingest": lambda c: c.post(
                "/locations",
                json={"device_id": probe, "ts": int(time.time() * 1000) - 1000, "lon": PROBE_LON, "lat": PROBE_LAT},
            ),
        }
        self.threads = [threading.Thread(target=self._loop, args=(k,), daemon=True) for k in self.kinds]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _loop(self, kind: str) -> None:
        call = self.kinds[kind]
        with httpx.Client(base_url=self.base, headers=self.auth, timeout=40.0) as c:
            while not self._halt.is_set():
                started = time.monotonic()
                try:
                    r = call(c)
                    s = Sample(
                        kind,
                        started,
                        time.monotonic(),
                        r.status_code,
                        r.headers.get("retry-after"),
                        r.headers.get("content-type", ""),
                    )
                except httpx.HTTPError:
                    s = Sample(kind, started, time.monotonic(), 0, None, "")
                with self._lock:
                    self.samples.append(s)
                self._halt.wait(max(0.0, 0.6 - (time.monotonic() - started)))

    def stop(self) -> None:
        self._halt.set()
        for t in self.threads:
            t.join(45)


class EventReader(threading.Thread):
    """Every event published on the events topic, read by partition (no group to rejoin)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True, name="event-reader")
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"fault-reader-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
                "socket.timeout.ms": 10_000,
            }
        )
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        self.events: list[dict] = []
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                msg = self.consumer.poll(0.2)
                if msg is not None and not msg.error():
                    self.events.append(orjson.loads(msg.value()))
        finally:
            self.consumer.close()

    def ids(self) -> set[str]:
        return {e["event_id"] for e in list(self.events)}

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


# ------------------------------------------------------------------- checks


def predict(fences: list[Fence], tenants: dict[str, str], fixes: list[Fix]) -> dict[str, dict]:
    """The events the pure pipeline makes of these fixes (in order per device), by id."""
    states: dict[str, DeviceState] = {}
    out = process(fixes, FenceIndex(fences), states, lambda d: tenants.get(d, "default"), default_rules)
    return {
        e.event_id: {"type": e.type, "device_id": e.device_id, "fence_id": e.fence_id, "ts_ms": e.ts_ms}
        for e in out.events
    }


_ORDER = {"enter": 0, "dwell": 1, "exit": 2, "escape": 3, "return": 3}
# what alternates: per device and fence, enter (dwell) exit; per device, escape and return
_OPENS = {"enter": "fence", "exit": "fence", "dwell": "fence", "escape": "herd", "return": "herd"}


def alternation_breaks(events: list[dict]) -> list[str]:
    """Per device and fence, the distinct events must alternate enter (dwell) exit, and per
    device escape and return: two ids for one transition show as two enters (exits, escapes,
    returns) in a row. Collar events (battery, silence) are left out."""
    unique = {e["event_id"]: e for e in events}
    by_pair: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for e in unique.values():
        kind = _OPENS.get(e["type"])
        if kind == "fence":
            by_pair[(e["device_id"], e["fence_id"])].append(e)
        elif kind == "herd":
            by_pair[(e["device_id"], "(escape/return)")].append(e)
    breaks = []
    for pair, evs in by_pair.items():
        evs.sort(key=lambda e: (e["ts"], e["fence_version"], _ORDER[e["type"]]))
        inside: bool | None = None  # unknown before the first event (for the herd: in, unless escaped)
        for e in evs:
            t = e["type"]
            bad = (
                (t == "enter" and inside is True)
                or (t in ("exit", "dwell") and inside is False)
                or (t == "escape" and inside is False)
                or (t == "return" and inside is True)
            )
            if bad:
                seq = [(x["type"], x["ts"], x["fence_version"], x["event_id"][:8]) for x in evs]
                breaks.append(f"{pair}: {seq}")
                break
            inside = t not in ("exit", "escape")


@dataclass
class Outcome:
    fault: str
    expected: int = 0
    received: int = 0
    lost: list[str] = field(default_factory=list)
    two_ids: list[str] = field(default_factory=list)
    unacked_fixes: int = 0
    broker_lost_fixes: int = 0  # acknowledged, then not on the topic after the broker's restart
    crashed: list[str] = field(default_factory=list)
    not_recovered: list[str] = field(default_factory=list)
    api_errors: list[str] = field(default_factory=list)  # answers that are neither normal nor a proper 503
    api_503: dict[str, int] = field(default_factory=dict)  # proper 503s while the dependency was down
    api_after: list[str] = field(default_factory=list)  # not normal service after recovery
    api_needed_503: bool = True
    stale_states: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems()

    def problems(self) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{len(self.lost)} of {self.expected} events lost, e.g. {self.lost[:3]}")
        if self.two_ids:
            out.append(f"{len(self.two_ids)} transitions with two ids, e.g. {self.two_ids[:2]}")
        if self.unacked_fixes:
            out.append(f"{self.unacked_fixes} fixes never acknowledged by the broker")
        if self.crashed:
            out.append(f"crashed: {self.crashed}")
        if self.not_recovered:
            out.append(f"not recovered: {self.not_recovered}")
        if self.api_errors:
            out.append(f"{len(self.api_errors)} bad API answers during the fault, e.g. {self.api_errors[:4]}")
        if self.api_needed_503 and not sum(self.api_503.values()):
            out.append("the API never answered 503 while the dependency was down")
        if self.api_after:
            out.append(f"{len(self.api_after)} bad API answers after recovery, e.g. {self.api_after[:4]}")
        if self.stale_states:
            out.append(
                f"{len(self.stale_states)} device states older than the newest fix, e.g. {self.stale_states[:3]}"
            )
        return out

    def summary(self) -> str:
        status = "ok" if self.ok else "FAILED: " + "; ".join(self.problems())
        return (
            f"{self.fault}: {self.expected} events expected, {self.received} received, "
            f"{len(self.lost)} lost; {self.broker_lost_fixes} acked fixes lost by the broker; "
            f"API 503s {self.api_503}; {self.seconds:.0f} s; {status}"
        )


def judge_api(
    out: Outcome, samples: list[Sample], down: tuple[float, float], recovered: float, needs: set[str]
) -> None:
    """``down``: when the dependency was away; ``recovered``: from when normal service is due."""
    for s in samples:
        overlaps = s.started <= down[1] and s.ended >= down[0]
        normal = 200 <= s.status < 300 or (s.kind == "device" and s.status == 404)
        proper_503 = (
            s.status == 503 and s.retry_after is not None and s.content_type.startswith("application/problem+json")
        )
        if s.started >= recovered:
            if not normal:
                out.api_after.append(f"{s.kind} {s.status} at +{s.started - down[1]:.1f} s after recovery")
        elif overlaps or s.started >= down[1]:
            if proper_503:
                out.api_503[s.kind] = out.api_503.get(s.kind, 0) + 1
            elif not normal:
                what = f"{s.status} (retry-after {s.retry_after}, {s.content_type or 'no body'})"
                out.api_errors.append(f"{s.kind} {what} after {s.ended - s.started:.1f} s")
        elif not normal:
            out.api_errors.append(f"{s.kind} {s.status} before the fault")
    out.api_needed_503 = bool(needs & {s.kind for s in samples})
    during = [s for s in samples if s.started <= down[1] and s.ended >= down[0]]
    for kind in sorted({s.kind for s in during}):
        mine = [s for s in during if s.kind == kind]
        slowest = max(s.ended - s.started for s in mine)
        statuses = sorted({s.status for s in mine})
        out.notes.append(f"during the fault {kind}: {len(mine)} answers {statuses}, slowest {slowest:.1f} s")
        if slowest > HUNG_S:
            out.api_errors.append(f"{kind} took {slowest:.1f} s to answer (more than {HUNG_S:g} s: it hung)")


# ------------------------------------------------------------------- scenario


@dataclass
class World:
    servers: Servers
    stack: Stack
    fences: list[Fence]
    herd: Herd
    stream: FixStream
    reader: EventReader
    api: Proc
    traffic: ApiTraffic


def _seed(stack: Stack, fences: list[Fence], tenants: dict[str, str], probe: str) -> str:
    import asyncio

    async def go() -> None:
        store = RedisStore(stack.servers.redis_url, stack.prefix)
        await store.connect()
        try:
            await store.put_fences(fences)
            await store.register_devices({**tenants, probe: fences[0].tenant})
        finally:
            await store.close()

    asyncio.run(go())
    tenant = fences[0].tenant
    base = f"http://{HOST}:{stack.procs[-1].port}"
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    r = httpx.post(f"{base}/admin/tenants", json={"id": tenant}, headers=admin, timeout=10)
    r.raise_for_status()
    return str(r.json()["api_key"])


@contextlib.contextmanager
def world(tmp: Path, seed: int = 1, persistent_broker: bool = False, devices: int = 150) -> Iterator[World]:
    servers = Servers(tmp, persistent_broker)
    # Tansu's S3 engine counts an idempotent batch's sequence (meta.json) before it writes the
    # batch: a SIGKILL between the two, and the retry after the restart is answered
    # DUPLICATE_SEQUENCE_NUMBER, which librdkafka takes for delivered. Without idempotence
    # the retry is written (a duplicate at worst, with the same event_id).
    stack = Stack(servers, tmp, extra_env={"FENCEX_PRODUCER_IDEMPOTENCE": "false"} if persistent_broker else {})
    stream = reader = traffic = None
    try:
        stack.create_topics()
        fences = pastures(25, seed=seed, dwell_s=15)
        herd = Herd(devices, fences, seed=seed, roam=1.0)
        api = stack.start_api()
        stack.wait_ready([api])
        probe = "probe-collar"
        key = _seed(stack, fences, herd.tenants(), probe)
        workers = [stack.start_worker() for _ in range(2)]
        stack.wait_ready(workers, timeout=90)
        reader = EventReader(servers.broker.address, stack.topics["events"])
        reader.start()
        stream = FixStream(servers.broker.address, stack.topics["locations"], herd)
        stream.start()
        traffic = ApiTraffic(f"http://{HOST}:{api.port}", key, [f.id for f in fences], herd.ids[:20], probe)
        traffic.start()
        yield World(servers, stack, fences, herd, stream, reader, api, traffic)
    finally:
        for t in (traffic, stream, reader):
            if t is not None:
                with contextlib.suppress(Exception):
                    t.stop()
        stack.close()
        servers.close()


def surviving_fixes(bootstrap: str, topic: str, acked: list[Fix], timeout: float = 60.0) -> list[Fix]:
    """The acknowledged fixes the broker still holds: the topic read back from the start, up to
    the high watermarks (in the order acknowledged)."""
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"fault-fixes-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False}
    )
    held: set[tuple[str, int]] = set()
    try:
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS)}
        c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        todo = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + timeout
        while todo:
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: not read to its end within {timeout:.0f} s (left: {sorted(todo)})")
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            d = orjson.loads(msg.value())
            held.add((d["device_id"], d["ts"]))
            if msg.offset() >= ends[msg.partition()] - 1:
                todo.discard(msg.partition())
    finally:
        c.close()
    return [f for f in acked if (f.device_id, f.ts_ms) in held]


def _settle(
    w: World,
    out: Outcome,
    fences_for_exact: Callable[[dict], bool],
    timeout: float = 40.0,
    broker_may_lose: bool = False,
) -> None:
    """Stop the fixes, predict, and wait (bounded) for every predicted event.

    ``broker_may_lose``: predict from the acknowledged fixes the broker still holds (read back),
    not from all it acknowledged, and count the others in ``broker_lost_fixes``."""
    w.stream.stop()
    out.unacked_fixes = len(w.stream.failed)
    fixes = w.stream.acked
    if broker_may_lose:
        fixes = surviving_fixes(w.servers.broker.address, w.stack.topics["locations"], fixes)
        out.broker_lost_fixes = len(w.stream.acked) - len(fixes)
    expected = {i: e for i, e in predict(w.fences, w.herd.tenants(), fixes).items() if fences_for_exact(e)}
    out.expected = len(expected)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not expected.keys() <= w.reader.ids():
        time.sleep(0.5)
    time.sleep(1.0)  # late duplicates, if any, join the check of ids
    seen = w.reader.ids()
    out.received = len(w.reader.events)
    out.lost = sorted(
        f"{e['type']} {e['device_id']} {e['fence_id']} @{e['ts_ms']}" for i, e in expected.items() if i not in seen
    )
    out.two_ids = alternation_breaks(list(w.reader.events))


def _check_recovered(w: World, out: Outcome, workers: list[Proc], timeout: float = 30.0) -> None:
    """The same worker processes: alive, ready, and counting new fixes."""
    before = {}
    for p in workers:
        if not p.alive:
            out.crashed.append(f"{p.kind} pid {p.proc.pid} exited with {p.proc.returncode} (log {p.log})")
            continue
        try:
            before[p.proc.pid] = p.metric("fencex_fixes_consumed_total")
        except httpx.HTTPError:
            before[p.proc.pid] = 0.0
    deadline = time.monotonic() + timeout
    pending = [p for p in workers if p.proc.pid in before]
    while pending and time.monotonic() < deadline:
        for p in list(pending):
            try:
                if p.ready() and p.metric("fencex_fixes_consumed_total") > before[p.proc.pid]:
                    pending.remove(p)
            except httpx.HTTPError:
                pass
        time.sleep(0.5)
    out.not_recovered += [f"worker pid {p.proc.pid} not ready or not processing (log {p.log})" for p in pending]
    if not w.api.alive:
        out.crashed.append(f"api exited with {w.api.proc.returncode} (log {w.api.log})")


def _steady(w: World, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.2)


def _recovery_window(w: World, out: Outcome, down: tuple[float, float], needs: set[str], grace: float = 6.0) -> None:
    recovered = down[1] + grace
    _steady(w, max(0.0, recovered + 4.0 - time.monotonic()))
    _check_recovered(w, out, w.stack.workers)
    w.traffic.stop()
    judge_api(out, w.traffic.samples, down, recovered, needs)


def fault_redis_kill(w: World, out: Outcome, outage: float = 5.0) -> None:
    t0 = time.monotonic()
    w.servers.kill_redis()
    _steady(w, outage)
    w.servers.restart_redis()
    _recovery_window(w, out, (t0, time.monotonic()), {"fence", "fences", "claim"})


def fault_redis_pause(w: World, out: Outcome, pause_s: float = 13.0) -> None:
    """CLIENT PAUSE ALL past the store's socket timeout (10 s)."""
    t0 = time.monotonic()
    w.servers.client().execute_command("CLIENT", "PAUSE", int(pause_s * 1000), "ALL")
    _steady(w, pause_s)
    _recovery_window(w, out, (t0, time.monotonic()), {"fence", "fences", "claim"}, grace=12.0)


def fault_redis_oom(w: World, out: Outcome, outage: float = 6.0) -> None:
    c = w.servers.client()
    used = int(c.info("memory")["used_memory"])
    t0 = time.monotonic()
    c.config_set("maxmemory", max(used // 2, 1))
    _steady(w, outage)
    c.config_set("maxmemory", 0)
    _recovery_window(w, out, (t0, time.monotonic()), {"claim"})


def fault_broker_kill(w: World, out: Outcome, outage: float = 5.0) -> None:
    t0 = time.monotonic()
    w.servers.kill_broker()
    _steady(w, outage)
    w.servers.restart_broker()
    _recovery_window(w, out, (t0, time.monotonic()), {"ingest"}, grace=15.0)


def fault_broker_freeze(w: World, out: Outcome, outage: float = 15.0) -> None:
    """SIGSTOP past the clients' socket and session timeouts, then SIGCONT."""
    t0 = time.monotonic()
    w.servers.broker.proc.send_signal(signal.SIGSTOP)
    try:
        _steady(w, outage)
    finally:
        w.servers.broker.proc.send_signal(signal.SIGCONT)
    _recovery_window(w, out, (t0, time.monotonic()), {"ingest"}, grace=15.0)


def fault_worker_kill_fence_change(w: World, out: Outcome, fences: int = 5) -> set[str]:
    """Reshape the fences most animals are inside (away from them: every one of them exits)
    while fixes flow, and SIGKILL a worker as soon as it has published the re-evaluation's
    exits, before it saves them; start another. Returns the reshaped fences' ids (their events
    depend on when the change met the stream: they are checked by one id per transition)."""
    import asyncio

    inside: dict[str, int] = defaultdict(int)
    for e in list(w.reader.events):
        inside[e["fence_id"]] += 1 if e["type"] == "enter" else -1 if e["type"] == "exit" else 0
    chosen = sorted(inside, key=lambda k: -inside[k])[:fences] or [f.id for f in w.fences[:fences]]
    by_id = {f.id: f for f in w.fences}
    victim = w.stack.workers[0]

    async def reshape() -> None:
        store = RedisStore(w.servers.redis_url, w.stack.prefix)
        await store.connect()
        try:
            await store.put_fences(
                [Fence(id=i, tenant=by_id[i].tenant, name=by_id[i].name, geometry=AWAY) for i in chosen]
            )
        finally:
            await store.close()

    events_before = victim.metric("fencex_events_published_total")
    t0 = time.monotonic()
    asyncio.run(reshape())
    waited = _just_after(victim, "fencex_events_published_total", events_before, timeout=3.0)
    victim.signal(signal.SIGKILL)
    victim.proc.wait(5)
    out.notes.append(
        f"reshaped {len(chosen)} fences (about {sum(max(inside[i], 0) for i in chosen)} animals inside); "
        f"killed the worker {time.monotonic() - t0:.2f} s later ({'after' if waited else 'without'} its exits)"
    )
    replacement = w.stack.start_worker()
    survivors = [p for p in w.stack.workers if p is not victim]
    w.stack.wait_ready([replacement], timeout=60)
    _steady(w, 3.0)
    _check_recovered(w, out, survivors)
    w.traffic.stop()
    judge_api(out, w.traffic.samples, (t0, time.monotonic()), time.monotonic() + 1, set())
    return set(chosen)


def _just_after(p: Proc, metric: str, than: float | None = None, timeout: float = 5.0) -> bool:
    """Return as soon as the worker's counter grows (past ``than``, or past its value now)."""
    base = p.metric(metric) if than is None else than
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.metric(metric) > base:
            return True
        time.sleep(0.005)
    return False


def fault_worker_stall(w: World, out: Outcome) -> None:
    """SIGSTOP a worker past its session timeout while the other takes its partitions; stop the
    fixes and let the new owner save the newest states; SIGCONT: the stalled worker must not
    write its older states over them. Then fixes again: it must take work again."""
    victim, other = w.stack.workers[0], w.stack.workers[1]
    _just_after(victim, "fencex_fixes_processed_total")  # it holds states it has not saved yet
    t0 = time.monotonic()
    victim.signal(signal.SIGSTOP)
    try:
        _steady(w, SESSION_TIMEOUT_S + 4.0)
        w.stream.pause()
        newest = w.stream.newest()
        if not _wait_states(w, newest, 20.0):
            out.notes.append("the new owner had not saved every newest state before the resume")
        victim.signal(signal.SIGCONT)
    except BaseException:
        victim.signal(signal.SIGCONT)
        raise
    _steady(w, 5.0)  # the resumed worker runs its loop, learns it was fenced out, rejoins
    stale = _stale_states(w, newest)
    out.stale_states = [f"{d}: saved ts {got}, newest fix {want}" for d, got, want in stale]
    w.stream.resume()
    _check_recovered(w, out, [victim, other], timeout=40)
    w.traffic.stop()
    judge_api(out, w.traffic.samples, (t0, time.monotonic()), time.monotonic() + 1, set())


def _load_states(w: World, ids: list[str]) -> dict[str, DeviceState]:
    import asyncio

    async def go() -> dict[str, DeviceState]:
        store = RedisStore(w.servers.redis_url, w.stack.prefix)
        await store.connect()
        try:
            return await store.load_states(ids)
        finally:
            await store.close()

    return asyncio.run(go())


def _stale_states(w: World, newest: dict[str, Fix]) -> list[tuple[str, int | None, int]]:
    states = _load_states(w, list(newest))
    return [
        (d, states[d].last_ts if d in states else None, f.ts_ms)
        for d, f in sorted(newest.items())
        if d not in states or states[d].last_ts != f.ts_ms
    ]


def _wait_states(w: World, newest: dict[str, Fix], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _stale_states(w, newest):
            return True
        time.sleep(0.5)
    return False


def run_fault(fault: str, tmp: Path, seed: int = 1, warmup: float = 4.0) -> Outcome:
    """One scenario: servers, workers, API and traffic; ``warmup`` seconds of steady stream;
    the fault; recovery; the checks."""
    started = time.monotonic()
    out = Outcome(fault)
    with world(tmp, seed=seed, persistent_broker=(fault == "broker-kill")) as w:
        _steady(w, warmup)
        exact: Callable[[dict], bool] = lambda e: True  # noqa: E731
        if fault == "redis-kill":
            fault_redis_kill(w, out)
        elif fault == "redis-pause":
            fault_redis_pause(w, out)
        elif fault == "redis-oom":
            fault_redis_oom(w, out)
        elif fault == "broker-kill":
            fault_broker_kill(w, out)
        elif fault == "broker-freeze":
            fault_broker_freeze(w, out)
        elif fault == "worker-kill-fence-change":
            reshaped = fault_worker_kill_fence_change(w, out)
            # the reshaped fences' events, and every escape and return after it (a device's escape
            # count, part of their ids, then depends on when the change met the stream), are
            # checked by one id per transition, not against the prediction
            exact = lambda e: e["fence_id"] not in reshaped and e["type"] not in ("escape", "return")  # noqa: E731
        elif fault == "worker-stall":
            fault_worker_stall(w, out)
        else:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        _settle(w, out, exact, broker_may_lose=fault == "broker-kill")
        for p in w.stack.procs:
            if not p.alive and p.proc.returncode != -signal.SIGKILL:
                out.crashed.append(f"{p.kind} exited with {p.proc.returncode} (log {p.log})")
    out.seconds = time.monotonic() - started
    return out


# ------------------------------------------------------------------- the long run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Inject faults at random against real servers; report what was lost.")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--faults", default=",".join(FAULTS), help="comma-separated subset of " + ", ".join(FAULTS))
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    rnd = random.Random(seed)
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        ap.error(f"unknown faults {sorted(unknown)}")
    say(f"seed {seed}; faults {faults}; {args.minutes:g} minutes")
    deadline = time.monotonic() + args.minutes * 60
    outcomes: list[Outcome] = []
    while time.monotonic() < deadline:
        fault = rnd.choice(faults)
        round_seed = rnd.randrange(1_000_000)
        say(f"round {len(outcomes) + 1}: {fault} (seed {round_seed})")
        with tempfile.TemporaryDirectory(prefix="fencex-faults-") as tmp:
            try:
                out = run_fault(fault, Path(tmp), seed=round_seed)
            except (AssertionError, ServerStartError) as exc:
                out = Outcome(fault, crashed=[f"the scenario could not run: {exc}"])
            if not out.ok:
                keep = Path(tempfile.mkdtemp(prefix="fencex-faults-failed-"))
                for f in Path(tmp).glob("*.log"):
                    (keep / f.name).write_bytes(f.read_bytes())
                out.notes.append(f"logs kept in {keep}")
        outcomes.append(out)
        say(out.summary() + (f" ({'; '.join(out.notes)})" if out.notes else ""))
    lost = sum(len(o.lost) for o in outcomes)
    crashes = sum(len(o.crashed) for o in outcomes)
    failed = [o for o in outcomes if not o.ok]
    by_fault: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for o in outcomes:
        by_fault[o.fault][0] += 1
        by_fault[o.fault][1] += int(not o.ok)
    say("summary")
    for f, (n, bad) in sorted(by_fault.items()):
        print(f"  {f:28s} {n:3d} injected, {bad:3d} failed", flush=True)
    print(
        f"  faults injected: {len(outcomes)}; events expected: {sum(o.expected for o in outcomes)}; "
        f"events lost: {lost}; crashes: {crashes}; failed rounds: {len(failed)}; seed {seed}",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Live servers for the integration tests: a real Kafka-protocol broker and redis-server
on free loopback ports, started once per session. Each test gets its own topics,
consumer groups and Redis key prefix (as faust's own tests get unique topics)."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, Producer

from devtools.localserver import RedisCluster, Server, free_port, start_broker, start_redis, start_redis_cluster
from fencex.kafka.admin import ensure_topics
from fencex.kafka.producer import client_config

ROOT = Path(__file__).parents[2]
_counter = itertools.count()
ADMIN_KEY = "admin-key-for-tests"


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> Iterator[Server]:
    with start_broker(logdir=tmp_path_factory.mktemp("broker")) as server:
        yield server


CLUSTER = os.environ.get("FENCEX_TEST_REDIS", "").lower() == "cluster"  # the suite on a 3-master Redis Cluster


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[Server | RedisCluster]:
    """One redis-server, or with ``FENCEX_TEST_REDIS=cluster`` a Redis Cluster of three masters."""
    if CLUSTER:
        with start_redis_cluster(3, logdir=tmp_path_factory.mktemp("redis")) as cluster:
            yield cluster
    else:
        with start_redis(logdir=tmp_path_factory.mktemp("redis")) as server:
            yield server


@pytest.fixture(scope="session")
def redis_url(redis_server) -> str:
    """What ``FENCEX_REDIS_URL`` takes for the suite's Redis (``redis+cluster://...`` for a cluster)."""
    return redis_server.url if isinstance(redis_server, RedisCluster) else f"redis://{redis_server.address}/0"


@dataclass
class Env:
    """One test's namespace on the shared servers."""

    bootstrap: str
    redis_url: str
    name: str
    tmp: Path
    workers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def locations(self) -> str:
        return f"{self.name}.locations"

    @property
    def events(self) -> str:
        return f"{self.name}.fence-events"

    @property
    def dlq(self) -> str:
        return f"{self.name}.locations.dlq"

    @property
    def prefix(self) -> str:
        return f"fx{self.name}"

    def env(self, **extra: str) -> dict[str, str]:
        return dict(
            os.environ,
            FENCEX_KAFKA_BOOTSTRAP=self.bootstrap,
            FENCEX_REDIS_URL=self.redis_url,
            FENCEX_KEY_PREFIX=self.prefix,
            FENCEX_LOCATIONS_TOPIC=self.locations,
            FENCEX_EVENTS_TOPIC=self.events,
            FENCEX_DLQ_TOPIC=self.dlq,
            FENCEX_GROUP_ID=f"{self.name}-processor",
            FENCEX_HISTORY_GROUP=f"{self.name}-history",
            FENCEX_SESSION_TIMEOUT_S="6",
            FENCEX_HEARTBEAT_S="1",
            **extra,
        )

    def start_worker(self, **extra: str) -> tuple[subprocess.Popen, int]:
        port = free_port()
        n = len(self.workers)
        with (self.tmp / f"worker-{n}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.processor"],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env(FENCEX_WEB_PORT=str(port), FENCEX_DATADIR=str(self.tmp / f"data-{n}"), **extra),
            )
        self.workers.append(proc)
        return proc, port

    def start_api(self, redis_url: str | None = None, **extra: str) -> tuple[subprocess.Popen, str]:
        """The API under granian, as it runs in production, on a free port."""
        port = free_port()
        n = len(self.workers)
        env = self.env(FENCEX_PORT=str(port), FENCEX_HOST="127.0.0.1", FENCEX_ADMIN_KEY=ADMIN_KEY, **extra)
        if redis_url:
            env["FENCEX_REDIS_URL"] = redis_url
        with (self.tmp / f"api-{n}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.api"],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.workers.append(proc)
        return proc, f"http://127.0.0.1:{port}"

    def producer(self) -> Producer:
        return Producer(client_config(self.bootstrap, **{"linger.ms": 5}))

    def produce(self, values: list[tuple[str, bytes]], topic: str | None = None) -> None:
        p = self.producer()
        for key, value in values:
            p.produce(topic or self.locations, value, key=key)
        assert p.flush(10) == 0

    def consumer(self, topic: str) -> Consumer:
        c = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"{self.name}-reader-{next(_counter)}",
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
                "enable.auto.commit": False,
            }
        )
        c.subscribe([topic])
        return c

    def log(self, n: int = 0) -> str:
        return (self.tmp / f"worker-{n}.log").read_text(errors="replace")


def read(consumer: Consumer, until, timeout: float = 30.0) -> list:
    """Poll records until ``until(records)`` is true or ``timeout`` passes."""
    got: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(got):
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            got.append(msg)
    return got


def events_of(msgs: list) -> list[dict]:
    return [orjson.loads(m.value()) for m in msgs]


@pytest.fixture
def live(broker, redis_url, tmp_path) -> Iterator[Env]:
    name = f"t{uuid.uuid4().hex[:8]}"
    env = Env(broker.address, redis_url, name, tmp_path)
    ensure_topics(env.bootstrap, {env.locations: 4, env.events: 4, env.dlq: 1})
    yield env
    for w in env.workers:
        # the whole process group: granian's worker processes too, not just their parent
        try:
            os.killpg(w.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        w.wait(10)


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the worker exited with {proc.returncode}"
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0)
            if r.status_code == 200:
                snap = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1.0).text
                if "fencex_partitions_assigned 0.0" not in snap:
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the worker did not become ready")


def wait_api(base: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the API exited with {proc.returncode}"
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("the API did not become ready")


@contextmanager
def two_farms(live: Env, **env: str) -> Iterator:
    """An API started on ``live`` (with ``env``) and a client for it, with two farms, ``farm-a`` and
    ``farm-b``: their auth headers are ``client.a`` and ``client.b``; ``client.live`` is ``live``."""
    import httpx

    proc, base = live.start_api(**env)
    wait_api(base, proc)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=base, timeout=10) as client:
        for farm in ("a", "b"):
            key = client.post("/admin/tenants", json={"id": f"farm-{farm}"}, headers=admin).json()["api_key"]
            setattr(client, farm, {"Authorization": f"Bearer {key}"})
        client.live = live  # type: ignore[attr-defined]
        yield client


def metric(port: int, name: str) -> float:
    import httpx

    total = 0.0
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2.0).text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run(coro):
    return asyncio.run(coro)

"""The scale command's moving parts (``bench.scale``): a real worker process and what is watched of it
from outside (its RSS from ``/proc``, its metrics page while it starts, the committed offsets of its
consumer group, the events it publishes), and the backlogs of fixes it drains."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import Consumer, TopicPartition

from bench.push import bulk_producer
from bench.scaleload import Country, collar_id
from devtools.localserver import free_port

ROOT = Path(__file__).parents[1]
LOADED = re.compile(r"loaded (\d+) fences and \d+ device registrations")  # fencex.stream.loop's log lines
HELD = re.compile(r"partitions \[([0-9, ]*)\]: (\d+) devices loaded")
STEP_MS = 1_000  # between a collar's fixes in a backlog


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rss_mb(pid: int) -> tuple[float, float]:
    """(resident now, peak resident) of a process, in MB, from ``/proc/<pid>/status``."""
    now = peak = 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                now = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    return now, peak


class Worker:
    """``python -m services.processor`` on one topic, its own consumer group, its log under ``logs``."""

    def __init__(self, bootstrap: str, redis_url: str, topic: str, partitions: int, logs: Path, tag: str) -> None:
        self.port = free_port()
        self.group = f"scale-{tag}-{os.getpid()}"
        self.topic, self.partitions = topic, partitions
        env = dict(
            os.environ,
            FENCEX_KAFKA_BOOTSTRAP=bootstrap,
            FENCEX_REDIS_URL=redis_url,
            FENCEX_LOCATIONS_TOPIC=topic,
            FENCEX_PARTITIONS=str(partitions),
            FENCEX_GROUP_ID=self.group,
            FENCEX_HISTORY_GROUP=f"scale-h-{tag}-{os.getpid()}",
            FENCEX_WEB_PORT=str(self.port),
            FENCEX_SESSION_TIMEOUT_S="30",
            FENCEX_DATADIR=f"/tmp/fencex-scale-{tag}-{os.getpid()}",
            FENCEX_LOG_LEVEL=os.environ.get("BENCH_WORKER_LOG", "info"),
        )
        self.log = logs / f"worker-{tag}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.processor"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.started = time.monotonic()
        self.samples: list[tuple[float, float]] = []  # (seconds since start, RSS MB)

    def rss(self) -> tuple[float, float]:
        got = rss_mb(self.proc.pid)
        self.samples.append((time.monotonic() - self.started, got[0]))
        return got

    def wait_ready(self, fences: int, devices: int, timeout: float) -> dict[str, float]:
        """Until its log says its index holds ``fences`` and every partition's states are loaded (``devices``
        in all), with its RSS read from ``/proc`` every half second: the seconds each took and the RSS then.
        Its log, not its metrics page: a scrape walks every state it holds, which at millions of devices
        blocks its loop for seconds (polled twice a second, long enough to lose its partitions)."""
        marks: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        last_say = 0.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"the worker exited with {self.proc.returncode}; see {self.log}")
            rss, _ = self.rss()
            t = time.monotonic() - self.started
            text = self.log.read_text(errors="replace")
            got = LOADED.search(text)
            if "index_s" not in marks and got and int(got[1]) >= fences:
                marks["index_s"], marks["index_rss_mb"] = t, rss
            parts = devs = 0
            for found in HELD.finditer(text):  # "partitions [0, 1, ...]: N devices loaded", each assignment
                parts, devs = len(found[1].split(",")), int(found[2])
            if "index_s" in marks and parts >= self.partitions and devs >= devices:
                marks["ready_s"], marks["ready_rss_mb"] = t, rss
                return marks
            if t - last_say >= 10:
                last_say = t
                say(f"worker: {t:.0f} s, {'index built' if 'index_s' in marks else 'loading fences'}, {rss:,.0f} MB")
            time.sleep(0.5)
        sys.exit(f"the worker was not ready in {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Backlog:
    """Packed records of fixes of collars drawn at random, each collar's fixes a second apart and newer
    than its saved state (``first_ms``) and its fixes before (kept across backlogs)."""

    def __init__(self, country: Country, first_ms: int, seed: int) -> None:
        self.country, self.first_ms = country, first_ms
        self.rng = np.random.default_rng(seed)
        self.last: dict[int, int] = {}

    def produce(self, bootstrap: str, topic: str, collars: int, fixes: int, pack: int) -> int:
        """``fixes`` fixes, ``pack`` to a record, from collars ``0 .. collars - 1``; the records made."""
        p = bulk_producer(bootstrap)
        c = self.country
        records = 0
        for n in self.rng.integers(0, collars, max(1, fixes // pack)).tolist():
            farm = n * c.farms // c.devices
            while n not in c.collars(farm):
                farm += 1 if n >= c.collars(farm).stop else -1
            _, lon, lat = c.home(farm, n)
            ts = self.last.get(n, self.first_ms)
            d = collar_id(n)
            value = [{"device_id": d, "ts": ts + STEP_MS * (k + 1), "lon": lon, "lat": lat} for k in range(pack)]
            self.last[n] = ts + STEP_MS * pack
            while True:
                try:
                    p.produce(topic, orjson.dumps(value), key=d)
                    break
                except BufferError:
                    p.poll(0.05)
            records += 1
            if records % 10_000 == 0:
                p.poll(0)
        p.flush(120)
        return records


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> Callable[[], int]:
    """Records the group has committed on the topic, read from the broker (the worker is not asked)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    tps = [TopicPartition(topic, p) for p in range(partitions)]

    def read() -> int:
        return sum(max(tp.offset, 0) for tp in c.committed(tps, timeout=10))

    return read


def drain_rate(
    read: Callable[[], int], records: int, pack: int, timeout: float, before: int = 0, produced: float | None = None
) -> tuple[float, float]:
    """Fixes per second over the steady part of a drain of ``records`` more than the ``before`` committed
    (from 5 % of them committed to all), and the seconds it took in all. A drain too short to sample
    twice (a tiny run) is timed whole, from ``produced`` (when its producing began)."""
    start = time.monotonic()
    samples: list[tuple[float, int]] = []
    while time.monotonic() - start < timeout:
        n = read() - before
        samples.append((time.monotonic(), n))
        if n >= records:
            break
        time.sleep(0.1)
    else:
        sys.exit(f"the drain did not finish in {timeout:.0f} s ({samples[-1][1]:,} of {records:,} records)")
    t0 = next(((t, n) for t, n in samples if n >= 0.05 * records), samples[0])
    t1 = samples[-1]
    if t1[0] - t0[0] < 0.5:
        t0 = (produced if produced is not None else start, 0)
    return (t1[1] - t0[1]) * pack / max(t1[0] - t0[0], 1e-9), t1[0] - start


def events_reader(bootstrap: str, topic: str = "fence-events") -> Consumer:
    """A consumer of the events topic from its start, assigned before it returns."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"scale-events-{time.time()}",
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 5,
        }
    )
    c.subscribe([topic])
    deadline = time.monotonic() + 60
    while not c.assignment() and time.monotonic() < deadline:
        c.poll(0.1)
    return c


def count_events(c: Consumer, quiet: float = 3.0) -> int:
    """The events there are now (read until none comes for ``quiet`` seconds)."""
    n = 0
    while got := c.consume(1000, quiet):
        n += sum(1 for m in got if not m.error())
    return n


def first_event(c: Consumer, match: Callable[[dict[str, object]], bool], timeout: float) -> float | None:
    """The time (monotonic) the first event ``match`` accepts was read; None if none came in ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in c.consume(1000, 0.05):
            value = m.value()
            if not m.error() and value is not None and match(orjson.loads(value)):
                return time.monotonic()
    return None

"""Push-path benchmark (./dev bench): end to end through the broker, one worker process.

Workload, from a seed: 10,000 pasture fences in 100 farms, 20,000 collars.
1. packed: a backlog of fixes packed --pack to a record; one worker drains it.
2. single: a backlog with one fix per record; one worker drains it.
3. latency: fixes produced live, one per record, at each of --latency-rates; for
   every event, the time from the fix's timestamp (taken when it was produced) to
   the event being read back from fence-events (an upper bound of fix -> published).
Prints the figures, writes out/bench/push.json and out/bench/push.png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import orjson
from confluent_kafka import Consumer, Producer

from devtools.localserver import free_port, start_broker, start_redis
from fencex.kafka.admin import ensure_topics
from fencex.kafka.producer import client_config
from fencex.store.redis import RedisStore
from services.simulator.herd import Herd, pastures
from services.simulator.herd import records as herd_records

ROOT = Path(__file__).parents[1]


STEP_S = 5.0  # seconds between a collar's backlog fixes: the simulator's walk at a cow's pace


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def scrape(port: int) -> str:
    """A worker's /metrics page ("" if it does not answer)."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return ""


def value(text: str, name: str) -> float:
    """The sum over a metric's series in a scraped page: "name value" or "name{labels} value"."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + " ") or (line.startswith(name + "{") and "{" not in name)
    )


def metric(port: int, name: str) -> float:
    return value(scrape(port), name)


# seconds between a drain's samples: 5 scrapes a second (it was 20, two a sample every 0.1 s: the worker's
# /metrics page and its gauges took 7.6 % of its time in a py-spy profile of bench.push)
DRAIN_SAMPLE_S = 0.2

# A producer for backlogs and loads: large batches, lz4, a deep queue (the benchmarks' and the scale command's)
BULK = {
    "linger.ms": 20,
    "compression.type": "lz4",
    "batch.num.messages": 10000,
    "queue.buffering.max.messages": 2_000_000,
    "queue.buffering.max.kbytes": 2_097_152,
    "message.max.bytes": 10_000_000,
}


def bulk_producer(bootstrap: str, **extra: object) -> Producer:
    return Producer(client_config(bootstrap, **{**BULK, **extra}))


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.broker = start_broker(logdir=self.out / "logs")
        self.redis = start_redis(logdir=self.out / "logs")
        self.bootstrap = self.broker.address
        self.redis_url = f"redis://{self.redis.address}/0"
        self.fences = pastures(args.fences, args.seed, dwell_s=600)
        self.herd = Herd(args.devices, self.fences, args.seed)
        self.step = 0
        self.workers: list[subprocess.Popen] = []
        # every device's last fix time: each new fix is strictly newer, whatever phase made the last
        self.last_ts = np.zeros(len(self.herd.ids), dtype=np.int64)
        # far enough back that the last backlog's fixes are not ahead of the clock (about 10,020 steps)
        self.origin_ms = int(time.time() * 1000) - int(11_000 * args.step_s * 1000)

    def bases(self, idx: np.ndarray, wanted_ms: int | np.ndarray, pack: int, step_ms: int) -> np.ndarray:
        """First fix time per device: ``wanted_ms`` unless that is not newer than its last fix."""
        base = np.maximum(wanted_ms, self.last_ts[idx] + 1)
        self.last_ts[idx] = base + (pack - 1) * step_ms
        return base

    def close(self) -> None:
        for w in self.workers:
            if w.poll() is None:
                w.kill()
                w.wait()
        self.redis.stop()
        self.broker.stop()

    async def seed(self, prefix: str = "fx") -> None:
        store = RedisStore(self.redis_url, prefix)
        await store.connect()
        for start in range(0, len(self.fences), 2000):
            await store.put_fences(self.fences[start : start + 2000])
        await store.register_devices(self.herd.tenants())
        await store.close()

    def producer(self) -> Producer:
        return bulk_producer(self.bootstrap)

    def backlog(self, topic: str, total: int, pack: int) -> int:
        """``total`` fixes, ``pack`` consecutive fixes of one collar to a record, time-lapsed a second a step."""
        p = self.producer()
        sent = records = 0
        n = len(self.herd.ids)
        block = max(1, min(n, 20_000 // pack))
        cursor = 0
        while sent < total:
            k = min(block, max(1, (total - sent) // pack))
            idx = np.arange(cursor, cursor + k) % n
            cursor = (cursor + k) % n
            step_ms = int(self.args.step_s * 1000)  # time-lapse: a collar's fixes this far apart
            base = self.bases(idx, self.origin_ms + self.step * step_ms, pack, step_ms)
            self.step += pack
            for key, fixes in herd_records(self.herd, idx, pack, base, step_ms):
                value = orjson.dumps(fixes if pack > 1 else fixes[0])
                while True:
                    try:
                        p.produce(topic, value, key=key)
                        break
                    except BufferError:
                        p.poll(0.05)
                records += 1
                sent += len(fixes)
            p.poll(0)
        p.flush(60)
        return records

    def start_worker(
        self, topic: str, tag: str, events: str = "fence-events", group: str | None = None, prefix: str = "fx"
    ) -> int:
        port = free_port()
        env = dict(
            os.environ,
            FENCEX_KEY_PREFIX=prefix,
            FENCEX_KAFKA_BOOTSTRAP=self.bootstrap,
            FENCEX_REDIS_URL=self.redis_url,
            FENCEX_LOCATIONS_TOPIC=topic,
            FENCEX_EVENTS_TOPIC=events,
            FENCEX_GROUP_ID=group or f"bench-{tag}",
            FENCEX_HISTORY_GROUP=f"bench-h-{tag}",
            FENCEX_WEB_PORT=str(port),
            FENCEX_SESSION_TIMEOUT_S="6",
            FENCEX_DATADIR=f"/tmp/fencex-bench-{tag}",
            FENCEX_LOG_LEVEL=os.environ.get("BENCH_WORKER_LOG", "warn"),
        )
        with (self.out / "logs" / f"worker-{tag}.log").open("wb") as log:
            self.workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "services.processor"],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        return port

    def time_drain(self, ports: list[int], total: int, name: str) -> tuple[float, list[tuple[float, float]]]:
        """Wait until the workers on ``ports`` have consumed ``total`` fixes; return the rate of fixes
        applied (not dropped as stale or bad) over the steady part, from the first sample past 5 %
        to the last, and the (time, fixes applied) samples."""
        samples: list[tuple[float, float]] = []
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            at = time.monotonic()
            pages = [scrape(p) for p in ports]  # one scrape a worker a sample: each costs the worker its gauges
            done = sum(value(page, "fencex_fixes_consumed_total") for page in pages)
            if done:
                samples.append((at, sum(value(page, "fencex_fixes_processed_total") for page in pages)))
            if done >= total:
                break
            if len(samples) % 10 == 1:
                say(f"{name}: {done:,.0f} / {total:,} fixes processed")
            # until the first fix is consumed, often (the drain's start is its first sample); then every 0.2 s
            time.sleep(DRAIN_SAMPLE_S if done else 0.02)
        if not samples:
            sys.exit(f"{name}: the workers consumed nothing in 600 s; see {self.out / 'logs'}")
        t0 = next(((ts, n) for ts, n in samples if n >= 0.05 * total), samples[0])
        t1 = samples[-1]
        if t1[0] - t0[0] < 0.5:  # drained within a few samples of the 5 % mark: time it from the first
            t0 = samples[0]
        if t1 is t0:  # drained before a second sample: no rate to time
            say(f"{name}: warning, drained within one sample; no rate")
        if t1[1] - t0[1] < 0.5 * total:
            say(f"{name}: warning, the drain was too short to time well; use more fixes")
        return (t1[1] - t0[1]) / max(t1[0] - t0[0], 1e-9), samples

    def stop_workers(self) -> None:
        for w in self.workers:
            w.terminate()
        for w in self.workers:
            try:
                w.wait(15)
            except subprocess.TimeoutExpired:
                w.kill()
        self.workers.clear()

    def drain(self, name: str, total: int, pack: int) -> dict:
        topic = f"locations-{name}"
        ensure_topics(self.bootstrap, {topic: 12})
        say(f"{name}: producing a backlog of {total:,} fixes, {pack} per record")
        t = time.monotonic()
        records = self.backlog(topic, total, pack)
        say(f"{name}: {records:,} records produced in {time.monotonic() - t:.1f} s; starting one worker")
        port = self.start_worker(topic, name)
        rate, samples = self.time_drain([port], total, name)
        events = sum(metric(port, f'fencex_events_published_total{{type="{t}"}}') for t in ("enter", "exit", "dwell"))
        inside = metric(port, "fencex_fence_intersections_total")
        stale = metric(port, 'fencex_fixes_dropped_total{reason="out_of_order"}')
        tests = metric(port, "fencex_point_tests_total")
        self.stop_workers()
        result = {
            "fixes": total,
            "records": records,
            "pack": pack,
            "fixes_per_s": rate,
            "records_per_s": rate / pack,
            "events": events,
            "events_per_s": events / max(samples[-1][0] - samples[0][0], 1e-9),
            "intersections_per_s": rate * inside / max(total, 1),
            "point_tests": tests,
            "stale": stale,
            "timeline": [(ts - samples[0][0], n) for ts, n in samples],
        }
        say(f"{name}: {rate:,.0f} fixes/s ({rate / pack:,.0f} records/s), {events:,.0f} events")
        return result

    def latency(self, rate: float, seconds: float, warmup: float = 5.0) -> dict:
        tag = f"latency-{int(rate)}"
        topic, events_topic = f"locations-{tag}", f"fence-events-{tag}"
        ensure_topics(self.bootstrap, {topic: 12, events_topic: 12})
        port = self.start_worker(topic, tag, events_topic)
        deadline = time.monotonic() + 90
        while metric(port, "fencex_partitions_assigned") < 12 and time.monotonic() < deadline:
            time.sleep(0.2)
        # its own events topic, read from the start: the local broker's "latest" offset is unreliable
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"bench-lat-{time.time()}",
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 5,
                "session.timeout.ms": 6000,
            }
        )
        consumer.subscribe([events_topic])
        while not consumer.assignment():
            consumer.poll(0.1)
        lat: list[float] = []
        stop = threading.Event()
        measure_from = time.time() + warmup  # events of fixes made in the warm-up are not counted

        def read() -> None:
            while not stop.is_set():
                for m in consumer.consume(1000, 0.1):
                    if m.error():
                        continue
                    e = orjson.loads(m.value())
                    ts = datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()
                    if ts >= measure_from:
                        lat.append(time.time() - ts)

        reader = threading.Thread(target=read)
        reader.start()
        say(f"latency: producing {rate:,.0f} fixes/s, one per record, for {warmup:.0f} s warm-up + {seconds:.0f} s")
        p = self.producer()
        sent = 0
        n = len(self.herd.ids)
        started = time.monotonic()
        cursor = 0
        while time.monotonic() - started < seconds + warmup:
            due = int((time.monotonic() - started) * rate) - sent
            if due <= 0:
                time.sleep(0.002)
                continue
            idx = np.arange(cursor, cursor + due) % n
            cursor = (cursor + due) % n
            lon, lat_ = self.herd.step(idx)
            ts = int(time.time() * 1000)
            for i, x, y in zip(idx.tolist(), lon.tolist(), lat_.tolist()):
                d = self.herd.ids[i]
                p.produce(topic, orjson.dumps({"device_id": d, "ts": ts, "lon": x, "lat": y}), key=d)
            p.poll(0)
            sent += due
        p.flush(30)
        achieved = sent / (time.monotonic() - started)
        time.sleep(2.0)
        stop.set()
        reader.join()
        consumer.close()
        lag_done = metric(port, "fencex_fixes_consumed_total")
        self.stop_workers()
        arr = np.asarray(lat) * 1000.0
        result = {
            "target_fixes_per_s": rate,
            "fixes_per_s": achieved,
            "fixes_sent": sent,
            "fixes_processed": lag_done,
            "events": len(arr),
            "p50_ms": float(np.percentile(arr, 50)) if len(arr) else float("nan"),
            "p99_ms": float(np.percentile(arr, 99)) if len(arr) else float("nan"),
            "max_ms": float(arr.max()) if len(arr) else float("nan"),
            "latencies_ms": arr.tolist(),
        }
        say(
            f"latency: {achieved:,.0f} fixes/s sent, {len(arr):,} events, p50 {result['p50_ms']:.1f} ms, "
            f"p99 {result['p99_ms']:.1f} ms"
        )
        return result


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = ["fencex\npacked", "fencex\n1 per record", "Tile38 1.26\n4 clients\n(quoted)", "FenceX thesis\n4 VMs"]
    values = [results["packed"]["fixes_per_s"], results["single"]["fixes_per_s"], 62_000, 15_000]
    bars = a.bar(names, values, color=["#2a7", "#2a7", "#888", "#888"])
    a.bar_label(bars, labels=[f"{v:,.0f}" for v in values])
    a.set_ylabel("fixes per second")
    a.set_title(
        f"Push throughput: one worker process, {results['fences']:,} fences, {results['devices']:,} collars",
        fontsize=10,
    )
    for run in results["latency"]:
        lat = np.sort(np.asarray(run["latencies_ms"]))
        if len(lat):
            b.plot(
                lat,
                np.linspace(0, 1, len(lat)),
                label=f"{run['fixes_per_s']:,.0f} fixes/s: p50 {run['p50_ms']:.0f} ms, p99 {run['p99_ms']:.0f} ms",
            )
    b.axvline(250, color="red", linestyle="--", label="250 ms")
    b.set_xscale("log")
    b.set_xlabel("fix produced -> event read back (ms)")
    b.set_ylabel("fraction of events")
    b.set_title("End-to-end latency, one fix per record", fontsize=10)
    b.legend(fontsize=8)
    fig.suptitle(f"fencex push benchmark, {results['date']}, {results['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(prog="./dev bench", description=__doc__.splitlines()[0])
    ap.add_argument("--fences", type=int, default=10_000)
    ap.add_argument("--devices", type=int, default=20_000)
    ap.add_argument("--packed-fixes", type=int, default=2_000_000)
    ap.add_argument("--single-fixes", type=int, default=400_000)
    ap.add_argument("--pack", type=int, default=100)
    ap.add_argument("--latency-seconds", type=float, default=15.0)
    ap.add_argument(
        "--latency-rates",
        default="5000,10000,20000",
        help="fixes per second, one per record (10,000 is half the 20,000 target)",
    )
    ap.add_argument(
        "--step-s",
        type=float,
        default=STEP_S,
        help="seconds between a collar's fixes in the backlogs (the walk's steps are a cow's at 5 s; "
        "at 1 s, a fifth of them would be faster than the herd rules' 20 m/s and held back as jumps)",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="out/bench")
    args = ap.parse_args()
    bench = Bench(args)
    try:
        say(f"seeding {args.fences:,} fences and {args.devices:,} collars")
        asyncio.run(bench.seed())
        ensure_topics(bench.bootstrap, {"fence-events": 12, "locations.dlq": 1})
        results = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}",
            "fences": args.fences,
            "devices": args.devices,
        }
        results["packed"] = bench.drain("packed", args.packed_fixes, args.pack)
        results["single"] = bench.drain("single", args.single_fixes, 1)
        results["latency"] = [bench.latency(float(r), args.latency_seconds) for r in args.latency_rates.split(",") if r]
    finally:
        bench.close()
    out = Path(args.out)
    (out / "push.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    plot(results, out / "push.png")
    p, s = results["packed"], results["single"]
    print(f"\nfencex push benchmark, {results['date']}, {results['machine']}")
    print(f"  {args.fences:,} fences, {args.devices:,} collars, one worker process")
    print(
        f"  packed ({args.pack}/record): {p['fixes_per_s']:>10,.0f} fixes/s  "
        f"({p['intersections_per_s']:,.0f} fence intersections/s)"
    )
    print(f"  one fix per record:  {s['fixes_per_s']:>10,.0f} fixes/s")
    for lat in results["latency"]:
        print(
            f"  latency at {lat['fixes_per_s']:>7,.0f} fixes/s: "
            f"p50 {lat['p50_ms']:6.1f} ms, p99 {lat['p99_ms']:6.1f} ms"
            f" over {lat['events']:,} events"
        )
    print(f"  wrote {out / 'push.json'} and {out / 'push.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Elasticity, as HarmonicIO showed it (issue 16, item 3): workers follow the stream's pressure.

A load of fixes, one a record as the simulator sends them, steps up well past what one worker
process processes (``high_factor`` times the capacity one worker showed draining a backlog alone,
measured first), stays there ``high_s`` seconds, and steps back down. Worker processes
(``services.processor``, as the evaluation starts them) are started and stopped by the rule KEDA
and the HPA apply to the processor's ScaledObject as configured in deploy/k8s/base/processor.yaml
(bench/keda.py: the rule, with its sources): every ``pollingInterval`` the consumer group's total
lag (the partitions' high watermarks from fetch responses minus the committed offsets: the local
broker answers ListOffsets wrongly) gives desired = ceil(lag / lagThreshold) outside the tolerance,
bounded by min/maxReplicaCount and the partitions, stabilized over the scale-down window and
limited by the scaling policies. A replica is stopped as Kubernetes stops a pod (SIGTERM, SIGKILL
after terminationGracePeriodSeconds), the newest first. As on a Kubernetes node, only as many
replicas run as the node's cores fit at the Deployment's CPU request (1 core: 2 pods on this 2-core
machine); the rest of the replicas the rule sets are Pending, and are removed first when it scales
down. Without that bound the rule's 12 replicas ran on 2 cores: starting them starved the running
ones of CPU, their group sessions expired, and the group rebalanced without end, processing nothing.
This driver is part of the evaluation only; the product's autoscaler is KEDA.

The autoscaler's time constants (polling, stabilization windows, policy periods) are divided by
``time_scale`` (10 in the full run: polling 1.5 s for 15 s, scale-down window 30 s for 300 s, one
pod removed per 6 s for one per 60 s), so that the experiment fits the evaluation's half hour; the
load, the lag threshold, the replica bounds and the grace period are as configured. The figure and
the JSON say so. Worker start-up (a few seconds) is not scaled, so the rule reacts more often per
start-up than in a cluster, and overshoots more.

Every second: the backlog (records), the worker processes running and the replicas set, the fixes
processed per second (from the committed offsets) and the fixes produced per second. The drain
time is from the step up until the backlog is first back under one second of the low load, once
the load is down. The events read back from the events topic are compared with those the pure
pipeline computes from the fixes produced (as bench/evaluate.py computes them): a lost event fails
the run (``ok``); duplicates are counted, per scaling action too (between one action and the next:
a duplicate where it was published, a lost event where its fix was made).

The evaluation's machine has 2 cores: the producer, the broker, Redis and every worker share them,
so a second worker adds less than a worker's capacity and more add none; the rule, and no event
lost through the rebalances it causes, are the point.

``python -m bench.elastic [--tiny]`` writes elastic.json and elastic.png; bench/evaluate.py calls
:func:`run` and :func:`plot`. :func:`run` starts its load in a process of the ``spawn`` kind, so the
program that calls it must guard its entry point (``if __name__ == "__main__":``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from bench import keda
from bench.push import Bench, bulk_producer, metric, say
from devtools.localserver import free_port
from fencex.kafka.admin import ensure_topics

ROOT = Path(__file__).parents[1]
TOPIC, EVENTS, GROUP = "elastic-locations", "elastic-events", "elastic-processor"

FULL = {
    "fences": 10_000,
    "devices": 20_000,
    "pack": 1,  # fixes a record: the simulator's default; KEDA's lag counts records
    "time_scale": 10.0,
    "warm_s": 10.0,  # low load before the step
    "high_s": 20.0,  # the step's length
    "low_rate": 5_000.0,  # fixes/s before and after
    "calibrate_fixes": 400_000,  # one worker drains this backlog first: its capacity (0: none)
    "high_factor": 2.0,  # the step: this many times that capacity ...
    "high_rate": None,  # ... or this many fixes/s (the producer sends what it can)
    "max_s": 200.0,  # the timeline's limit, whatever the workers do (the whole run: about 5 minutes)
    "node_cpus": None,  # the node's cores (None: this machine's); replicas beyond what fits stay Pending
    "tail_s": 3.0,  # kept after the workers are back to the minimum and the backlog drained
}
TINY = {
    **FULL,
    "fences": 500,
    "devices": 1_000,
    "time_scale": 20.0,
    "warm_s": 4.0,
    "high_s": 5.0,  # long enough for a backlog past 1.1 lagThresholds from a slow, shared producer
    "low_rate": 2_000.0,
    "calibrate_fixes": 0,
    "high_rate": 100_000.0,
    "max_s": 120.0,
}


# ------------------------------------------------------------------ the load, in its own process


def _produce(
    bootstrap: str,
    cfg: dict[str, Any],
    t0: float,
    stop: Any,
    sent: Any,
    errors: Any,
    path: str,
) -> None:
    """Produce the herd's fixes at the profile's rate (fix time = now) until ``stop``; keep every
    fix (device index, time, position) and save them to ``path`` (npz) for the expected events."""

    from services.simulator.herd import Herd, pastures
    from services.simulator.herd import records as herd_records

    fences = pastures(cfg["fences"], cfg["seed"], dwell_s=600)
    herd = Herd(cfg["devices"], fences, cfg["seed"])
    n, pack = len(herd.ids), cfg["pack"]
    last = np.zeros(n, dtype=np.int64)

    def failed(err: Any, msg: Any) -> None:
        if err is not None:
            errors.value += 1

    p = bulk_producer(bootstrap, **{"delivery.report.only.error": True})
    chunks: list[tuple[np.ndarray, ...]] = []
    total, cursor, allowance, before = 0, 0, 0.0, time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        t = now - t0
        rate = cfg["high_rate"] if cfg["warm_s"] <= t < cfg["warm_s"] + cfg["high_s"] else cfg["low_rate"]
        # the due fixes, without catching up on what a saturated producer could not send
        allowance = min(allowance + rate * (now - before), rate * 0.2 + pack)
        before = now
        k = min(int(allowance // pack), 2_000)
        if k == 0:
            time.sleep(0.002)
            continue
        idx = np.arange(cursor, cursor + k) % n
        cursor = (cursor + k) % n
        base = np.maximum(int(time.time() * 1000) - (pack - 1), last[idx] + 1)
        last[idx] = base + pack - 1
        batch = herd_records(herd, idx, pack, base, step_ms=1)
        flat = [f for _, fixes in batch for f in fixes]
        chunks.append(
            (
                np.repeat(idx, pack).astype(np.int32),  # one record per animal of idx, its fixes in a row
                np.fromiter((f["ts"] for f in flat), np.int64, len(flat)),
                np.fromiter((f["lon"] for f in flat), np.float64, len(flat)),
                np.fromiter((f["lat"] for f in flat), np.float64, len(flat)),
            )
        )
        for key, fixes in batch:
            while True:
                try:
                    p.produce(cfg["topic"], orjson.dumps(fixes if pack > 1 else fixes[0]), key=key, on_delivery=failed)
                    break
                except BufferError:
                    p.poll(0.05)
        p.poll(0)
        allowance -= k * pack
        total += k * pack
        sent.value = total
    left = p.flush(60)
    errors.value += left
    cols = [np.concatenate([c[i] for c in chunks]) if chunks else np.zeros(0) for i in range(4)]
    np.savez(path, idx=cols[0], ts=cols[1], lon=cols[2], lat=cols[3])


# ------------------------------------------------------------------ the expected events

_JOB: dict[str, Any] = {}


def _expect_part(part: int) -> list[tuple[str, int]]:
    from fencex.fix import Fix
    from fencex.index import FenceIndex
    from fencex.pipeline import default_rules, process

    j = _JOB
    ids, tenants = j["ids"], j["tenants"]
    sel = j["idx"] % j["parts"] == part
    fixes = [
        Fix(ids[i], t, x, y)
        for i, t, x, y in zip(
            j["idx"][sel].tolist(), j["ts"][sel].tolist(), j["lon"][sel].tolist(), j["lat"][sel].tolist()
        )
    ]
    number = {d: i for i, d in enumerate(ids)}
    states = {d: s for d, s in j["states"].items() if number[d] % j["parts"] == part}
    out = process(fixes, FenceIndex(j["fences"]), states, lambda d: tenants.get(d, "default"), default_rules)
    return [(e.event_id, e.ts_ms) for e in out.events]


def expected_events(ev: Bench, fixes: dict[str, np.ndarray], states: dict[str, Any], parts: int = 2) -> dict[str, int]:
    """event_id -> fix time (ms) of every event the pure pipeline makes of ``fixes``, from the
    states the workers started from; devices are independent, so it runs in ``parts`` processes."""
    _JOB.update(
        ids=list(ev.herd.ids),
        tenants=ev.herd.tenants(),
        fences=ev.fences,
        states=states,
        parts=parts,
        **fixes,
    )
    with mp.get_context("fork").Pool(parts) as pool:
        results = pool.map(_expect_part, range(parts))
    _JOB.clear()
    return {eid: ts for part in results for eid, ts in part}


def read_events(bootstrap: str, topic: str, partitions: int, timeout: float) -> list[tuple[str, int]]:
    """(event_id, publish time ms) of every record of ``topic`` (its writers stopped), read from the
    start of each partition to its high watermark (assigned, so no group join to wait for)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"elastic-read-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    tps = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]
    c.assign(tps)
    out: list[tuple[str, int]] = []
    at = dict.fromkeys(range(partitions), 0)  # the next offset to read, per partition
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in c.consume(10_000, 0.5):
            if m.error():
                continue
            out.append((orjson.loads(m.value() or b"{}").get("event_id", ""), m.timestamp()[1]))
            at[m.partition() or 0] = (m.offset() or 0) + 1
        highs = [c.get_watermark_offsets(tp, cached=True)[1] for tp in tps]
        if all(h >= 0 and at[tp.partition] >= h for h, tp in zip(highs, tps)):
            break
    else:
        raise RuntimeError(f"{topic} was not read to its end in {timeout:.0f} s")
    c.close()
    return out


# ------------------------------------------------------------------ the experiment


class Elastic(Bench):  # not bench.evaluate's Evaluation: evaluate imports this module
    def __init__(self, cfg: argparse.Namespace, rules: keda.Rules) -> None:
        super().__init__(cfg)
        self.rules = rules
        self.spec = 0  # the replicas the rule set (the Deployment's spec)
        self.fit = 1  # the replicas the node can run; the others are Pending
        self.running: list[subprocess.Popen[bytes]] = []  # the pods scheduled: started, not asked to stop
        self.stopping: list[subprocess.Popen[bytes]] = []
        self.hwm: dict[int, int] = {}
        self._watch_stop = threading.Event()
        self.started = 0
        self.ports: dict[int, int] = {}  # pid -> metrics port
        self.errors = 0  # records the producer could not deliver
        self.wall0 = time.time()  # the timeline's start, wall clock
        self.datadirs: list[str] = []

    # workers: one group, one history group, as the Deployment's pods
    def spawn(self) -> None:
        tag = f"elastic-{self.started}"
        self.started += 1
        env = dict(
            os.environ,
            FENCEX_KEY_PREFIX="fx",
            FENCEX_KAFKA_BOOTSTRAP=self.bootstrap,
            FENCEX_REDIS_URL=self.redis_url,
            FENCEX_LOCATIONS_TOPIC=TOPIC,
            FENCEX_EVENTS_TOPIC=EVENTS,
            FENCEX_GROUP_ID=GROUP,
            FENCEX_HISTORY_GROUP="elastic-history",
            FENCEX_PARTITIONS=str(self.rules.partitions),
            FENCEX_WEB_PORT=str(port := free_port()),
            FENCEX_SESSION_TIMEOUT_S="6",  # the local broker's joins take half of it
            FENCEX_DATADIR=(datadir := f"/tmp/fencex-{tag}-{os.getpid()}"),
            FENCEX_LOG_LEVEL=os.environ.get("BENCH_WORKER_LOG", "warn"),
        )
        with (self.out / "logs" / f"worker-{tag}.log").open("wb") as log:
            w = subprocess.Popen(
                [sys.executable, "-m", "services.processor"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.workers.append(w)
        self.running.append(w)
        self.ports[w.pid] = port
        self.datadirs.append(datadir)

    def scale(self, replicas: int) -> None:
        """Set the Deployment's replicas: pods start or stop until as many run as fit on the node
        (a Pending pod is removed first, so the running ones go only below what fits)."""
        self.spec = replicas
        while len(self.running) < min(replicas, self.fit):
            self.spawn()
        while len(self.running) > min(replicas, self.fit):
            self.retire()

    def retire(self) -> None:
        """Stop the newest replica as Kubernetes stops a pod: SIGTERM, SIGKILL after the grace period."""
        w = self.running.pop()
        self.stopping.append(w)
        w.send_signal(signal.SIGTERM)

        def reap() -> None:
            try:
                w.wait(self.rules.grace_s)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()

        threading.Thread(target=reap, daemon=True).start()

    async def states(self) -> dict[str, Any]:
        """The device states the workers start from (for the expected events)."""
        from fencex.store.redis import RedisStore

        store = RedisStore(self.redis_url)
        await store.connect()
        try:
            return dict(await store.load_states(list(self.herd.ids)))
        finally:
            await store.close()

    def alive(self) -> int:
        return sum(w.poll() is None for w in self.running + self.stopping)

    # the lag: fetch high watermarks (a reader of the topic) minus the group's committed offsets
    def watch(self) -> threading.Thread:
        def run() -> None:
            c = Consumer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "group.id": f"elastic-watch-{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                    "fetch.wait.max.ms": 100,
                }
            )
            tps = [TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in range(self.rules.partitions)]
            c.assign(tps)
            while not self._watch_stop.is_set():
                c.consume(20_000, 0.1)
                for tp in tps:
                    high = c.get_watermark_offsets(tp, cached=True)[1]
                    if high >= 0:
                        self.hwm[tp.partition] = high
            c.close()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def committed_reader(self) -> Consumer:
        # the workers' group id, never subscribed: it fetches the group's offsets without joining
        return Consumer({"bootstrap.servers": self.bootstrap, "group.id": GROUP, "enable.auto.commit": False})

    def lag(self, reader: Consumer) -> tuple[int, int]:
        """(total lag as KEDA reads it, total committed records)."""
        tps = [TopicPartition(TOPIC, p) for p in range(self.rules.partitions)]
        try:
            got = {tp.partition: tp.offset for tp in reader.committed(tps, timeout=5)}
        except KafkaException:  # the group coordinator is busy (a rebalance): the last reading stands
            return -1, -1
        total = sum(
            keda.partition_lag(self.hwm.get(p, 0), got.get(p), self.rules.earliest)
            for p in range(self.rules.partitions)
        )
        done = sum(max(o, 0) for o in got.values())
        return total, done


def calibrate(ev: Elastic, fixes: int, pack: int) -> float:
    """One worker's capacity (fixes/s): it drains a backlog of ``fixes`` alone, on a topic, group
    and key prefix of its own (bench.push's drain), before the experiment's workers start."""
    topic = "elastic-cal"
    asyncio.run(ev.seed("cal"))
    ensure_topics(ev.bootstrap, {topic: ev.rules.partitions, f"{topic}-events": 12})
    ev.backlog(topic, fixes, pack)
    port = ev.start_worker(topic, topic, f"{topic}-events", group=topic, prefix="cal")
    rate, _ = ev.time_drain([port], fixes, "calibration, one worker")
    ev.stop_workers()
    return rate


def _segments(actions: list[dict[str, Any]], end: float) -> list[tuple[float, float, dict[str, Any] | None]]:
    """[start, end) of the time before the first scaling action and after each (up to the next)."""
    cuts = [a["t"] for a in actions]
    out: list[tuple[float, float, dict[str, Any] | None]] = [(0.0, cuts[0] if cuts else end, None)]
    for i, a in enumerate(actions):
        out.append((a["t"], cuts[i + 1] if i + 1 < len(cuts) else end, a))
    return out


def run(cfg: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """The elasticity experiment; ``cfg``/keyword arguments override :data:`FULL` (or :data:`TINY`
    with ``tiny=True``); ``out``: the directory for logs (default out/eval). Starts and stops its own
    broker and Redis. The result's ``events_lost`` must be 0 (``ok``)."""
    opts = {**(cfg or {}), **kwargs}
    tiny = bool(opts.pop("tiny", False))
    c = {**(TINY if tiny else FULL), "seed": 1, "out": "out/eval", **opts}
    c["topic"] = TOPIC
    rules_conf = keda.load()
    rules = rules_conf.scaled(c["time_scale"])
    ns = argparse.Namespace(fences=c["fences"], devices=c["devices"], seed=c["seed"], out=c["out"], step_s=1.0)
    step = f"{c['high_rate']:,.0f}" if c["high_rate"] else f"{c['high_factor']:g} x one worker's capacity"
    say(
        f"elasticity: {c['fences']:,} fences, {c['devices']:,} collars; load {c['low_rate']:,.0f} -> "
        f"{step} fixes/s for {c['high_s']:.0f} s -> {c['low_rate']:,.0f}; KEDA as configured "
        f"(lagThreshold {rules.lag_threshold:,}, replicas {rules.min_replicas}-{rules.max_replicas}, "
        f"{rules.partitions} partitions), time constants / {rules.time_scale:g}"
    )
    ev = Elastic(ns, rules)
    capacity = None
    fixes_path = Path(ev.out) / "logs" / f"elastic-fixes-{os.getpid()}.npz"
    fixes_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(ev.seed())
        if c["calibrate_fixes"]:
            capacity = calibrate(ev, c["calibrate_fixes"], c["pack"])
            if not c["high_rate"]:
                c["high_rate"] = c["high_factor"] * capacity
            say(f"  one worker alone: {capacity:,.0f} fixes/s; the step offers {c['high_rate']:,.0f} fixes/s")
        ensure_topics(ev.bootstrap, {TOPIC: rules.partitions, EVENTS: 12})
        reader = ev.committed_reader()
        ev.fit = keda.pods_that_fit(c["node_cpus"] or os.cpu_count() or 1, rules)
        ev.scale(rules.min_replicas)
        watcher = ev.watch()
        deadline = time.monotonic() + 120
        while _assigned(ev) < rules.partitions:  # the first worker(s) hold every partition
            if time.monotonic() > deadline or any(w.poll() is not None for w in ev.running):
                raise RuntimeError(f"the first worker did not start; see {ev.out / 'logs'}")
            time.sleep(0.3)
        states = asyncio.run(ev.states())
        timeline, actions = _timeline(ev, c, reader, fixes_path)
        watcher_stop(ev, watcher)
        reader.close()
        say("timeline done: stopping the workers, computing the expected events")
        _stop_all(ev)
        data = np.load(fixes_path)
        fixes = {k: data[k] for k in ("idx", "ts", "lon", "lat")}
        t_exp = time.monotonic()
        expected = expected_events(ev, fixes, states)
        say(f"  {len(fixes['ts']):,} fixes -> {len(expected):,} expected events in {time.monotonic() - t_exp:.0f} s")
        got = read_events(ev.bootstrap, EVENTS, 12, timeout=180)
    finally:
        ev._watch_stop.set()
        ev.close()
        with contextlib.suppress(OSError):
            fixes_path.unlink()
        for d in ev.datadirs:
            shutil.rmtree(d, ignore_errors=True)
    result = _result(
        c, rules_conf, rules, timeline, actions, expected, got, len(fixes["ts"]), ev.wall0, ev.errors, ev.fit
    )
    result["one_worker_fixes_per_s"] = capacity
    say(
        f"elasticity: peak backlog {result['peak_backlog']:,} records, peak workers {result['peak_workers']}, "
        f"step up -> drained (<= {result['drain_threshold_records']:,.0f} records) "
        f"{_secs(result['step_up_to_drained_s'])}; events expected {result['events_expected']:,}, "
        f"lost {result['events_lost']}, duplicated {result['events_duplicated']}"
    )
    return result


def _secs(x: float | None) -> str:
    return "never" if x is None else f"{x:.0f} s"


def watcher_stop(ev: Elastic, t: threading.Thread) -> None:
    ev._watch_stop.set()
    t.join(10)


def _assigned(ev: Elastic) -> float:
    return sum(metric(ev.ports[w.pid], "fencex_partitions_assigned") for w in ev.running)


def _stop_all(ev: Elastic) -> None:
    while ev.running:
        ev.retire()
    for w in ev.stopping:
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.wait(ev.rules.grace_s + 5)
    ev.workers.clear()


def _timeline(
    ev: Elastic, c: dict[str, Any], reader: Consumer, fixes_path: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rules = ev.rules
    hpa = keda.Autoscaler(rules)
    ctx = mp.get_context("spawn")
    stop, sent, errors = ctx.Event(), ctx.Value("q", 0), ctx.Value("q", 0)
    t0 = time.monotonic()
    wall0 = time.time()
    producer = ctx.Process(
        target=_produce, args=(ev.bootstrap, c, t0, stop, sent, errors, str(fixes_path)), daemon=True
    )
    producer.start()
    ev.wall0 = wall0
    try:
        rows: list[dict[str, Any]] = []
        actions: list[dict[str, Any]] = []
        next_poll = t0 + rules.polling_s
        next_row = t0 + 1.0
        last_done, last_done_t, last_sent, last_t = None, t0, 0, t0
        lag, done = 0, 0
        step_end = c["warm_s"] + c["high_s"]
        calm_since = None
        while True:
            now = time.monotonic()
            t = now - t0
            if now >= next_poll:  # KEDA's poll and the HPA's reconciliation
                got_lag, got_done = ev.lag(reader)
                if got_lag >= 0:
                    lag, done = got_lag, got_done
                current = ev.spec
                desired = hpa.decide(t, lag, current)
                if desired != current:
                    ev.scale(desired)
                    running = len(ev.running)
                    actions.append({"t": round(t, 2), "from": current, "to": desired, "lag": lag, "running": running})
                    say(
                        f"  {t:6.1f} s: backlog {lag:,} records -> replicas {current} -> {desired} "
                        f"({running} running, {desired - running} pending)"
                    )
                while next_poll <= time.monotonic():  # a ticker: a late poll is not made up for
                    next_poll += rules.polling_s
            if now >= next_row:
                got_lag, got_done = ev.lag(reader)
                fresh = got_lag >= 0  # else the committed offsets could not be read this time
                if fresh:
                    lag, done = got_lag, got_done
                s = sent.value
                dt = now - last_t
                rows.append(
                    {
                        "t": round(t, 2),
                        "backlog": lag,
                        "workers": ev.alive(),
                        "replicas": ev.spec,
                        "pending": ev.spec - len(ev.running),
                        "fixes_per_s": max(done - last_done, 0) * c["pack"] / (now - last_done_t)
                        if fresh and last_done is not None
                        else None,
                        "produced_per_s": (s - last_sent) / dt,
                        "phase": "high" if c["warm_s"] <= t < step_end else "low",
                    }
                )
                if fresh:
                    last_done, last_done_t = done, now
                last_sent, last_t = s, now
                while next_row <= time.monotonic():
                    next_row += 1.0
                if len(rows) % 10 == 0:
                    r = rows[-1]
                    say(
                        f"  {t:6.1f} s: backlog {r['backlog']:,}, workers {r['workers']}, "
                        f"{r['fixes_per_s'] or 0:,.0f} fixes/s processed, {r['produced_per_s']:,.0f} produced"
                    )
                calm = t > step_end and ev.spec == ev.alive() == rules.min_replicas and lag <= c["low_rate"] / c["pack"]
                calm_since = (calm_since or t) if calm else None
                if (calm_since is not None and t - calm_since >= c["tail_s"]) or t > c["max_s"]:
                    break
            time.sleep(0.05)
    finally:  # the load stops, whatever happened
        stop.set()
        producer.join(120)
        if producer.is_alive():
            producer.kill()
    ev.errors = int(errors.value)
    # the load is off: the workers finish the backlog (every fix produced is processed before they
    # stop, or its events would count as lost)
    deadline = time.monotonic() + 600
    while True:
        got_lag, _ = ev.lag(reader)
        if got_lag == 0:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers left {got_lag:,} records unprocessed for 10 minutes")
        time.sleep(0.5)
    return rows, actions


def _drain(rows: list[dict[str, Any]], down: float, threshold: float) -> float | None:
    """The first time, once the load is back down, that the backlog is at most ``threshold``."""
    return next((r["t"] for r in rows if r["t"] >= down and r["backlog"] <= threshold), None)


def _result(
    c: dict[str, Any],
    rules_conf: keda.Rules,
    rules: keda.Rules,
    rows: list[dict[str, Any]],
    actions: list[dict[str, Any]],
    expected: dict[str, int],
    got: list[tuple[str, int]],
    fixes: int,
    wall0: float,
    errors: int,
    pods_fit: int,
) -> dict[str, Any]:
    up, down = c["warm_s"], c["warm_s"] + c["high_s"]
    threshold = c["low_rate"] / c["pack"]  # one second of the low load, in records
    drained = _drain(rows, down, threshold)
    ids = [e for e, _ in got]
    received = set(ids)
    lost = set(expected) - received
    # an event's first copy is the one counted; each later copy is a duplicate, where it was published
    first: set[str] = set()
    dup_at: list[float] = []
    for eid, ms in sorted(got, key=lambda x: x[1]):
        if eid in first:
            dup_at.append(ms / 1000 - wall0)
        first.add(eid)
    segments = []
    for a, b, action in _segments(actions, float("inf")):  # the last interval runs to the end
        exp_in = [e for e, ts in expected.items() if a <= ts / 1000 - wall0 < b]
        segments.append(
            {
                "from_s": a,
                "to_s": None if b == float("inf") else b,
                "action": action,
                "events_expected": len(exp_in),
                "events_lost": sum(e in lost for e in exp_in),
                "events_duplicated": sum(a <= t < b for t in dup_at),
            }
        )
    high = [r for r in rows if r["phase"] == "high"]
    low = [r for r in rows if r["phase"] == "low" and r["t"] > 1]
    return {
        "ok": not lost,
        "config": {k: v for k, v in c.items() if k not in ("out",)},
        "rules_as_configured": asdict(rules_conf),
        "rules_used": asdict(rules),
        "time_scale": rules.time_scale,
        "source": "deploy/k8s/base/processor.yaml (ScaledObject processor), deploy/k8s/base/kafka.yaml",
        "step_up_s": up,
        "step_down_s": down,
        "drain_threshold_records": threshold,
        "drained_at_s": drained,
        "step_up_to_drained_s": None if drained is None else drained - up,
        "step_down_to_drained_s": None if drained is None else drained - down,
        "peak_backlog": max((r["backlog"] for r in rows), default=0),
        "peak_workers": max((r["workers"] for r in rows), default=0),
        "peak_replicas": max((r["replicas"] for r in rows), default=0),
        "pods_that_fit": pods_fit,
        "final_replicas": rows[-1]["replicas"] if rows else None,
        "peak_fixes_per_s": max((r["fixes_per_s"] or 0.0 for r in rows), default=0.0),
        "one_worker_fixes_per_s": None,  # measured by the calibration, if any
        # the rebalances after the drain (a worker joining or leaving pauses its partitions a while)
        "backlog_after_drained_max": max((r["backlog"] for r in rows if drained and r["t"] > drained), default=0),
        "produced_per_s_high": float(np.mean([r["produced_per_s"] for r in high])) if high else 0.0,
        "produced_per_s_low": float(np.mean([r["produced_per_s"] for r in low])) if low else 0.0,
        "fixes": fixes,
        "producer_errors": errors,
        "events_expected": len(expected),
        "events_received": len(ids),
        "events_lost": len(lost),
        "events_duplicated": len(ids) - len(received),
        "unexpected_events": len(received - set(expected)),
        "actions": actions,
        "segments": segments,
        "timeline": rows,
    }


def markdown(result: dict[str, Any], png: str = "elastic.png") -> str:
    """The report's section on the experiment (bench/evaluate.py's report.md)."""
    r, conf, scale = result["rules_used"], result["rules_as_configured"], result["time_scale"]
    cap = result["one_worker_fixes_per_s"]
    policies = " or ".join(
        f"at most {p['value']}{' pod(s)' if p['kind'] == 'Pods' else ' %'} removed per {p['period_s']:g} s"
        for p in conf["down"]["policies"]
    )
    lines = [
        "## Elasticity: workers follow the backlog (KEDA's rule)",
        "",
        f"The processor's ScaledObject as configured (deploy/k8s/base/processor.yaml): lagThreshold "
        f"{r['lag_threshold']:,} records, {r['min_replicas']} to {r['max_replicas']} replicas, {r['partitions']} "
        f"partitions, polling every {conf['polling_s']:g} s, scale-down after a {conf['down']['window_s']:g} s "
        f"stabilization window, {policies}. "
        f"Here every time constant is divided by {scale:g} (polling {r['polling_s']:g} s, window "
        f"{r['down']['window_s']:g} s) so that the run fits the evaluation; the lag threshold and bounds are "
        "not changed. Worker processes are started and stopped by that rule (bench/keda.py), not by a product "
        "component.",
        "",
        f"Load: {result['config']['low_rate']:,.0f} fixes/s (one a record), stepped up to "
        f"{result['config']['high_rate']:,.0f} offered ({result['produced_per_s_high']:,.0f} produced) for "
        f"{result['config']['high_s']:g} s"
        + (
            f", {result['config']['high_rate'] / cap:.1f} times one worker's capacity alone ({cap:,.0f} fixes/s)"
            if cap
            else ""
        )
        + ", then back down. The machine's 2 cores run the load generator, the broker, Redis and every worker.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| peak backlog | {result['peak_backlog']:,} records |",
        f"| peak replicas set by the rule | {result['peak_replicas']} ({result['final_replicas']} at the end"
        + ("" if result["final_replicas"] == r["min_replicas"] else ", not back to the minimum within the run")
        + ") |",
        f"| peak worker processes running | {result['peak_workers']} (the node fits {result['pods_that_fit']}) |",
        f"| step up to backlog under {result['drain_threshold_records']:,.0f} records (after the step down) | "
        f"{_secs(result['step_up_to_drained_s'])} ({_secs(result['step_down_to_drained_s'])} after the step down) |",
        f"| events expected / received | {result['events_expected']:,} / {result['events_received']:,} |",
        f"| events lost | **{result['events_lost']}** |",
        f"| events duplicated | {result['events_duplicated']} |",
        "",
        "| scaling action at (s) | replicas | backlog then | events expected until the next | lost | duplicated |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for seg in result["segments"]:
        a = seg["action"]
        what = ["start", "", ""] if a is None else [f"{a['t']:.1f}", f"{a['from']} -> {a['to']}", f"{a['lag']:,}"]
        lines.append(
            f"| {' | '.join(what)} | {seg['events_expected']:,} | {seg['events_lost']} | {seg['events_duplicated']} |"
        )
    lines += ["", f"![elasticity]({png})", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.elastic", description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a small, quick run (the test suite's)")
    ap.add_argument("--out", default="out/eval")
    ap.add_argument("--time-scale", type=float, help="divide the autoscaler's time constants by this")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fences", type=int)
    ap.add_argument("--devices", type=int)
    ap.add_argument("--high-s", type=float, help="the step's length (s)")
    ap.add_argument("--calibrate-fixes", type=int, help="the backlog one worker drains first (0: none)")
    a = ap.parse_args()
    kw: dict[str, Any] = {"tiny": a.tiny, "out": a.out, "seed": a.seed}
    for key in ("time_scale", "fences", "devices", "high_s", "calibrate_fixes"):
        if getattr(a, key) is not None:
            kw[key] = getattr(a, key)
    result = run(**kw)
    out = Path(a.out)
    (out / "elastic.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    for p in plot(result, out):
        say(f"wrote {p}")
    say(f"wrote {out / 'elastic.json'}")
    return 0 if result["ok"] else 1


def plot(result: dict[str, Any], out_dir: Path | str) -> list[Path]:
    """One figure like HarmonicIO's Figure 7: backlog, workers and throughput against time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, r, conf = result["timeline"], result["rules_used"], result["rules_as_configured"]
    t = [x["t"] for x in rows]
    fig, (a, b, c) = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True, height_ratios=[3, 2, 3])
    for ax in (a, b, c):
        ax.axvspan(
            result["step_up_s"], result["step_down_s"], color="#fbe3c8", label="load stepped up" if ax is a else None
        )
        for act in result["actions"]:
            ax.axvline(act["t"], color="#999", linewidth=0.6, linestyle=":")
    a.plot(t, [x["backlog"] for x in rows], color="tab:red", label="backlog (records behind the committed offsets)")
    a.axhline(r["lag_threshold"], color="tab:red", linestyle="--", linewidth=0.8, label="lagThreshold")
    a.set_ylabel("records")
    a.legend(loc="upper right", fontsize=8)
    b.step(t, [x["workers"] for x in rows], where="post", color="tab:blue", label="worker processes running")
    b.step(
        t,
        [x["replicas"] for x in rows],
        where="post",
        color="tab:blue",
        linestyle="--",
        linewidth=0.8,
        label="replicas set by the rule (KEDA + HPA)",
    )
    b.axhline(
        result["pods_that_fit"],
        color="#777",
        linestyle=":",
        linewidth=0.8,
        label=f"pods the node fits ({r['cpu_request']:g} CPU requested each); more stay Pending",
    )
    b.set_ylabel("workers")
    b.set_ylim(0, max(result["peak_replicas"], result["peak_workers"], 1) + 1)
    b.legend(loc="upper right", fontsize=8)
    # the workers commit every few seconds under load: a 3 s mean reads better than the raw seconds
    done = np.array([np.nan if x["fixes_per_s"] is None else x["fixes_per_s"] for x in rows], dtype=float)
    mean3 = [
        float(np.nanmean(done[max(0, i - 2) : i + 1])) if np.isfinite(done[max(0, i - 2) : i + 1]).any() else np.nan
        for i in range(len(done))
    ]
    c.plot(t, mean3, color="tab:green", label="fixes processed per second (committed offsets, 3 s mean)")
    c.plot(t, [x["produced_per_s"] for x in rows], color="#555", linewidth=0.8, label="fixes produced per second")
    c.set_ylabel("fixes per second")
    c.set_xlabel("seconds")
    c.legend(loc="upper right", fontsize=8)
    scale = result["time_scale"]
    drained = result["step_up_to_drained_s"]
    a.set_title(
        f"Elasticity: KEDA's rule as configured (lagThreshold {r['lag_threshold']:,}, replicas "
        f"{r['min_replicas']}-{r['max_replicas']}); time constants / {scale:g}: polling {r['polling_s']:g} s "
        f"({conf['polling_s']:g}), scale-down window {r['down']['window_s']:g} s ({conf['down']['window_s']:g})\n"
        f"step up -> backlog under {result['drain_threshold_records']:,.0f} records: "
        f"{'never' if drained is None else f'{drained:.0f} s'}; events lost {result['events_lost']}, "
        f"duplicated {result['events_duplicated']} of {result['events_expected']:,}; one machine, 2 cores",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "elastic.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


if __name__ == "__main__":
    sys.exit(main())

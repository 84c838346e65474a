"""Fuzzing the push path: generated records, good and bad, through a real broker to a real worker.

The generator is structure-aware: valid fixes and packed tracks, then mutated field by field
(a device id of the wrong type, a timestamp in microseconds, a latitude of 91, ...), plus whole
records that are not fixes at all (random bytes, truncated or deeply nested JSON, an empty list,
a 0.9 MB pack of bad elements). Every record is labelled by the generator itself, from the rules
of the fix format (README, issue 9), not by fencex's parser: which of its fixes are good, and
whether it is bad (then it must reach the dead-letter topic once).

Invariants checked after a run (``verify``):
- the worker never exits;
- the group's committed offsets reach the end of every partition;
- every bad record appears once in the dead-letter topic, with a reason from the closed set;
  no good record does;
- the events published, retractions applied, equal what the pure pipeline predicts from the good
  fixes of each collar in time order (late fixes are merged as if they had come in order, issue 12;
  of two fixes of a collar at one time, the first to arrive counts).

``python -m devtools.fuzz_push --records 200000`` runs it longer on its own servers
(``./dev fuzz-push``); the test suite runs a seeded 10,000-record run.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from fencex.detector import DeviceState
from fencex.fence import Fence
from fencex.fix import Fix
from fencex.index import FenceIndex
from fencex.pipeline import default_rules, process
from services.simulator.herd import CELL_LAT, CELL_LON, pastures

# The dead-letter reasons a worker may give (the metric's closed label set).
REASONS = {"not_json", "bad_fix", "bad_device_id", "bad_ts", "bad_lon", "bad_lat", "processing_error"}
EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: older timestamps are refused


@dataclass
class Case:
    """One record to produce, labelled by the generator."""

    key: bytes | None
    value: bytes
    good: list[Fix] = field(default_factory=list)  # the fixes the worker must apply, in order
    bad: bool = False  # the record must reach the dead-letter topic (once)
    kind: str = ""  # what the generator did, for the report


def _fix_obj(f: Fix) -> dict[str, Any]:
    return {"device_id": f.device_id, "ts": f.ts_ms, "lon": f.lon, "lat": f.lat}


class Generator:
    """Seeded records for a herd of ``devices`` collars over ``fences`` (their farms' pastures)."""

    def __init__(self, seed: int, fences: list[Fence], devices: int, now_ms: int) -> None:
        self.rng = random.Random(seed)
        self.fences = fences
        self.now_ms = now_ms
        # each collar grazes around one pasture of a farm, and is registered to that farm
        self.devices = [f"fz-{i:05d}" for i in range(devices)]
        self.home = {d: fences[i % len(fences)] for i, d in enumerate(self.devices)}
        self.clock = {d: now_ms - 3_600_000 + self.rng.randrange(60_000) for d in self.devices}

    def tenants(self) -> dict[str, str]:
        return {d: f.tenant for d, f in self.home.items()}

    def _position(self, device: str) -> tuple[float, float]:
        ring = self.home[device].geometry["coordinates"][0]
        xs = [p[0] for p in ring]
        ys = [p[1] for p in ring]
        # around the pasture, a little beyond its border: enters and exits happen
        x = self.rng.uniform(min(xs) - 0.15 * CELL_LON, max(xs) + 0.15 * CELL_LON)
        y = self.rng.uniform(min(ys) - 0.15 * CELL_LAT, max(ys) + 0.15 * CELL_LAT)
        return round(float(x), 7), round(float(y), 7)

    def good_fix(self, device: str | None = None) -> Fix:
        d = device or self.rng.choice(self.devices)
        r = self.rng.random()
        if r < 0.05:  # a late fix (within the track window): merged as if it had come in order
            ts = self.clock[d] - self.rng.randrange(1, 30_000)
        elif self.clock[d] + 60_000 < self.now_ms:
            self.clock[d] += self.rng.randrange(1_000, 60_000)
            ts = self.clock[d]
        else:  # the collar's clock has caught up with now: a repeat, stale
            ts = self.clock[d]
        lon, lat = self._position(d)
        return Fix(d, ts, lon, lat)

    # ------------------------------------------------------------ mutations

    def _bad_element(self, f: Fix) -> tuple[Any, str]:
        """A fix made bad in one field, and what was done."""
        obj: dict[str, Any] = _fix_obj(f)
        ts = f.ts_ms
        mutations: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
            ("device_id missing", lambda o: o.pop("device_id")),
            ("device_id empty", lambda o: o.update(device_id="")),
            ("device_id null", lambda o: o.update(device_id=None)),
            ("device_id a number", lambda o: o.update(device_id=12345)),
            ("device_id too long", lambda o: o.update(device_id="x" * 129)),
            ("device_id a list", lambda o: o.update(device_id=["a"])),
            ("ts missing", lambda o: o.pop("ts")),
            ("ts null", lambda o: o.update(ts=None)),
            ("ts a boolean", lambda o: o.update(ts=True)),
            ("ts not a time", lambda o: o.update(ts="last tuesday")),
            ("ts without a zone", lambda o: o.update(ts="2026-05-28T20:26:41")),
            ("ts in microseconds", lambda o: o.update(ts=ts * 1000)),
            ("ts in nanoseconds", lambda o: o.update(ts=ts * 1_000_000)),
            ("ts 1e20", lambda o: o.update(ts=1e20)),
            ("ts negative", lambda o: o.update(ts=-5)),
            ("ts zero", lambda o: o.update(ts=0)),
            ("ts in year 1", lambda o: o.update(ts="0001-01-01T00:00:00+14:00")),
            ("ts in 2100", lambda o: o.update(ts=4_102_444_800_000)),
            ("ts an hour ahead", lambda o: o.update(ts=self.now_ms + 3_600_000)),
            ("ts in 1999", lambda o: o.update(ts="1999-12-31T23:59:59Z")),
            ("lon missing", lambda o: o.pop("lon")),
            ("lon a string", lambda o: o.update(lon="17.6")),
            ("lon 180.5", lambda o: o.update(lon=180.5)),
            ("lon a boolean", lambda o: o.update(lon=False)),
            ("lat 91", lambda o: o.update(lat=91)),
            ("lat -90.0001", lambda o: o.update(lat=-90.0001)),
            ("lat null", lambda o: o.update(lat=None)),
            ("lat a list", lambda o: o.update(lat=[59.6])),
            ("battery a word", lambda o: o.update(battery="full")),
            ("accuracy_m a list", lambda o: o.update(accuracy_m=[3])),
            ("not an object", lambda o: None),
        ]
        what, mutate = self.rng.choice(mutations)
        if what == "not an object":
            return self.rng.choice([[f.lon, f.lat], "fix", 17, None]), what
        mutate(obj)
        return obj, what

    def _whole_bad(self) -> tuple[bytes, str]:
        r = self.rng.randrange(9)
        if r == 0:
            return bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 200))), "random bytes"
        if r == 1:
            v = orjson.dumps(_fix_obj(self.good_fix()))
            return v[: self.rng.randrange(1, len(v))], "truncated JSON"
        if r == 2:
            return b"", "empty value"
        if r == 3:
            return b"[]", "empty list"
        if r == 4:
            return b"[" * 3000 + b"]" * 3000, "deeply nested"
        if r == 5:
            return orjson.dumps(self.rng.choice(["a string", 42, None, {}])), "not a fix"
        if r == 6:
            return b'{"device_id": "x", "ts": 1, "lon": NaN, "lat": 1}', "NaN"
        if r == 7:
            return b'{"device_id": "x", "ts": 1780000000000, "lon": 1e400, "lat": 1}', "infinite lon"
        return orjson.dumps([[1, 2]] * self.rng.randrange(2, 20)), "a list of lists"

    def huge(self) -> Case:
        """About 0.9 MB of bad elements in one record: one bounded dead letter, not 450,000."""
        return Case(b"huge", orjson.dumps([{"x": 1}] * 90_000), bad=True, kind="0.9 MB of bad elements")

    # ---------------------------------------------------------------- cases

    def case(self) -> Case:
        r = self.rng.random()
        if r < 0.55:  # one good fix
            f = self.good_fix()
            return Case(f.device_id.encode(), orjson.dumps(_fix_obj(f)), [f], kind="good fix")
        if r < 0.70:  # a collar's packed track
            d = self.rng.choice(self.devices)
            track = [self.good_fix(d) for _ in range(self.rng.randrange(1, 30))]
            return Case(d.encode(), orjson.dumps([_fix_obj(f) for f in track]), track, kind="good pack")
        if r < 0.85:  # one fix, one field broken
            f = self.good_fix()
            obj, what = self._bad_element(f)
            key = f.device_id.encode() if self.rng.random() < 0.8 else self.rng.choice([None, b"\xff\xfe", b""])
            return Case(key, orjson.dumps(obj), bad=True, kind=what)
        if r < 0.93:  # a pack with some bad elements: the good ones still count
            d = self.rng.choice(self.devices)
            items: list[Any] = []
            good: list[Fix] = []
            kinds = []
            for _ in range(self.rng.randrange(2, 20)):
                f = self.good_fix(d)
                if self.rng.random() < 0.3:
                    obj, what = self._bad_element(f)
                    items.append(obj)
                    kinds.append(what)
                else:
                    items.append(_fix_obj(f))
                    good.append(f)
            return Case(d.encode(), orjson.dumps(items), good, bad=bool(kinds), kind="pack: " + ", ".join(kinds))
        value, what = self._whole_bad()
        return Case(self.rng.choice([None, b"k", b"\x00"]), value, bad=True, kind=what)

    def cases(self, n: int, huge: int = 1) -> list[Case]:
        out = [self.case() for _ in range(n - huge)]
        for _ in range(huge):
            out.insert(self.rng.randrange(len(out) + 1), self.huge())
        return out


def predict(cases: list[Case], fences: list[Fence], tenants: dict[str, str]) -> set[str]:
    """The ids of the events the pure pipeline gives for the good fixes of each collar in time order
    (the first to arrive of two at one time)."""
    index = FenceIndex(fences)
    states: dict[str, DeviceState] = {}
    first: dict[tuple[str, int], Fix] = {}
    for c in cases:
        for f in c.good:
            first.setdefault((f.device_id, f.ts_ms), f)
    fixes = sorted(first.values(), key=lambda f: f.ts_ms)  # per collar in time order (collars are independent)
    out = process(fixes, index, states, lambda d: tenants.get(d, "default"), default_rules)  # the workers' rules
    return {e.event_id for e in out.events}


@dataclass
class Verdict:
    records: int
    bad: int
    dead_letters: int
    events_expected: int
    events_published: int
    problems: list[str]

    def summary(self) -> str:
        return (
            f"{self.records:,} records ({self.bad:,} bad): {self.dead_letters:,} dead letters, "
            f"{self.events_published:,} of {self.events_expected:,} predicted events published; "
            + (f"{len(self.problems)} problems" if self.problems else "no problems")
        )


def verify(
    cases: list[Case],
    sources: list[str],
    dead: list[tuple[str | None, str | None]],
    events: list[dict[str, Any]],
    expected: set[str],
) -> Verdict:
    """``sources``: each case's "topic/partition/offset" as produced; ``dead``: each dead
    letter's (source, reason) headers; ``events``: the events read from the events topic, in order."""
    problems: list[str] = []
    bad_sources = {s for c, s in zip(cases, sources) if c.bad}
    kind_of = {s: c.kind for c, s in zip(cases, sources)}
    seen = Counter(src for src, _ in dead)
    for src, n in seen.items():
        if src not in bad_sources:
            problems.append(f"a dead letter for {src} ({kind_of.get(src or '', 'unknown record')}), a good record")
        elif n > 1:
            problems.append(f"{n} dead letters for {src} ({kind_of[src]}): one per record")
    for src in sorted(bad_sources - seen.keys()):
        problems.append(f"no dead letter for {src} ({kind_of[src]})")
    for src, reason in dead:
        if reason not in REASONS:
            problems.append(f"dead letter {src}: reason {reason!r} is not one of {sorted(REASONS)}")
    standing: dict[str, None] = {}
    for e in events:
        if e["type"] == "retract":
            if standing.pop(e["retracts"], "gone") == "gone":
                problems.append(f"retract {e['event_id']} of {e['retracts']}, which was not standing")
        else:
            standing[e["event_id"]] = None
    published = set(standing)
    for eid in sorted(expected - published)[:20]:
        problems.append(f"event {eid} predicted, not published")
    for eid in sorted(published - expected)[:20]:
        problems.append(f"event {eid} published, not predicted")
    return Verdict(len(cases), len(bad_sources), len(dead), len(expected), len(published & expected), problems)


def herd_fences(n: int = 200) -> list[Fence]:
    return pastures(n, seed=7, dwell_s=600.0)


# ------------------------------------------------------------------- a run


@dataclass(frozen=True)
class Target:
    """Where a running worker reads and writes, and how to see it."""

    bootstrap: str
    redis_url: str
    prefix: str
    locations: str
    events: str
    dlq: str
    group: str
    metrics_url: str


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] fuzz-push: {msg}", flush=True)


async def _seed(t: Target, fences: list[Fence], tenants: dict[str, str]) -> None:
    from fencex.store.redis import RedisStore

    store = RedisStore(t.redis_url, t.prefix)
    await store.connect()
    try:
        await store.put_fences(fences)
        await store.register_devices(tenants)
    finally:
        await store.close()


def _produce(t: Target, cases: list[Case]) -> list[str]:
    """Produce every case; return each one's "topic/partition/offset" from its delivery report."""
    from confluent_kafka import Producer

    from fencex.kafka.producer import client_config

    sources: list[str] = [""] * len(cases)
    errors: list[str] = []

    def delivered(i: int) -> Callable[[Any, Any], None]:
        def cb(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(f"record {i} ({cases[i].kind}): {err}")
            else:
                sources[i] = f"{msg.topic()}/{msg.partition()}/{msg.offset()}"

        return cb

    p = Producer(client_config(t.bootstrap, **{"linger.ms": 5, "message.max.bytes": 2 << 20}))
    for i, c in enumerate(cases):
        while True:
            try:
                p.produce(t.locations, c.value, c.key, on_delivery=delivered(i))
                break
            except BufferError:
                p.poll(0.05)
        if i % 2000 == 1999:
            p.poll(0)
    left = p.flush(60)
    if left or errors:
        raise RuntimeError(f"{left} records not delivered; errors: {errors[:3]}")
    return sources


def _drained(t: Target, ends: dict[int, int], timeout: float, alive: Callable[[], bool]) -> None:
    """Wait until the worker's group has committed the end of every partition it was given."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": t.bootstrap, "group.id": t.group, "enable.auto.commit": False})
    try:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            if not alive():
                raise AssertionError("the worker exited")
            got = c.committed([TopicPartition(t.locations, p) for p in ends], timeout=10)
            committed = {tp.partition: tp.offset for tp in got}
            behind = {p: end - max(committed.get(p, 0), 0) for p, end in ends.items()}
            if all(n <= 0 for n in behind.values()):
                return
            now = f"{sum(max(n, 0) for n in behind.values()):,} records behind"
            if now != last:
                _say(now)
                last = now
            if time.monotonic() > deadline:
                raise AssertionError(f"committed offsets did not reach the end: {behind} records behind per partition")
            time.sleep(0.5)
    finally:
        c.close()


def _read_all(bootstrap: str, topic: str, idle: float = 3.0, timeout: float = 120.0) -> list[Any]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "fuzz-reader", "enable.auto.commit": False})
    # assigned, not subscribed: no group to join, every partition from its beginning
    partitions = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    got: list[Any] = []
    try:
        quiet_since = time.monotonic()
        deadline = time.monotonic() + timeout
        while time.monotonic() - quiet_since < idle and time.monotonic() < deadline:
            msgs = c.consume(5000, 0.5)
            for m in msgs:
                if not m.error():
                    got.append(m)
            if msgs:
                quiet_since = time.monotonic()
    finally:
        c.close()
    return got


def _header(msg: Any, name: str) -> str | None:
    for k, v in msg.headers() or []:
        if k == name:
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    return None


def fuzz(
    t: Target, records: int, seed: int, devices: int, alive: Callable[[], bool], timeout: float = 300.0
) -> Verdict:
    """Seed fences and collars, produce ``records`` generated records, wait until the worker
    has committed them all, read the dead letters and events back, and check the invariants."""
    fences = herd_fences()
    gen = Generator(seed, fences, devices, int(time.time() * 1000))
    tenants = gen.tenants()
    asyncio.run(_seed(t, fences, tenants))
    cases = gen.cases(records)
    expected = predict(cases, fences, tenants)
    _say(f"seed {seed}: {len(cases):,} records ({sum(c.bad for c in cases):,} bad), {len(expected):,} events predicted")
    sources = _produce(t, cases)
    ends: dict[int, int] = {}
    for s in sources:
        _topic, p, o = s.rsplit("/", 2)
        ends[int(p)] = max(ends.get(int(p), 0), int(o) + 1)
    _say(f"produced; waiting for the worker to commit {len(ends)} partitions to their ends")
    _drained(t, ends, timeout, alive)
    dead = [(_header(m, "source"), _header(m, "reason")) for m in _read_all(t.bootstrap, t.dlq)]
    events = [orjson.loads(m.value()) for m in _read_all(t.bootstrap, t.events)]
    if not alive():
        raise AssertionError("the worker exited")
    return verify(cases, sources, dead, events, expected)


def main(argv: list[str] | None = None) -> int:
    """Start a broker, Redis and one worker on loopback ports; fuzz; print the verdict (exit 1 on a problem)."""
    import os
    import signal
    import subprocess
    from pathlib import Path

    from devtools.localserver import free_port, start_broker, start_redis
    from fencex.kafka.admin import ensure_topics

    parser = argparse.ArgumentParser(prog="python -m devtools.fuzz_push", description=main.__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--out", default="out/fuzz-push")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with start_broker(logdir=out) as broker, start_redis(logdir=out) as redis:
        name = f"fz{args.seed}"
        port = free_port()
        t = Target(
            broker.address,
            f"redis://{redis.address}/0",
            name,
            f"{name}.locations",
            f"{name}.fence-events",
            f"{name}.locations.dlq",
            f"{name}-processor",
            f"http://127.0.0.1:{port}/metrics",
        )
        ensure_topics(t.bootstrap, {t.locations: 4, t.events: 4, t.dlq: 1})
        env = dict(
            os.environ,
            FENCEX_KAFKA_BOOTSTRAP=t.bootstrap,
            FENCEX_REDIS_URL=t.redis_url,
            FENCEX_KEY_PREFIX=t.prefix,
            FENCEX_LOCATIONS_TOPIC=t.locations,
            FENCEX_EVENTS_TOPIC=t.events,
            FENCEX_DLQ_TOPIC=t.dlq,
            FENCEX_GROUP_ID=t.group,
            FENCEX_HISTORY_GROUP=f"{name}-history",
            FENCEX_SESSION_TIMEOUT_S="6",
            FENCEX_WEB_PORT=str(port),
            FENCEX_DATADIR=str(out / "worker-data"),
        )
        with (out / "worker.log").open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "services.processor"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        try:
            verdict = fuzz(t, args.records, args.seed, args.devices, lambda: worker.poll() is None, timeout=1800)
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(30)
    print(verdict.summary(), flush=True)
    for problem in verdict.problems[:50]:
        print("  -", problem)
    return 1 if verdict.problems else 0


if __name__ == "__main__":
    sys.exit(main())

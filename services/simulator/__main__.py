"""python -m services.simulator: a herd grazing across its pastures, publishing GPS fixes.

Fixes go to ``locations`` with confluent-kafka, keyed by device id, one per
record or ``--pack`` consecutive fixes of one collar to a record (its buffered track).
``--setup`` first draws the pastures and registers the collars to their farms in Redis.
"""

from __future__ import annotations

import asyncio
import sys
import time

import numpy as np
import orjson
from confluent_kafka import Producer

from fencex.errors import FencexError
from fencex.fence import Fence
from fencex.kafka.admin import ensure_topics
from fencex.kafka.producer import client_config
from fencex.store.redis import RedisStore
from services.simulator.herd import Herd, pastures
from services.simulator.herd import records as herd_records
from services.simulator.scenarios import Scenarios
from services.simulator.settings import Settings


async def setup(settings: Settings, herd: Herd, fences: list[Fence]) -> None:
    store = RedisStore(settings.redis_url, settings.key_prefix, groups=settings.store_groups)
    await store.connect()
    try:
        for start in range(0, len(fences), 2000):
            await store.put_fences(fences[start : start + 2000])
        await store.register_devices(herd.tenants())
        for tenant in sorted(set(herd.tenant)):
            await store.create_tenant(tenant, tenant)
    finally:
        await store.close()


def run(settings: Settings) -> int:
    fences = pastures(settings.fences, settings.seed, dwell_s=settings.dwell_s)
    herd = Herd(settings.devices, fences, settings.seed)
    ensure_topics(settings.kafka_bootstrap, {settings.locations_topic: settings.partitions})
    if settings.setup:
        asyncio.run(setup(settings, herd, fences))
        if not settings.quiet:
            print(
                f"simulator: drew {len(fences)} pastures for {len(set(herd.tenant))} farms, "
                f"registered {len(herd.ids)} collars",
                flush=True,
            )
    scenarios = Scenarios(herd, fences, settings.seed, settings.quiet_s) if settings.scenarios else None
    if scenarios is not None and not settings.quiet:
        cast = "; ".join(f"{role}: {', '.join(ids)}" for role, ids in scenarios.cast().items())
        print(f"simulator: scenarios ({cast})", flush=True)
    producer = Producer(
        client_config(  # murmur2, as every fencex producer: a device's key lands where a Java client puts it
            settings.kafka_bootstrap,
            **{
                "linger.ms": 10,
                "compression.type": "lz4",
                "batch.num.messages": 10000,
                "queue.buffering.max.messages": 2_000_000,
                "queue.buffering.max.kbytes": 1_048_576,
            },
        )
    )
    n = len(herd.ids)
    pack = max(1, settings.pack)
    tick = 0.02
    started = time.monotonic()
    sent = records = 0
    cursor = 0
    last_ts = np.zeros(n, dtype=np.int64)
    last_report = started
    try:
        while True:
            now = time.monotonic()
            if settings.duration_s and now - started >= settings.duration_s:
                break
            if settings.total and sent >= settings.total:
                break
            due = int((now - started) * settings.rate) - sent if settings.rate else 5000
            if settings.total:
                due = min(due, settings.total - sent)
            if due <= 0:
                time.sleep(tick / 2)
                continue
            k = max(1, due // pack)
            idx = np.arange(cursor, cursor + k) % n
            cursor = (cursor + k) % n
            # each collar's track ends now, a millisecond a fix, and is newer than its last one
            base = np.maximum(int(time.time() * 1000) - (pack - 1), last_ts[idx] + 1)
            last_ts[idx] = base + pack - 1
            if scenarios is not None:
                scenarios.before_step(now - started)
            batch = herd_records(herd, idx, pack, base, step_ms=1)
            if scenarios is not None:
                batch = scenarios.apply(batch, idx.tolist(), now - started)
            fixes = [f for _, track in batch for f in track]
            for key, track in batch:
                records += 1
                value = orjson.dumps(track if pack > 1 else track[0])
                if settings.bad_every and records % settings.bad_every == 0:
                    value = b'{"device_id": "broken", "lat": 91}'
                while True:
                    try:
                        producer.produce(settings.locations_topic, value, key=key)
                        break
                    except BufferError:
                        producer.poll(0.05)
            sent += len(fixes)
            producer.poll(0)
            if not settings.quiet and now - last_report >= 5:
                print(f"simulator: {sent} fixes in {records} records, {sent / (now - started):.0f} fixes/s", flush=True)
                last_report = now
    except KeyboardInterrupt:
        pass
    finally:
        producer.flush(30)
    if not settings.quiet:
        print(f"simulator: done, {sent} fixes in {records} records", flush=True)
    return 0


def main() -> int:
    settings = Settings()
    try:
        return run(settings)
    except FencexError as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

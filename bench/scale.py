"""python -m bench.scale: proof at size (issue 15, item 5). A command, not a test.

Starts a local Redis Cluster of 3 masters and a broker; loads ``--fences`` fences (farms of
``--per-farm`` paddocks scattered over a country) and ``--devices`` saved collar states straight into
the cluster under the store's own keys (``bench.scaleload``); then, against one real worker process
(``services.processor``) holding every partition of ``--partitions``:

- Redis memory per fence and per device: ``used_memory`` deltas summed over the masters;
- the worker's start (its index holds every fence; every partition assigned and its saved states
  loaded) in seconds, and its RSS then (``/proc``);
- a fence change: one paddock moved off its collars, put through the store as the API puts it; the
  time until the worker publishes the first ``exit`` of that fence (read back from fence-events: the
  change went through the feed, into the worker's index, and its farm's held collars were re-evaluated);
- push throughput: a backlog of packed fixes of collars drawn from all ``--devices``, drained by the
  worker that holds them all, against the same backlog of collars drawn from the first
  ``--baseline-devices`` (20,000, bench.push's collars) drained by a fresh worker on its own topic
  (same fences, same Redis): a ratio, timed from the group's committed offsets on the broker.

Writes out/scale/scale.json and out/scale/scale.png, and prints the sizing table (:func:`sizing`).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis
from redis.cluster import RedisCluster as SyncCluster

from bench.partitions import GROWTH, HEADROOM, MULTIPLE, partitions_for
from bench.scaleload import Country, Loader, chunks, farm_states, write_devices, write_fences
from bench.scalerun import Backlog, Worker, committed, count_events, drain_rate, events_reader, first_event, say
from devtools.localserver import RedisCluster, start_broker, start_redis_cluster
from fencex.kafka.admin import ensure_topics
from fencex.store.base import Keys
from fencex.store.redis import RedisStore

TOPIC, BASE_TOPIC = "locations-scale", "locations-base"


def used_memory(cluster: RedisCluster) -> int:
    """``used_memory`` summed over the masters, in bytes."""
    total = 0
    for s in cluster.servers:
        with redis.Redis(host="127.0.0.1", port=s.port) as r:
            total += int(r.info("memory")["used_memory"])
    return total


def load(args: argparse.Namespace, cluster: RedisCluster, country: Country, now_ms: int) -> dict[str, Any]:
    """The fences, then the devices, with Redis memory before and after each."""
    keys = Keys()
    sync = SyncCluster(host="127.0.0.1", port=cluster.servers[0].port)
    loader = Loader(sync)
    out: dict[str, Any] = {"redis_empty_bytes": used_memory(cluster)}
    started, size, step = time.monotonic(), 0, max(1, country.farms // 10)
    for farms in chunks(country.farms, 500):
        size += write_fences(loader, keys, [f for farm in farms for f in country.paddocks(farm)])
        if farms.stop % step < 500 or farms.stop == country.farms:
            say(f"fences: {farms.stop * country.per_farm:,} of {country.fences:,} ({time.monotonic() - started:.0f} s)")
    loader.flush()
    sync.hset(keys.tenants, mapping={f"farm-{i:06d}": f"Farm {i}" for i in range(country.farms)})
    out["fences_load_s"] = time.monotonic() - started
    out["fence_json_bytes"] = size / max(country.fences, 1)
    out["redis_fences_bytes"] = used_memory(cluster)
    started = time.monotonic()
    for farms in chunks(country.farms, 200):
        for farm in farms:
            write_devices(loader, keys, TOPIC, farm_states(country, farm, args.partitions, now_ms), now_ms)
        if farms.stop % step < 200 or farms.stop == country.farms:
            done = country.collars(farms.stop - 1).stop
            say(f"devices: {done:,} of {country.devices:,} ({time.monotonic() - started:.0f} s)")
    loader.close()
    sync.close()
    out["devices_load_s"] = time.monotonic() - started
    out["redis_all_bytes"] = used_memory(cluster)
    out["redis_per_fence_bytes"] = (out["redis_fences_bytes"] - out["redis_empty_bytes"]) / max(country.fences, 1)
    out["redis_per_device_bytes"] = (out["redis_all_bytes"] - out["redis_fences_bytes"]) / max(country.devices, 1)
    say(
        f"Redis: {out['redis_per_fence_bytes']:,.0f} bytes a fence, {out['redis_per_device_bytes']:,.0f} bytes a "
        f"device, {out['redis_all_bytes'] / 1e9:.2f} GB in all"
    )
    return out


async def change_fence(url: str, country: Country, farm: int) -> str:
    """Move the farm's first paddock three cells north, off its collars, as the API's PUT does."""
    store = RedisStore(url, "fx")
    await store.connect()
    try:
        fence = country.paddocks(farm)[0]
        ring = fence.geometry["coordinates"][0]
        moved = [[x, round(y + 3 * 0.002, 7)] for x, y in ring]
        new = fence.model_copy(update={"geometry": {"type": "Polygon", "coordinates": [moved]}})
        await store.put_fences([new], if_match={fence.id: 1})
        return fence.id
    finally:
        await store.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    out_dir = Path(args.out)
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    country = Country(max(1, args.fences // args.per_farm), args.per_farm, args.devices, args.seed)
    now_ms = int(time.time() * 1000)
    first_ms = now_ms - 1_800_000  # the saved states' last fix: half an hour ago
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "fences": country.fences,
        "farms": country.farms,
        "devices": country.devices,
        "partitions": args.partitions,
        "masters": args.masters,
    }
    say(f"starting a Redis Cluster of {args.masters} masters and a broker")
    cluster = start_redis_cluster(args.masters, logdir=logs)
    broker = start_broker(logdir=logs)
    workers: list[Worker] = []
    try:
        say("an empty worker first (no fence, no device): its RSS is what the others' are counted from")
        ensure_topics(broker.address, {TOPIC: args.partitions, BASE_TOPIC: args.partitions, "fence-events": 12})
        ensure_topics(broker.address, {"locations.dlq": 1})
        empty = Worker(broker.address, cluster.url, TOPIC, args.partitions, logs, "empty")
        workers.append(empty)
        result["empty_worker"] = empty.wait_ready(0, 0, args.timeout)
        empty.stop()
        result["load"] = load(args, cluster, country, first_ms)
        say(f"starting a worker on {args.partitions} partitions")
        w = Worker(broker.address, cluster.url, TOPIC, args.partitions, logs, "scale")
        workers.append(w)
        marks = w.wait_ready(country.fences, country.devices, args.timeout)
        result["worker"] = {"start": marks, "rss_mb": w.rss()[0]}
        say(
            f"worker: index in {marks['index_s']:.1f} s ({marks['index_rss_mb']:,.0f} MB), ready in "
            f"{marks['ready_s']:.1f} s ({marks['ready_rss_mb']:,.0f} MB) with {country.devices:,} devices"
        )
        events = events_reader(broker.address)
        result["worker"]["start"]["events"] = count_events(events)  # the load's: none expected
        farm = country.farms // 2
        t0 = time.monotonic()
        fid = asyncio.run(change_fence(cluster.url, country, farm))
        put_s = time.monotonic() - t0
        seen = first_event(events, lambda e: e.get("fence_id") == fid and e.get("type") == "exit", 120)
        events.close()
        result["fence_change"] = {"fence": fid, "put_s": put_s, "exit_event_s": (seen - t0) if seen else None}
        say(
            f"fence change: put in {put_s * 1000:.0f} ms, its first exit event read back after "
            + (f"{(seen - t0) * 1000:.0f} ms" if seen else "nothing in 120 s")
        )
        backlog = Backlog(country, first_ms, args.seed)
        result["push"] = {}
        few = min(args.baseline_devices, country.devices)
        for name, topic, collars, worker in (
            ("known", TOPIC, country.devices, w),  # every fix from another collar, as at one fix a minute
            ("known_few", TOPIC, few, w),  # the same worker, the baseline's collars: the cost of holding M
            ("baseline", BASE_TOPIC, few, None),
        ):
            if worker is None:
                w.stop()
                say(f"starting a fresh worker on {BASE_TOPIC} (its collars are loaded as they report)")
                worker = Worker(broker.address, cluster.url, topic, args.partitions, logs, name)
                workers.append(worker)
                worker.wait_ready(country.fences, 0, args.timeout)
            read = committed(broker.address, worker.group, topic, args.partitions)
            before = read()  # the worker's drains before this one, on the same topic
            t = time.monotonic()
            records = backlog.produce(broker.address, topic, collars, args.push_fixes, args.pack)
            say(
                f"push {name}: {records:,} records of {args.pack} fixes from {collars:,} collars produced in "
                f"{time.monotonic() - t:.1f} s"
            )
            rate, took = drain_rate(read, records, args.pack, args.timeout, before, t)
            now, peak = worker.rss()
            result["push"][name] = {
                "collars": collars,
                "records": records,
                "fixes_per_s": rate,
                "drain_s": took,
                "rss_mb": now,
                "peak_rss_mb": peak,
            }
            say(f"push {name}: {rate:,.0f} fixes/s, worker RSS {now:,.0f} MB (peak {peak:,.0f} MB)")
        result["worker"]["peak_rss_mb"] = result["push"]["known"]["peak_rss_mb"]
        result["worker"]["timeline"] = w.samples
        known, base = result["push"]["known"]["fixes_per_s"], result["push"]["baseline"]["fixes_per_s"]
        result["push"]["ratio"] = known / base if base else None
        few_known = result["push"]["known_few"]["fixes_per_s"]
        result["push"]["ratio_same_collars"] = few_known / base if base else None
    finally:
        for worker in workers:
            worker.stop()
        broker.stop()
        cluster.stop()
    return result


# The sizing rule's inputs that the scale run does not measure (README, Sizing)
FIX_INTERVAL_S = 60.0  # one fix a minute a collar
FENCES_PER_COLLAR = 0.1  # 10 paddocks a farm of 100 collars
TRACK_BYTES = 2_000 * 17.1  # a collar's track in Redis: 2,000 fixes (FENCEX_TRACK_CAP) at 17.1 bytes (bench.tracks)
API_RPS_PER_1000_COLLARS = 1.0  # assumed: farmers' apps and integrations, requests/s per 1,000 collars
API_POD_RPS = 10_000.0  # one API pod (2 processes): bench.pull's point queries, about 19,000 to 28,000 for 2
API_MIN_PODS = 2
WORKER_POD_GB = 8.0  # a worker pod's memory limit
SIZES = (10_000, 1_000_000, 10_000_000)  # collars, the README's sizing table's rows


def sizing(result: dict[str, Any], collars: int) -> dict[str, Any]:
    """Worker pods, API pods, Kafka partitions and GB of Redis for ``collars`` at one fix a minute, from a
    scale run's JSON (its per-worker push rate with every device known, Redis bytes per device and per
    fence, the worker's memory per device and per fence) and the constants above."""
    rate = collars / FIX_INTERVAL_S
    fences = collars * FENCES_PER_COLLAR
    per_worker = result["push"]["known"]["fixes_per_s"]
    if per_worker <= 0:
        raise ValueError("the run measured no push rate: no sizing from it")
    by_rate = partitions_for(rate, per_worker).workers  # the sizing rule (bench/partitions.py)
    w = result["worker"]
    base = result["empty_worker"]["ready_rss_mb"]
    mb_fence = max(w["start"]["index_rss_mb"] - base, 0) / max(result["fences"], 1)
    mb_device = max(w["start"]["ready_rss_mb"] - w["start"]["index_rss_mb"], 0) / max(result["devices"], 1)
    room = WORKER_POD_GB * 1024 - base - fences * mb_fence  # every worker holds every fence
    by_memory = math.ceil(collars * mb_device / room) if room > 0 else None  # None: the fences alone do not fit
    workers = max(by_rate, by_memory or 0)
    partitions = math.ceil(workers * GROWTH / MULTIPLE) * MULTIPLE
    load = result["load"]
    state_gb = (collars * load["redis_per_device_bytes"] + fences * load["redis_per_fence_bytes"]) / 1e9
    return {
        "collars": collars,
        "fixes_per_s": rate,
        "worker_pods": workers,
        "worker_pods_by_rate": by_rate,
        "worker_pods_by_memory": by_memory,
        "worker_gb": (base + fences * mb_fence + collars * mb_device / workers) / 1024,
        "api_pods": max(API_MIN_PODS, math.ceil(collars / 1000 * API_RPS_PER_1000_COLLARS * HEADROOM / API_POD_RPS)),
        "partitions": partitions,
        "redis_state_gb": state_gb,
        "redis_gb": state_gb + collars * TRACK_BYTES / 1e9,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.5))
    load = result["load"]
    a.bar(["a fence", "a device"], [load["redis_per_fence_bytes"], load["redis_per_device_bytes"]], color="#a33")
    a.set_ylabel("bytes of Redis (used_memory, all masters)")
    a.set_title(f"Redis: {load['redis_all_bytes'] / 1e9:.2f} GB in all", fontsize=10)
    t = [s for s, _ in result["worker"]["timeline"]]
    b.plot(t, [r for _, r in result["worker"]["timeline"]], color="#27a")
    start = result["worker"]["start"]
    for key, label in (("index_s", "index built"), ("ready_s", "states loaded")):
        b.axvline(start[key], color="#888", linestyle="--")
        b.text(start[key], 0, f" {label}", rotation=90, va="bottom", fontsize=8)
    b.set_xlabel("seconds since the worker started")
    b.set_ylabel("worker RSS (MB)")
    b.set_title(f"Worker start: ready in {start['ready_s']:.1f} s", fontsize=10)
    push = result["push"]
    held = f"{push['known']['collars']:,} held"
    names = [f"{held}:\nfixes of all", f"{held}:\nfixes of {push['baseline']['collars']:,}", "fresh worker:\nthe same"]
    rates = [push[k]["fixes_per_s"] for k in ("known", "known_few", "baseline")]
    bars = c.bar(names, rates, color=["#2a7", "#2a7", "#888"])
    c.bar_label(bars, labels=[f"{r:,.0f}" for r in rates])
    c.set_ylabel("fixes per second, one worker")
    ratio = push["ratio"]
    c.set_title(f"Push: ratio {ratio:.2f}" if ratio else "Push", fontsize=10)
    fig.suptitle(
        f"fencex at size: {result['fences']:,} fences, {result['devices']:,} devices, {result['partitions']} "
        f"partitions, {result['masters']}-master Redis Cluster; {result['date']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def report(result: dict[str, Any]) -> list[str]:
    load, w, push, change = result["load"], result["worker"], result["push"], result["fence_change"]
    base = result["empty_worker"]["ready_rss_mb"]
    index_mb = w["start"]["index_rss_mb"] - base
    lines = [
        f"fencex at size, {result['date']}, {result['machine']}",
        f"  {result['fences']:,} fences ({result['farms']:,} farms), {result['devices']:,} devices, "
        f"{result['partitions']} partitions, Redis Cluster of {result['masters']} masters",
        f"  Redis: {load['redis_per_fence_bytes']:,.0f} B a fence, {load['redis_per_device_bytes']:,.0f} B a device, "
        f"{load['redis_all_bytes'] / 1e9:.2f} GB in all "
        f"(loaded in {load['fences_load_s'] + load['devices_load_s']:.0f} s)",
        f"  worker: index built {w['start']['index_s']:.1f} s after start ({index_mb:,.0f} MB over an empty "
        f"worker's {base:,.0f} MB: {index_mb * 1024 / max(result['fences'], 1):.2f} KB a fence);",
        f"  worker ready (every partition, its states loaded) at {w['start']['ready_s']:.1f} s, "
        f"{w['start']['ready_rss_mb']:,.0f} MB; "
        f"peak {w['peak_rss_mb']:,.0f} MB",
        f"  fence change: put {change['put_s'] * 1000:.0f} ms, first exit event read back after "
        + (f"{change['exit_event_s'] * 1000:.0f} ms" if change["exit_event_s"] is not None else "(none)"),
        f"  push, one worker: {push['known']['fixes_per_s']:,.0f} fixes/s from {push['known']['collars']:,} collars "
        f"(all known), {push['baseline']['fixes_per_s']:,.0f} from {push['baseline']['collars']:,} (a fresh worker): "
        f"ratio " + (f"{push['ratio']:.2f}" if push["ratio"] else "-"),
        f"  push, the same {push['baseline']['collars']:,} collars by the worker holding {push['known']['collars']:,}: "
        f"{push['known_few']['fixes_per_s']:,.0f} fixes/s, ratio "
        + (f"{push['ratio_same_collars']:.2f}" if push.get("ratio_same_collars") else "-"),
        "  sizing at one fix a minute (bench.scale.sizing):",
        "    collars      fixes/s  worker pods  API pods  partitions  Redis GB (state / with tracks)",
    ]
    for row in result["sizing"]:
        lines.append(
            f"    {row['collars']:>10,} {row['fixes_per_s']:>8,.0f}  "
            f"{str(row['worker_pods']) + ('' if row['worker_pods_by_memory'] is not None else '*'):>11}  "
            f"{row['api_pods']:>8}  "
            f"{row['partitions']:>10}  {row['redis_state_gb']:.1f} / {row['redis_gb']:.1f}"
        )
    if any(row["worker_pods_by_memory"] is None for row in result["sizing"]):
        lines.append(f"    * a worker's fences alone do not fit a pod of {WORKER_POD_GB:g} GB: pods by rate only")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    ap.add_argument("--fences", type=int, default=1_000_000)
    ap.add_argument("--per-farm", type=int, default=10, help="paddocks a farm")
    ap.add_argument("--devices", type=int, default=10_000_000)
    ap.add_argument("--partitions", type=int, default=24, help="partitions of the locations topic (one worker: all)")
    ap.add_argument("--masters", type=int, default=3)
    ap.add_argument("--push-fixes", type=int, default=300_000, help="fixes in each push backlog")
    ap.add_argument("--pack", type=int, default=1, help="fixes a record (collars send one)")
    ap.add_argument("--baseline-devices", type=int, default=20_000, help="collars of the push baseline (bench.push's)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds a worker may take to start or drain")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="out/scale")
    ap.add_argument("--sizing-from", metavar="JSON", help="print the sizing of a run's scale.json; run nothing")
    args = ap.parse_args(argv)
    if args.sizing_from:
        result = orjson.loads(Path(args.sizing_from).read_bytes())
        result["sizing"] = [sizing(result, n) for n in SIZES]
        print("\n".join(report(result)))
        return 0
    result = run(args)
    out = Path(args.out)
    (out / "scale.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))  # kept if what follows fails
    result["sizing"] = [sizing(result, n) for n in SIZES]
    (out / "scale.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    plot(result, out / "scale.png")
    print("\n" + "\n".join(report(result)))
    print(f"  wrote {out / 'scale.json'} and {out / 'scale.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

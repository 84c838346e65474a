"""python -m bench.tracks: what a device's track costs (issue 12): bytes per fix and per device at
2,000 fixes, the live path's append, and a late upload of 1,000 fixes for one device merged.

One cow on a farm of 10 pastures in a row, a fix every 43.2 s for 24 hours (2,000 fixes) walking
east across the paddocks (exits, enters, escapes confirmed, a battery running down), with the
farm's default herd rules. The stored bytes are :meth:`fencex.track.Track.to_bytes` (what Redis
holds, before its own per-key overhead of about 60 bytes). The late upload: the collar was out of
coverage for the second half of the day, recording a fix every 43.2 s; back in coverage, it sends
its current fix first (the live path) and then the 1,000 it recorded (late, all at once), which are
merged: decode the stored track, merge (lookups, replay through the detector, compare), encode it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from fencex.detector import DeviceState
from fencex.fence import Fence
from fencex.fix import Fix
from fencex.herd import DEFAULT_RULES
from fencex.index import FenceIndex
from fencex.late import merge
from fencex.pipeline import process
from fencex.track import SNAP_EVERY, Track, append_bytes
from fencex.trackbytes import encode_fixes

DEV = "cow-1"
T0 = 1_763_683_200_000  # 2025-11-21T00:00Z
STEP_MS = 43_200  # 2,000 fixes in 24 h
N = 2_000


def farm() -> FenceIndex:
    def square(lon: float) -> dict[str, object]:
        c = [[lon, 59.80], [lon + 0.01, 59.80], [lon + 0.01, 59.81], [lon, 59.81], [lon, 59.80]]
        return {"type": "Polygon", "coordinates": [c]}

    # 10 pastures 0.01 degree wide with 0.002 degree lanes between them (about 110 m)
    return FenceIndex(
        [
            Fence(id=f"p{i}", tenant="farm", geometry=square(17.60 + 0.012 * i), kind="pasture", exit_buffer_m=5)
            for i in range(10)
        ]
    )


def walk(n: int, decimals: int | None, rng: np.random.Generator) -> list[Fix]:
    """A cow ambling east at about 0.15 m/s on average, with 3-8 m of GPS noise."""
    lon = 17.6005 + np.cumsum(rng.normal(0.12 / n, 0.00004, n))
    lat = 59.805 + np.cumsum(rng.normal(0.0, 0.00003, n)).clip(-0.0045, 0.0045)
    acc = np.round(rng.uniform(3.0, 8.0, n), 1)
    battery = np.round(np.linspace(60.0, 10.0, n))
    out = []
    for i in range(n):
        x, y = float(lon[i]), float(lat[i])
        if decimals is not None:
            x, y = round(x, decimals), round(y, decimals)
        out.append(Fix(DEV, T0 + i * STEP_MS, x, y, {"accuracy_m": float(acc[i]), "battery": float(battery[i])}))
    return out


def live(index: FenceIndex, fixes: list[Fix], per_batch: int = 1) -> tuple[dict[str, DeviceState], Track, int, float]:
    """The live path, a batch at a time: the pipeline, the track extended, and the bytes to append
    (with the seconds spent encoding them)."""
    states: dict[str, DeviceState] = {}
    track = Track()
    appended = 0
    cost = 0.0
    for i in range(0, len(fixes), per_batch):
        batch = fixes[i : i + per_batch]
        out = process(batch, index, states, lambda d: "farm", lambda t: DEFAULT_RULES)
        newest = track.newest
        snapshot = states[DEV] if track.since_snap() + len(batch) >= SNAP_EVERY else None
        started = time.perf_counter()
        appended += len(append_bytes(newest, batch, out.events, snapshot))
        cost += time.perf_counter() - started
        track.extend(batch, out.events, states[DEV])
    return states, track, appended, cost


async def in_redis(devices: int, per_flush: int) -> None:
    """What Redis holds for ``devices`` tracks of 2,000 fixes each, appended as the worker does (each save
    appends each device's new fixes, ``per_flush`` of them), then written whole (as after a trim or a merge):
    Redis grows an appended string ahead of its length, so a track built by appends takes more memory."""
    from devtools.localserver import start_redis
    from fencex.store.base import SaveWrites
    from fencex.store.redis import RedisStore

    rng = np.random.default_rng(7)
    index = farm()
    base = walk(N, 7, rng)
    with start_redis() as server:
        store = RedisStore(f"redis://{server.address}/0", "bench")
        await store.connect()
        try:
            before = int((await store.redis.info("memory"))["used_memory"])
            newest = [-1] * devices
            on = {f"cow-{d}": 0 for d in range(devices)}  # every track on partition 0 (its key: {p0})
            for i in range(0, N, per_flush):
                batch = base[i : i + per_flush]
                tracks = {f"cow-{d}": append_bytes(newest[d], batch, []) for d in range(devices)}
                newest = [batch[-1].ts_ms] * devices
                await store.save_packed(store.pack_save({}, [], None, None, SaveWrites(tracks=tracks), on))
                if i % 500 == 0:
                    print(f"  appending: {i:,}/{N:,} fixes a device", file=sys.stderr, flush=True)
            keys = [store.keys.track(0, f"cow-{d}") for d in range(devices)]

            async def usage() -> int:  # the keys' own memory (used_memory also holds the saves' query buffers)
                return sum([int(await store.redis.memory_usage(k, samples=0) or 0) for k in keys])

            appended = await usage()
            raw = await store.load_tracks([f"cow-{d}" for d in range(devices)], on)
            # written whole: what a trim or a merge leaves
            await store.save_packed(store.pack_save({}, [], None, None, SaveWrites(rewrites=raw), on))
            whole = await usage()
            grown = int((await store.redis.info("memory"))["used_memory"]) - before
        finally:
            await store.close()
    size = len(raw["cow-0"])
    print(
        f"redis, {devices} devices x {N:,} fixes ({size:,} bytes each, {per_flush} a save): "
        f"MEMORY USAGE {appended / devices:,.0f} B a device appended, {whole / devices:,.0f} B written whole; "
        f"{appended / devices / N:.1f} and {whole / devices / N:.1f} B a fix "
        f"(used_memory grew {grown / devices:,.0f} B a device, with the saves' buffers)"
    )
    index.mob("farm")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="merges timed (the median is printed)")
    parser.add_argument(
        "--redis",
        type=int,
        default=0,
        metavar="DEVICES",
        help="also store this many tracks in a redis-server and measure its memory",
    )
    parser.add_argument("--per-flush", type=int, default=1, help="fixes of a device a save appends (--redis)")
    args = parser.parse_args()
    if args.redis:
        import asyncio

        asyncio.run(in_redis(args.redis, args.per_flush))
    rng = np.random.default_rng(12)
    index = farm()
    print(f"{'fixes sent as':<34} {'bytes/fix':>9} {'bytes/device':>12} {'snapshots':>9} {'event ids':>9}")
    for label, decimals in (("7 decimals (as collars send)", 7), ("full float64 places", None)):
        fixes = walk(N, decimals, rng)
        _, track, appended, _ = live(index, fixes)
        size = len(track.to_bytes())
        ids = sum(len(v) for v in track.ids.values())
        print(f"{label:<34} {size / len(track):>9.1f} {size:>12,} {len(track.snaps):>9} {ids:>9}")
        assert appended + 2 == size, (appended, size)  # the appended log is the track's bytes (and a header)

    fixes = walk(N + 1, 7, rng)
    half = N // 2
    sent = [*fixes[:half], fixes[-1]]  # the live path: the first half, then the fix sent back in coverage
    upload = fixes[half:-1]  # the 1,000 recorded meanwhile, late
    states, track, _, _ = live(index, sent)
    for per_batch in (1, 100):  # a fix of the collar per batch (one per record), or 100 (a gateway's pack)
        _, _, _, cost = live(index, fixes, per_batch)
        print(
            f"live path, {per_batch:>3} fixes of the collar a batch: {cost / len(fixes) * 1e6:.2f} us a fix to encode"
        )
    one_each = [Fix(f"cow-{i}", f.ts_ms, f.lon, f.lat, f.extra) for i, f in enumerate(fixes[:1000])]
    prev = [f.ts_ms - STEP_MS for f in one_each]
    started = time.perf_counter()
    for _ in range(10):
        encode_fixes(one_each, prev)
    batch = (time.perf_counter() - started) / 10 / len(one_each)
    print(f"live path, a batch of 1,000 collars' fixes encoded at once: {batch * 1e6:.2f} us a fix")
    stored = track.to_bytes()
    times, decode, encode = [], [], []
    merged = None
    for _ in range(args.runs):
        started = time.perf_counter()
        t = Track.from_bytes(stored)
        decoded = time.perf_counter()
        merged = merge(DEV, states[DEV], t, upload, index, DEFAULT_RULES, index.mob("farm"))
        replayed = time.perf_counter()
        merged.track.to_bytes()
        done = time.perf_counter()
        times.append(done - started)
        decode.append(decoded - started)
        encode.append(done - replayed)
    assert merged is not None
    late = sum(e.late for e in merged.events)
    retracts = sum(e.type == "retract" for e in merged.events)
    print(
        f"late upload of {len(upload):,} fixes into a track of {len(track):,}: "
        f"{statistics.median(times) * 1e3:.1f} ms (median of {args.runs}; decode "
        f"{statistics.median(decode) * 1e3:.1f} ms, encode {statistics.median(encode) * 1e3:.1f} ms), "
        f"{merged.replayed:,} fixes replayed, {late} late events, {retracts} retracts, "
        f"track now {len(merged.track):,} fixes, {len(merged.track.to_bytes()):,} bytes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

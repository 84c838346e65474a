"""Pull-path benchmark (./dev bench-pull): the query API on this machine.

10,000 pasture fences from the seed; one farm's key. wrk (Debian's package; installed
when missing and allowed) sends GET /query/fences for random points in the farm, at
several connection counts; then POST /query/fences answers batches of 100,000 points.
Prints the figures, writes out/bench/pull.json and out/bench/pull.png.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import multiprocessing as mp
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from devtools.localserver import free_port, start_redis
from fencex.store.redis import RedisStore
from services.simulator.herd import CELL_LAT, CELL_LON, ORIGIN_LAT, ORIGIN_LON, pastures

ROOT = Path(__file__).parents[1]
LUA = """
wrk.headers["Authorization"] = "Bearer %(key)s"
math.randomseed(%(seed)d)
request = function()
  local lon = %(lon0).6f + math.random() * %(dlon).6f
  local lat = %(lat0).6f + math.random() * %(dlat).6f
  return wrk.format("GET", string.format("/query/fences?lon=%%.6f&lat=%%.6f", lon, lat))
end
"""


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def need_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say("installing wrk from Debian's packages")
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, stdout=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        sys.exit("bench-pull needs wrk: apt-get install wrk")
    return found


def _python_client(port: int, key: str, seconds: float, seed: int, go: Any, out: Any) -> None:
    """One point a request over one keep-alive connection (the standard library's http.client, the
    lightest Python HTTP client), each answer read before the next request."""
    rng = np.random.default_rng(seed)
    paths = [
        f"/query/fences?lon={x:.6f}&lat={y:.6f}"
        for x, y in zip(
            ORIGIN_LON + rng.uniform(0, 10 * CELL_LON, 20_000), ORIGIN_LAT + rng.uniform(0, 10 * CELL_LAT, 20_000)
        )
    ]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {key}"}
    go.wait()
    lat: list[float] = []
    bad = 0
    end = time.monotonic() + seconds
    n = 0
    while n % 64 or time.monotonic() < end:
        t = time.perf_counter()
        conn.request("GET", paths[n % len(paths)], headers=headers)
        r = conn.getresponse()
        r.read()
        lat.append(time.perf_counter() - t)
        bad += r.status != 200
        n += 1
    conn.close()
    out.put((lat, bad))


def run_python(port: int, key: str, clients: int, seconds: float) -> dict:
    """``clients`` Python processes, one point a request each (as Tile38's and PostGIS's Python clients)."""
    ctx = mp.get_context("fork")
    go = ctx.Event()
    q: Any = ctx.Queue()
    procs = [
        ctx.Process(target=_python_client, args=(port, key, seconds, i, go, q), daemon=True) for i in range(clients)
    ]
    for p in procs:
        p.start()
    time.sleep(0.5 + 0.1 * clients)
    t0 = time.monotonic()
    go.set()
    got = [q.get(timeout=seconds + 120) for _ in procs]
    dt = time.monotonic() - t0
    for p in procs:
        p.join()
    lat = np.concatenate([np.asarray(g[0]) for g in got]) * 1000.0
    return {
        "client": "Python (http.client), one process each",
        "clients": clients,
        "requests_per_s": len(lat) / dt,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "non_2xx": sum(g[1] for g in got),
    }


def ms(value: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", value)
    assert m, value
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]


def run_wrk(wrk: str, base: str, script: Path, connections: int, seconds: float) -> dict:
    out = subprocess.run(
        [
            wrk,
            f"-t{min(2, connections)}",
            f"-c{connections}",
            f"-d{seconds:.0f}s",
            "--latency",
            "-s",
            str(script),
            base,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "connections": connections,
        "requests_per_s": rps,
        "p50_ms": ms(lat["50"]),
        "p99_ms": ms(lat["99"]),
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


async def seed(redis_url: str, n: int, seed_: int) -> str:
    store = RedisStore(redis_url)
    await store.connect()
    fences = pastures(n, seed_)
    for i in range(0, len(fences), 2000):
        await store.put_fences(fences[i : i + 2000])
    await store.create_tenant("farm-000", "Farm 0")
    key = "bench-" + os.urandom(8).hex()
    await store.add_api_key("farm-000", key)
    await store.close()
    return key


def main() -> int:
    ap = argparse.ArgumentParser(prog="./dev bench-pull", description=__doc__.splitlines()[0])
    ap.add_argument("--fences", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2, help="API processes")
    ap.add_argument(
        "--interface", choices=("asgi", "rsgi"), default="asgi", help="granian interface (FENCEX_INTERFACE)"
    )
    ap.add_argument("--connections", default="8,32,64,128")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument(
        "--python-clients", default="", help="also GET /query/fences from this many Python processes (e.g. 1,4)"
    )
    ap.add_argument("--batches", type=int, default=5, help="batches of --batch-points for POST /query/fences")
    ap.add_argument("--batch-points", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="out/bench")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wrk = need_wrk()
    redis = start_redis(logdir=out / "logs")
    proc = None
    try:
        redis_url = f"redis://{redis.address}/0"
        say(f"seeding {args.fences:,} fences")
        key = asyncio.run(seed(redis_url, args.fences, args.seed))
        port = free_port()
        env = dict(
            os.environ,
            FENCEX_REDIS_URL=redis_url,
            FENCEX_PORT=str(port),
            FENCEX_HOST="127.0.0.1",
            FENCEX_WORKERS=str(args.workers),
            FENCEX_INTERFACE=args.interface,
            FENCEX_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",
            FENCEX_LOG_LEVEL="warning",
        )
        with (out / "logs" / "api.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.api"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {key}"}
        deadline = time.monotonic() + 60
        while True:  # ready when every worker answers with the index loaded (readyz also wants a broker)
            try:
                if (
                    httpx.get(f"{base}/query/fences", params={"lon": 17.301, "lat": 59.601}, headers=auth).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                sys.exit("the API did not start; see out/bench/logs/api.log")
            time.sleep(0.2)
        time.sleep(2)
        farm_w = 10 * CELL_LON
        script = Path(tempfile.mkstemp(suffix=".lua")[1])
        script.write_text(
            LUA
            % {
                "key": key,
                "seed": args.seed,
                "lon0": ORIGIN_LON,
                "dlon": farm_w,
                "lat0": ORIGIN_LAT,
                "dlat": 10 * CELL_LAT,
            }
        )
        runs = []
        for c in (int(x) for x in args.connections.split(",")):
            say(f"GET /query/fences with {c} connections for {args.seconds:.0f} s")
            r = run_wrk(wrk, base, script, c, args.seconds)
            say(f"  {r['requests_per_s']:,.0f} requests/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms")
            runs.append(r)
        python = []
        for c in (int(x) for x in args.python_clients.split(",") if x):
            say(f"GET /query/fences from {c} Python client process(es) for {args.seconds:.0f} s")
            r = run_python(port, key, c, args.seconds)
            say(f"  {r['requests_per_s']:,.0f} requests/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms")
            python.append(r)
        rng = np.random.default_rng(args.seed)
        pts = (
            np.column_stack(
                (
                    ORIGIN_LON + rng.uniform(0, farm_w, args.batch_points),
                    ORIGIN_LAT + rng.uniform(0, 10 * CELL_LAT, args.batch_points),
                )
            )
            .round(6)
            .tolist()
        )
        body = orjson.dumps({"points": pts})
        times = []
        with httpx.Client(base_url=base, headers=auth, timeout=60) as client:
            for _ in range(args.batches):
                t = time.perf_counter()
                r = client.post("/query/fences", content=body, headers={"content-type": "application/json"})
                times.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
                matches = r.json()["matches"]
        batch = {
            "points": args.batch_points,
            "seconds": times,
            "points_per_s": args.batch_points / float(np.median(times)),
            "matches": matches,
        }
        say(
            f"POST /query/fences: {batch['points_per_s']:,.0f} points/s ({args.batch_points:,} a request, "
            f"{matches:,} matches, median {np.median(times) * 1000:.0f} ms)"
        )
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        redis.stop()
    results = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "fences": args.fences,
        "api_workers": args.workers,
        "api_interface": args.interface,
        "point": runs,
        "python": python,
        "batch": batch,
        "note": "wrk runs on the same two cores as the API",
    }
    (out / "pull.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    plot(results, out / "pull.png")
    best = max(runs, key=lambda r: r["requests_per_s"])
    print(f"\nfencex pull benchmark, {results['date']}, {results['machine']}")
    print(f"  {args.fences:,} fences, {args.workers} API processes (granian), wrk on the same machine")
    for r in runs:
        print(
            f"  GET /query/fences, {r['connections']:>3} connections: {r['requests_per_s']:>8,.0f} req/s, "
            f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, non-2xx {r['non_2xx']}"
        )
    print(f"  best: {best['requests_per_s']:,.0f} req/s at p99 {best['p99_ms']:.1f} ms")
    print(f"  POST /query/fences: {batch['points_per_s']:,.0f} points/s in batches of {args.batch_points:,}")
    print(f"  wrote {out / 'pull.json'} and {out / 'pull.png'}")
    return 0


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    runs = results["point"]
    c = [r["connections"] for r in runs]
    a.plot(c, [r["requests_per_s"] for r in runs], "o-", label="fencex (wrk)")
    peers = results.get("peers")  # measured in the same run (bench.evaluate --with-peers), else quoted
    if peers:
        for (name, pts), style in zip(peers["point"].items(), ("s--", "^:", "v-.")):
            a.plot([p[0] for p in pts], [p[1] for p in pts], style, color="#888", label=f"{name} (this run)")
    else:
        a.axhline(25_000, color="#888", linestyle="--", label="PostGIS, 4 clients (25,000; quoted, not this run)")
    a.axhline(12_000, color="#bbb", linestyle=":", label="FenceX thesis (12,000)")
    a.set_xscale("log", base=2)
    a.set_xlabel("concurrent connections")
    a.set_ylabel("GET /query/fences per second")
    ax2 = a.twinx()
    ax2.plot(c, [r["p99_ms"] for r in runs], "s--", color="tab:red", label="p99 ms")
    ax2.set_ylabel("p99 latency (ms)", color="tab:red")
    a.legend(loc="lower right", fontsize=8)
    a.set_title(f"Point queries, {results['fences']:,} fences, {results['api_workers']} API processes", fontsize=10)
    if peers:
        names = ["fencex batch", *(f"{k}\n(this run)" for k in peers["batch"])]
        vals = [results["batch"]["points_per_s"], *peers["batch"].values()]
    else:
        names = ["fencex batch", "PostGIS batched\n1,000/statement\n(quoted)", "Tile38 pipelined\n(quoted)"]
        vals = [results["batch"]["points_per_s"], 76_000, 107_000]
    bars = b.bar(names, vals, color=["#2a7"] + ["#888"] * (len(vals) - 1))
    b.bar_label(bars, labels=[f"{v:,.0f}" for v in vals])
    b.set_ylabel("points per second")
    b.set_title("Batch point-in-fence (spatial join)", fontsize=10)
    fig.suptitle(f"fencex pull benchmark, {results['date']}, {results['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())

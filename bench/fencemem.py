"""python -m bench.fencemem: what a worker's fences cost it in memory, a fence, as records and as index.

The scale command's paddocks (``bench.scaleload``: 5 to 50 vertices, about 0.9 KB of JSON a fence)
are stored as JSON, then read back as the follower reads them, in a child process each way (RSS
deltas, after a garbage collection): ``full``, every field and the GeoJSON coordinates as Python
lists (``Fence.from_json``, what the follower kept before issue 15), and ``light``, the record without
its coordinates, its geometry built from the JSON's arrays (``Fence.from_json(light=True)``, what it
keeps now); then the fence index built from those records (``FenceIndex``).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(n: int, light: bool) -> dict[str, float]:
    """In this process: KB a fence of the records read, and of the index built from them."""
    from bench.scaleload import Country
    from fencex.fence import Fence
    from fencex.index import FenceIndex

    country = Country(max(1, n // 10), 10, 0)
    raws = [f.to_json() for farm in range(country.farms) for f in country.paddocks(farm)]
    gc.collect()
    r0, t0 = rss_mb(), time.perf_counter()
    fences = [Fence.from_json(r, light=light) for r in raws]
    gc.collect()
    r1, t1 = rss_mb(), time.perf_counter()
    index = FenceIndex(fences)
    gc.collect()
    r2, t2 = rss_mb(), time.perf_counter()
    assert len(index) == len(raws) and not index.quarantined
    k = 1024 / len(raws)
    return {
        "fences": len(raws),
        "json_kb": sum(len(r) for r in raws) / 1024 / len(raws),
        "records_kb": (r1 - r0) * k,
        "index_kb": (r2 - r1) * k,
        "total_kb": (r2 - r0) * k,
        "read_us": (t1 - t0) * 1e6 / len(raws),
        "build_us": (t2 - t1) * 1e6 / len(raws),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fencemem", description=__doc__.splitlines()[0])
    ap.add_argument("--fences", type=int, default=100_000)
    ap.add_argument("--child", choices=["full", "light"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.fences, args.child == "light")))
        return 0
    for how in ("full", "light"):
        out = subprocess.run(
            [sys.executable, "-m", "bench.fencemem", "--fences", str(args.fences), "--child", how],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout)
        print(
            f"{how:>5}: {r['fences']:,} fences ({r['json_kb']:.2f} KB of JSON each): records {r['records_kb']:.2f} KB, "
            f"index {r['index_kb']:.2f} KB, both {r['total_kb']:.2f} KB a fence; read {r['read_us']:.0f} us, "
            f"index built {r['build_us']:.0f} us a fence"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m bench.index: the fence index alone, today's against a baseline, in the same run.

Farms of 10 paddocks (``--per-farm``), each paddock a polygon of 5 to 50 vertices in a grid of
cells about 220 m across (the simulator's layout), and 20,000 collars each at home in one paddock.
For each size (``--sizes``, default 10,000 and 100,000 fences), both indexes:

- build: every fence, from its GeoJSON (what a worker does when it starts);
- change: one fence of one farm changed (what a worker does for each fence change);
- lookups: batches of 500 fixes of random collars (the push path: ``lookup_counted`` with a tenant per
  fix, then the fence ids per fix), the two indexes taking turns batch by batch, their answers compared;
- memory (``--memory``): the RSS a fresh process grows by for the index (and for the fences themselves),
  each index in a child process of its own, before and after every fence has been tested once (the
  geometries are prepared as lookups first touch them).

The baseline is the index module at a git revision (``--baseline``, default the last unsharded one),
loaded from git; ``--baseline none`` measures today's alone (for the million-fence run).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.scaleload import paddock
from fencex.fence import Fence
from fencex.index import RELAY_AFTER, FenceIndex
from services.simulator.herd import CELL_LAT, CELL_LON, ORIGIN_LAT, ORIGIN_LON

UNSHARDED = "3a3a8f1"  # the last commit with the one-piece index
ROOT = Path(__file__).resolve().parent.parent


def paddocks(n: int, per_farm: int = 10, seed: int = 1) -> list[Fence]:
    """``n`` paddocks in farms of ``per_farm`` (tenant ``farm-N``), each a star-shaped polygon of 5 to 50
    vertices inside its grid cell; the farms' paddocks are neighbours (rows of ``per_farm``)."""
    rng = np.random.default_rng(seed)
    cols = max(per_farm, math.ceil(math.sqrt(n) / per_farm) * per_farm)
    out = []
    for i in range(n):
        r, c = divmod(i, cols)
        cx, cy = ORIGIN_LON + (c + 0.5) * CELL_LON, ORIGIN_LAT + (r + 0.5) * CELL_LAT
        k = int(rng.integers(5, 51))
        a = np.sort(rng.uniform(0, 2 * math.pi, k))
        rad = rng.uniform(0.3, 0.45, k)
        ring = [
            [round(cx + x * CELL_LON, 7), round(cy + y * CELL_LAT, 7)] for x, y in zip(np.cos(a) * rad, np.sin(a) * rad)
        ]
        ring.append(ring[0])
        out.append(paddock(f"paddock-{i:07d}", f"farm-{i // per_farm:06d}", f"Paddock {i}", ring, 300.0))
    return out


def collars(fences: list[Fence], n: int, seed: int = 2) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``n`` collars' positions (near their home paddock's centre) and tenants."""
    rng = np.random.default_rng(seed)
    home = rng.integers(0, len(fences), n)
    cx = np.array([np.mean([p[0] for p in fences[h].geometry["coordinates"][0]]) for h in home.tolist()])
    cy = np.array([np.mean([p[1] for p in fences[h].geometry["coordinates"][0]]) for h in home.tolist()])
    lon = cx + rng.normal(0, 0.3, n) * CELL_LON
    lat = cy + rng.normal(0, 0.3, n) * CELL_LAT
    return lon, lat, [fences[h].tenant for h in home.tolist()]


def baseline(rev: str) -> Any:
    """The index module as it was at ``rev`` (its class ``FenceIndex``), loaded from git."""
    text = subprocess.run(
        ["git", "show", f"{rev}:fencex/index.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "index_baseline.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("index_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def changed(fences: list[Fence]) -> tuple[list[Fence], Fence]:
    """The fences with one (in the middle) moved a little, at its next version."""
    i = len(fences) // 2
    f = fences[i]
    ring = [[x + 0.00001, y] for x, y in f.geometry["coordinates"][0]]
    new = f.model_copy(update={"version": 2, "geometry": {"type": "Polygon", "coordinates": [ring]}})
    out = list(fences)
    out[i] = new
    return out, new


def new_ids(index: FenceIndex, lon: np.ndarray, lat: np.ndarray, tenants: list[str]) -> list[tuple[str, ...]]:
    return index.lookup_counted(lon, lat, tenants)[0]


def old_ids(index: Any, lon: np.ndarray, lat: np.ndarray, tenants: list[str]) -> list[tuple[str, ...]]:
    rows, _ = index.lookup_counted(lon, lat, tenants)
    fences = index.fences
    return [tuple(fences[r].id for r in found) if found else () for found in rows]


def lookups(
    indexes: dict[str, tuple[Any, Any]], lon: np.ndarray, lat: np.ndarray, tenants: list[str], rounds: int
) -> dict[str, float]:
    """Fixes/s of each index over the same batches of 500 random collars, taking turns batch by batch."""
    rng = np.random.default_rng(3)
    spent = dict.fromkeys(indexes, 0.0)
    answers: dict[str, list[tuple[str, ...]]] = {}
    for _ in range(rounds):
        pick = rng.integers(0, len(lon), 500)
        x, y, t = lon[pick], lat[pick], [tenants[i] for i in pick.tolist()]
        for name, (index, ids) in indexes.items():
            started = time.perf_counter()
            answers[name] = ids(index, x, y, t)
            spent[name] += time.perf_counter() - started
        first = next(iter(answers.values()))
        assert all(a == first for a in answers.values()), "the indexes disagree"
    return {name: rounds * 500 / s for name, s in spent.items()}


def relay(index: FenceIndex) -> str:
    """The changes of :data:`RELAY_AFTER` + 1 farms, one after another: the last lays the base again."""
    took = []
    for tenant in sorted(index.farms)[: RELAY_AFTER + 1]:
        farm = [f.model_copy(update={"version": 2}) if i == 0 else f for i, f in enumerate(index.farm(tenant).fences)]
        started = time.perf_counter()
        index = index.with_farms({tenant: farm}, 1)
        took.append(time.perf_counter() - started)
    return f"median {np.median(took) * 1000:.1f} ms, the last (laying the base again) {took[-1] * 1000:.1f} ms"


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def memory_child(which: str, n: int, per_farm: int, rev: str) -> dict[str, float]:
    """In a fresh process: RSS for the fences, the index built, then every fence tested once."""
    impl = FenceIndex if which == "new" else baseline(rev).FenceIndex
    gc.collect()
    start = rss()
    fences = paddocks(n, per_farm)
    gc.collect()
    after_fences = rss()
    started = time.perf_counter()
    index = impl(fences)
    build = time.perf_counter() - started
    gc.collect()
    after_index = rss()
    out = {"fences": (after_fences - start) / n, "index": (after_index - after_fences) / n, "build_s": build}
    _, new = changed(fences)
    started = time.perf_counter()
    if which == "new":
        index.with_farms({new.tenant: [new if f.id == new.id else f for f in index.farm(new.tenant).fences]}, 1)
    else:
        impl(changed(fences)[0], 1, previous=index)
    out["change_s"] = time.perf_counter() - started
    centres = [tuple(np.mean(f.geometry["coordinates"][0][:-1], axis=0)) for f in fences]
    for at in range(0, n, 10_000):  # every fence tested exactly once: all prepared
        chunk = centres[at : at + 10_000]
        index.lookup([c[0] for c in chunk], [c[1] for c in chunk], [f.tenant for f in fences[at : at + 10_000]])
    gc.collect()
    out["prepared"] = (rss() - after_fences) / n
    out["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    out["rss_gb"] = rss() / 1024**3
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000", help="fence counts, comma-separated")
    ap.add_argument("--per-farm", type=int, default=10)
    ap.add_argument("--devices", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=400, help="batches of 500 fixes per index")
    ap.add_argument("--baseline", default=UNSHARDED, help="git revision of the index to compare with, or none")
    ap.add_argument("--memory", action="store_true", help="also measure memory, in child processes")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(memory_child(a.child[0], int(a.child[1]), a.per_farm, a.baseline)))
        return 0
    old = baseline(a.baseline) if a.baseline != "none" else None
    for n in (int(s) for s in a.sizes.split(",")):
        fences = paddocks(n, a.per_farm)
        print(f"\n{n:,} fences in farms of {a.per_farm}, {a.devices:,} collars")
        built: dict[str, tuple[Any, Any]] = {}
        for name in ("old", "new") if old is not None else ("new",):
            gc.collect()
            started = time.perf_counter()
            index = FenceIndex(fences) if old is None or name == "new" else old.FenceIndex(fences)
            build = time.perf_counter() - started
            moved, new = changed(fences)
            started = time.perf_counter()
            if old is not None and name == "old":
                old.FenceIndex(moved, 1, previous=index)
            else:
                farm = [new if f.id == new.id else f for f in index.farm(new.tenant).fences]
                index.with_farms({new.tenant: farm}, 1)
            change = time.perf_counter() - started
            print(f"  {name}: build {build:7.2f} s   change {change * 1000:9.1f} ms")
            if name == "new":
                print(f"       changes of {RELAY_AFTER + 1} farms one by one: {relay(index)}")
            built[name] = (index, old_ids if name == "old" else new_ids)
        lon, lat, tenants = collars(fences, a.devices)
        rates = lookups(built, lon, lat, tenants, a.rounds)
        inside = sum(1 for h in new_ids(built["new"][0], lon, lat, tenants) if h) / len(lon)
        line = "   ".join(f"{name} {r:,.0f} fixes/s" for name, r in rates.items())
        ratio = f"   new/old {rates['new'] / rates['old']:.2f}" if "old" in rates else ""
        print(f"  lookups, batches of 500 ({inside:.0%} of collars inside a paddock): {line}{ratio}")
        del built
        if a.memory:
            for name in ("old", "new") if old is not None else ("new",):
                cmd = [sys.executable, "-m", "bench.index", "--child", name, str(n), "--per-farm", str(a.per_farm)]
                got = json.loads(
                    subprocess.run(
                        [*cmd, "--baseline", a.baseline], check=True, capture_output=True, text=True, cwd=ROOT
                    ).stdout
                )
                print(
                    f"  {name} (fresh process): build {got['build_s']:.2f} s, change {got['change_s'] * 1000:.1f} ms; "
                    f"RSS a fence: {got['fences']:.0f} B the fence itself, {got['index']:.0f} B the index, "
                    f"{got['prepared']:.0f} B the index once every fence is prepared; "
                    f"the process: {got['rss_gb']:.2f} GB, at most {got['peak_gb']:.2f} GB"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The peers in the same run (issue 16, item 1): fencex against Tile38 and PostGIS on one workload.

Push: one seeded workload of fixes (``make_workload``: every collar one step a round, one fix a
record) goes to fencex through the broker (1 and 2 workers drain it) and to Tile38 (1 and 4
client processes, ``bench.tile38.push``). The enters and exits must be the same three times over:
the pure pipeline's over those fixes, each fencex run's (read back from its events topic, by
``event_id``) and each Tile38 run's (its channel messages): the same multiset of (type, collar,
fence, fix time). Only enter and exit are compared (fencex's dwell and herd events have no Tile38
counterpart). Both start with every collar outside everything (fencex: no state; Tile38: an
emptied collection) and both give ``enter`` on a first fix inside a fence. A difference fails the
run.

Ratios: every fencex figure over the best peer measured in the same run in the same class of
client (``ratio_rows``); written to the JSON, the report's table and ``ratios.png``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from confluent_kafka import Consumer

from bench import tile38
from bench.tile38 import Key, Workload
from fencex.fence import Fence
from fencex.fix import Fix
from fencex.index import FenceIndex
from fencex.kafka.admin import ensure_topics
from fencex.pipeline import default_rules, process
from services.simulator.herd import CELL_LAT, CELL_LON, ORIGIN_LAT, ORIGIN_LON, Herd

if TYPE_CHECKING:
    from bench.evaluate import Evaluation

COMPARED = ("enter", "exit")
P99_LIMIT_MS = 10.0  # the pull target: a rate with p99 under this


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ pure parts


def make_workload(fences: list[Fence], devices: int, fixes: int, seed: int, step_ms: int, origin_ms: int) -> Workload:
    """``fixes`` fixes of ``devices`` collars of a fresh seeded herd: rounds in which every collar
    moves one step (the last round: the first collars only), ``step_ms`` apart in fix time."""
    herd = Herd(devices, fences, seed)
    n = len(herd.ids)
    rounds = -(-fixes // n)
    dev, ts, lon, lat = [], [], [], []
    for r in range(rounds):
        idx = np.arange(min(n, fixes - r * n))
        x, y = herd.step(idx)
        dev.append(idx)
        ts.append(np.full(len(idx), origin_ms + r * step_ms, dtype=np.int64))
        lon.append(np.round(x, 7))
        lat.append(np.round(y, 7))
    return Workload(
        list(herd.ids),
        list(herd.tenant),
        np.concatenate(dev).astype(np.int64),
        np.concatenate(ts),
        np.concatenate(lon),
        np.concatenate(lat),
    )


def expected_events(work: Workload, fences: list[Fence]) -> Counter[Key]:
    """fencex's pure pipeline over the workload, every collar without state: its enters and exits."""
    devices, tenants = work.devices, work.tenants
    fixes = [
        Fix(devices[d], t, x, y)
        for d, t, x, y in zip(work.dev.tolist(), work.ts.tolist(), work.lon.tolist(), work.lat.tolist())
    ]
    tenant_of = dict(zip(devices, tenants))
    out = process(fixes, FenceIndex(fences), {}, lambda d: tenant_of[d], default_rules)
    return Counter((e.type, e.device_id, e.fence_id, e.ts_ms) for e in out.events if e.type in COMPARED)


def compare(expected: Counter[Key], got: Iterable[Key], samples: int = 5) -> dict[str, Any]:
    """Whether ``got`` is the same multiset of enters and exits as ``expected``; what differs."""
    seen = Counter(k for k in got if k[0] in COMPARED)
    missing, extra = expected - seen, seen - expected
    return {
        "agree": not missing and not extra,
        "expected": {t: sum(n for k, n in expected.items() if k[0] == t) for t in COMPARED},
        "got": {t: sum(n for k, n in seen.items() if k[0] == t) for t in COMPARED},
        "missing": sum(missing.values()),
        "extra": sum(extra.values()),
        "missing_sample": [list(k) for k in sorted(missing)[:samples]],
        "extra_sample": [list(k) for k in sorted(extra)[:samples]],
    }


def best(candidates: Mapping[str, float | None]) -> tuple[str, float] | None:
    """The highest measured figure and whose it is (None or non-positive: not measured)."""
    measured = [(v, k) for k, v in candidates.items() if v is not None and v > 0 and v == v]
    if not measured:
        return None
    v, k = max(measured)
    return k, v


def ratio_row(
    measure: str, fencex: tuple[str, float | None], peers: Mapping[str, float | None], unit: str, target: float | None
) -> dict[str, Any]:
    """One line of the ratios table: fencex's figure over the best peer's, each with its client named."""
    top = best(peers)
    value = fencex[1]
    ratio = value / top[1] if top is not None and value is not None and value > 0 else None
    return {
        "measure": measure,
        "unit": unit,
        "fencex": fencex[0],
        "fencex_value": value,
        "peer": top[0] if top else None,
        "peer_value": top[1] if top else None,
        "peers": dict(peers),
        "ratio": ratio,
        "target": target,
        "met": None if ratio is None or target is None else ratio >= target,
    }


def _get(d: Any, *path: Any) -> Any:
    for p in path:
        if d is None:
            return None
        try:
            d = d[p]
        except (KeyError, IndexError, TypeError):
            return None
    return d


def over_rsgi(pull: dict[str, Any]) -> str:
    """How a run's API served the point query, when not the default (ASGI)."""
    return ", granian RSGI (FENCEX_INTERFACE=rsgi)" if pull.get("interface") == "rsgi" else ""


def ratio_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's comparisons from a run's results (rows without a peer measured have ratio None)."""
    rows: list[dict[str, Any]] = []
    pp = results.get("push_peers") or {}
    t38 = results.get("tile38") or {}
    pg = results.get("postgis") or {}
    pl = results.get("pull") or {}
    t_push = {
        f"Tile38, {r['clients']} Python client process(es), pipelined {r['batch']:,}": r["fixes_per_s"]
        for r in t38.get("push", [])
    }
    for run, target in zip(pp.get("fencex", []), (1.6, 2.5)):
        rows.append(
            ratio_row(
                f"push, one fix a record, {run['workers']} worker(s)",
                (f"fencex, {run['workers']} worker(s), backlog from a librdkafka producer", run["fixes_per_s"]),
                t_push,
                "fixes/s",
                target,
            )
        )
    py = {r["clients"]: r for r in pl.get("python", [])}
    t_py = {r["clients"]: r for r in t38.get("pull_python", [])}
    for c in sorted(py):
        peers = {f"Tile38, {c} Python client(s), RESP": _get(t_py, c, "requests_per_s")}
        peers[f"PostGIS, {c} Python client(s)"] = pg.get(f"point_per_s_{c}_clients")
        rows.append(
            ratio_row(
                f"pull, one point a request, {c} Python client(s)",
                (f"fencex, {c} Python client(s), HTTP", py[c]["requests_per_s"]),
                peers,
                "requests/s",
                None,
            )
        )
    wrk = pl.get("point") or []
    bench = t38.get("pull_c") or []
    if wrk:
        # the target: at least the best peer's rate with p99 under P99_LIMIT_MS: fencex's best such run
        within = [r for r in wrk if r["p99_ms"] < P99_LIMIT_MS]
        top = max(within or wrk, key=lambda r: r["requests_per_s"])
        row = ratio_row(
            "pull, one point a request, C client, best connection count",
            (
                f"fencex, wrk, {top['connections']} connections{over_rsgi(pl)} (p99 {top['p99_ms']:.1f} ms)",
                top["requests_per_s"],
            ),
            {
                f"Tile38, redis-benchmark, {r['connections']} connections (p99 {r['p99_ms']:.1f} ms)": r[
                    "requests_per_s"
                ]
                for r in bench
            },
            "requests/s",
            1.0,
        )
        row["p99_limit_ms"] = P99_LIMIT_MS
        if row["met"] is not None:
            row["met"] = row["met"] and top["p99_ms"] < P99_LIMIT_MS
        rows.append(row)
    batch = _get(pl, "batch", "points_per_s")
    if batch:
        peers = {
            f"Tile38, pipelined {r['batch']:,}, {r['clients']} Python client(s)": r["points_per_s"]
            for r in t38.get("pull_pipelined", [])
        }
        peers["PostGIS, 1,000 a statement, 1 Python client"] = pg.get("batch_points_per_s")
        rows.append(
            ratio_row(
                "pull, batched points",
                (f"fencex, POST {pl['batch']['points']:,} points a request, 1 Python client", batch),
                peers,
                "points/s",
                10.0,
            )
        )
    return rows


def pull_peers(results: Mapping[str, Any]) -> dict[str, Any] | None:
    """The peers' pull figures of a run, for bench.pull's plot: one point a request by connections
    (Tile38's C client; PostGIS's and Tile38's Python clients by client count), and batched."""
    t38 = results.get("tile38") or {}
    pg = results.get("postgis") or {}
    point: dict[str, list[tuple[int, float]]] = {}
    if t38.get("pull_c"):
        point["Tile38, redis-benchmark"] = [(r["connections"], r["requests_per_s"]) for r in t38["pull_c"]]
    if t38.get("pull_python"):
        point["Tile38, Python clients"] = [(r["clients"], r["requests_per_s"]) for r in t38["pull_python"]]
    if "point_per_s_1_clients" in pg:
        point["PostGIS, Python clients"] = [(c, pg[f"point_per_s_{c}_clients"]) for c in (1, 4)]
    batch = {f"Tile38 pipelined {r['batch']:,}": r["points_per_s"] for r in t38.get("pull_pipelined", [])}
    if "batch_points_per_s" in pg:
        batch["PostGIS 1,000/statement"] = pg["batch_points_per_s"]
    return {"point": point, "batch": batch} if point or batch else None


def ratios_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| measure | fencex (client) | best peer in this run (client) | ratio | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        fx = "not measured" if r["fencex_value"] is None else f"{r['fencex_value']:,.0f} {r['unit']}: {r['fencex']}"
        peer = "none measured" if r["peer"] is None else f"{r['peer_value']:,.0f} {r['unit']}: {r['peer']}"
        ratio = "n/a" if r["ratio"] is None else f"**{r['ratio']:.2f}x**"
        target = ""
        if r["target"] is not None:
            limit = f", p99 < {r['p99_limit_ms']:g} ms" if r.get("p99_limit_ms") else ""
            verdict = {None: "", True: " (met)", False: " (not met)"}[r["met"]]
            target = f">= {r['target']:g}x{limit}{verdict}"
        lines.append(f"| {r['measure']} | {fx} | {peer} | {ratio} | {target} |")
    return lines


def check_lines(pp: Mapping[str, Any]) -> list[str]:
    """The correctness check, as the report states it."""
    if not pp:
        return []
    lines = [
        f"Same enters and exits: the pure pipeline over the {pp['fixes']:,} fixes expects "
        f"{pp['expected']['enter']:,} enters and {pp['expected']['exit']:,} exits; each run below must give "
        "exactly that multiset of (type, collar, fence, fix time).",
        "",
        "| run | enters | exits | missing | extra | agrees |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, check in pp.get("checks", {}).items():
        lines.append(
            f"| {name} | {check['got']['enter']:,} | {check['got']['exit']:,} | {check['missing']:,} | "
            f"{check['extra']:,} | {'yes' if check['agree'] else '**NO**'} |"
        )
    return lines


def failures(results: Mapping[str, Any]) -> list[str]:
    """The runs whose events differ from the expected ones: any makes the evaluation fail."""
    checks = _get(results, "push_peers", "checks") or {}
    return [name for name, c in checks.items() if not c["agree"]]


# ------------------------------------------------------------------ running


def produce(ev: Evaluation, topic: str, work: Workload) -> None:
    p = ev.producer()
    devices = work.devices
    for d, t, x, y in zip(work.dev.tolist(), work.ts.tolist(), work.lon.tolist(), work.lat.tolist()):
        key = devices[d]
        value = orjson.dumps({"device_id": key, "ts": t, "lon": x, "lat": y})
        while True:
            try:
                p.produce(topic, value, key=key)
                break
            except BufferError:
                p.poll(0.05)
    p.flush(120)


def read_events(bootstrap: str, topic: str, expected: int, timeout: float = 120) -> tuple[list[Key], int]:
    """The enters and exits on ``topic``, one per ``event_id``, and how many duplicates were dropped:
    until ``expected`` of them and 2 s without a new one, or 10 s without one, or ``timeout``."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"eval-peers-read-{time.time()}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    c.subscribe([topic])
    keys: dict[str, Key] = {}
    dups = 0
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        msgs = c.consume(5000, 0.5)
        for m in msgs:
            if m.error():
                continue
            e = orjson.loads(m.value() or b"{}")
            if e["type"] not in COMPARED:
                continue
            if e["event_id"] in keys:
                dups += 1
                continue
            ts = round(datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp() * 1000)
            keys[e["event_id"]] = (e["type"], e["device_id"], e["fence_id"], ts)
        if msgs:
            quiet_since = time.monotonic()
        quiet = time.monotonic() - quiet_since
        if (len(keys) >= expected and quiet > 2) or quiet > 10:
            break
    c.close()
    return list(keys.values()), dups


def fencex_push(
    ev: Evaluation, work: Workload, expected: Counter[Key], workers: list[int]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The workload through the broker, drained by each count of ``workers`` from no device state."""
    topic = "eval-peers"
    ensure_topics(ev.bootstrap, {topic: 12})
    t = time.monotonic()
    produce(ev, topic, work)
    say(f"peers: {len(work):,} fixes produced, one a record, in {time.monotonic() - t:.1f} s")
    rows: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    total = sum(expected.values())
    for n in workers:
        tag = f"peers-{n}-{int(time.time())}"
        events = f"eval-peers-events-{n}"
        ensure_topics(ev.bootstrap, {events: 12})
        prefix = f"peers{n}"  # no device state: every collar starts outside everything
        asyncio.run(ev.seed(prefix))
        ports = [ev.start_worker(topic, f"{tag}-{i}", events, group=tag, prefix=prefix) for i in range(n)]
        rate, samples = ev.time_drain(ports, len(work), f"fencex push, {n} worker(s)")
        if rate <= 0 and len(samples) > 1:  # too short to time from 5 % on: the whole drain, as sampled
            rate = samples[-1][1] / max(samples[-1][0] - samples[0][0], 0.1)
        got, dups = read_events(ev.bootstrap, events, total)
        ev.stop_workers()
        name = f"fencex, {n} worker(s)"
        checks[name] = compare(expected, got) | {"duplicates_dropped": dups}
        rows.append({"workers": n, "fixes_per_s": rate, "fixes": len(work)})
        say(f"  {name}: {rate:,.0f} fixes/s; events agree: {checks[name]['agree']}")
    return rows, checks


def tile38_push(
    port: int, work: Workload, expected: Counter[Key], clients: list[int]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    for c in clients:
        tile38.reset(port, work.tenants)
        run = tile38.push(port, work, c, sum(expected.values()))
        name = f"Tile38, {c} client(s)"
        checks[name] = compare(expected, run.pop("keys"))
        rows.append(run)
        say(
            f"  {name}: {run['fixes_per_s']:,.0f} fixes/s ({run['messages']:,} of {run['messages_expected']:,} "
            f"messages, {run['errors']} errors); events agree: {checks[name]['agree']}"
        )
    return rows, checks


def pull_points(n: int, seed: int) -> list[str]:
    """Random points in farm 0, as bench.pull's wrk script sends."""
    return tile38.points(n, seed, ORIGIN_LON, 10 * CELL_LON, ORIGIN_LAT, 10 * CELL_LAT)


def tile38_pull(
    port: int, seconds: float, clients: list[int], connections: list[int], seed: int, install: bool = False
) -> dict[str, Any]:
    out: dict[str, Any] = {"pull_python": [], "pull_c": [], "pull_pipelined": []}
    pts = pull_points(200_000, seed)
    for c in clients:
        r = tile38.pull_python(port, pts, c, seconds)
        out["pull_python"].append(r)
        say(f"  Tile38 INTERSECTS, {c} Python client(s): {r['requests_per_s']:,.0f}/s, p99 {r['p99_ms']:.2f} ms")
    tool = tile38.redis_benchmark(install)
    if tool is None:
        out["pull_c_skipped"] = "no redis-benchmark" + (" (a tiny run installs nothing)" if not install else "")
        out["pull_c_skipped"] += ": apt-get install redis-tools"
        say(f"  Tile38 C client skipped: {out['pull_c_skipped']}")
    else:
        per_s = max((r["requests_per_s"] for r in out["pull_python"]), default=10_000.0)
        for c in connections:
            # redis-benchmark counts requests, not seconds: a probe of about a second at the last rate
            # seen, then about ``seconds`` at the probe's rate
            probe = tile38.pull_c(port, tool, c, max(2_000, int(per_s)), ORIGIN_LON, ORIGIN_LAT)
            r = tile38.pull_c(port, tool, c, max(5_000, int(probe["requests_per_s"] * seconds)), ORIGIN_LON, ORIGIN_LAT)
            per_s = r["requests_per_s"]
            out["pull_c"].append(r)
            say(f"  Tile38 INTERSECTS, redis-benchmark, {c} connections: {per_s:,.0f}/s, p99 {r['p99_ms']:.2f} ms")
    r = tile38.pull_pipelined(port, pts, max(clients), seconds)
    out["pull_pipelined"].append(r)
    say(f"  Tile38 INTERSECTS pipelined {r['batch']:,}, {r['clients']} clients: {r['points_per_s']:,.0f} points/s")
    return out


def plot(results: Mapping[str, Any], out: Path) -> list[Path]:
    """ratios.png: each fencex figure over the best peer of the run, with the target."""
    rows = results.get("ratios") or []
    if not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, a = plt.subplots(figsize=(11, 0.9 + 0.8 * len(rows)))
    ys = np.arange(len(rows))[::-1]
    vals = [r["ratio"] or 0.0 for r in rows]
    colors = ["#2a7" if (r["ratio"] or 0) >= max(1.0, r["target"] or 1.0) else "#c84" for r in rows]
    bars = a.barh(ys, vals, color=colors)
    a.bar_label(
        bars,
        labels=[
            "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}x vs {(r['peer'] or '').split(',')[0]}" for r in rows
        ],
        fontsize=8,
        padding=3,
    )
    for y, r in zip(ys, rows):
        if r["target"]:
            a.plot([r["target"]] * 2, [y - 0.4, y + 0.4], color="black", linestyle="--")
    a.axvline(1.0, color="gray", linewidth=0.8)
    a.set_yticks(ys, [r["measure"] for r in rows], fontsize=8)
    a.set_xlabel("fencex / best peer measured in the same run (dashed: the issue's target)")
    a.set_xlim(0, max([*vals, *(r["target"] or 0 for r in rows), 1.0]) * 1.35)
    a.set_title(f"fencex against its peers, {results.get('date', '')}", fontsize=10)
    fig.tight_layout()
    path = out / "ratios.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]

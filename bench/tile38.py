"""Tile38, the best-known open geofence server, driven on the evaluation's workload (``bench.peers``).

The binary: ``--tile38 PATH``, else ``$FENCEX_TILE38``, else ``../shared/peers/tile38-server`` beside
the repository (a Tile38 1.26.1 build; see that folder's README). Started on a free loopback port
without persistence. It speaks RESP: redis-py with ``protocol=2`` and no response callbacks.

- fences: ``SET fences <id> OBJECT <geometry>``;
- push: one channel per fence, ``SETCHAN <fence> WITHIN fleet:<farm> FENCE DETECT enter,exit OBJECT
  <geometry>``, a ``PSUBSCRIBE *`` subscriber, and ``SET fleet:<farm> <collar> POINT <lat> <lon> <ts>``
  per fix from 1 or more client processes (each a share of the collars, so a collar's fixes stay in
  order), pipelined. fencex tests a collar against its own farm's fences only; Tile38 has no farms,
  so each farm's collars are a collection of their own and its fences' channels watch that one:
  the same fence tests, the same events. The third coordinate (Tile38's z) carries the fix's time,
  so each message names its fix;
- pull: ``INTERSECTS fences IDS OBJECT {"type":"Point",...}``, one point a request from Python
  client processes and from ``redis-benchmark`` (Debian's redis-tools, a C client like wrk), and
  pipelined in batches from Python.

What Tile38 does with a collar's first fix (checked on 1.26.1): a new object inside a fence gives
``enter`` (it starts outside everything), as fencex does for a collar it has no state of. A
collection dropped with ``DROP`` keeps its channels, and its objects start outside again.
"""

# mypy: disable-error-code="no-untyped-call"
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis

from devtools.localserver import HOST, Server, _start, free_port
from fencex.fence import Fence

ROOT = Path(__file__).parents[1]
ENV = "FENCEX_TILE38"
DEFAULT = ROOT.parent / "shared" / "peers" / "tile38-server"
FENCES = "fences"
Key = tuple[str, str, str, int]  # (type, device, fence, fix time ms): one enter or exit


def find(flag: str | None = None) -> tuple[Path | None, str]:
    """The Tile38 binary to use and where it was found, or None and why there is none."""
    for where, value in (("--tile38", flag), (f"${ENV}", os.environ.get(ENV)), ("default", str(DEFAULT))):
        if not value:
            continue
        path = Path(value)
        if path.is_file() and os.access(path, os.X_OK):
            return path, f"{path} ({where})"
        if where != "default":
            return None, f"{where} names {path}, which is not an executable file"
    return None, f"no Tile38 binary: none at {DEFAULT}, no ${ENV}, no --tile38"


def fleet(tenant: str) -> str:
    """The collection of one farm's collars."""
    return f"fleet:{tenant}"


def client(port: int) -> redis.Redis:
    r = redis.Redis(host=HOST, port=port, protocol=2, socket_timeout=120)
    r.response_callbacks.clear()
    return r


def start(binary: Path, logdir: Path | None = None) -> Server:
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="fencex-tile38-"))
    argv = [str(binary), "-h", HOST, "-p", str(port), "-d", str(work / "data")]
    argv += ["--appendonly", "no", "--queuefilename", str(work / "queue.db")]
    server = _start("tile38", argv, port, logdir, 20.0, workdir=work)
    deadline = time.monotonic() + 20
    while True:  # listening is not yet answering: it loads its (empty) data first
        try:
            if client(port).execute_command("PING") == b"PONG":
                return server
        except redis.RedisError:
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.1)


def server_info(port: int) -> dict[str, str]:
    """``SERVER``'s fields (its ``version``: 0.0.0 for a build that was not stamped, as the shared 1.26.1)."""
    raw = client(port).execute_command("SERVER")
    return {k.decode(): v.decode() if isinstance(v, bytes) else str(v) for k, v in zip(raw[::2], raw[1::2])}


def load_fences(port: int, fences: Sequence[Fence], chunk: int = 1000) -> None:
    """The fences as objects (for pull) and one enter/exit channel each (for push)."""
    r = client(port)
    for k in range(0, len(fences), chunk):
        pipe = r.pipeline(transaction=False)
        for f in fences[k : k + chunk]:
            geo = orjson.dumps(f.geometry, option=orjson.OPT_SERIALIZE_NUMPY).decode()
            pipe.execute_command("SET", FENCES, f.id, "OBJECT", geo)
            pipe.execute_command(
                "SETCHAN", f.id, "WITHIN", fleet(f.tenant), "FENCE", "DETECT", "enter,exit", "OBJECT", geo
            )
        for reply in pipe.execute(raise_on_error=True):
            if isinstance(reply, bytes) and reply.startswith(b"-"):
                raise RuntimeError(f"tile38 refused a fence: {reply!r}")


def reset(port: int, tenants: Iterable[str]) -> None:
    """Drop the collars (their channels stay): each collar starts outside everything again."""
    r = client(port)
    pipe = r.pipeline(transaction=False)
    for t in sorted(set(tenants)):
        pipe.execute_command("DROP", fleet(t))
    pipe.execute()


# ------------------------------------------------------------------ push


def _gather(q: Any, procs: Sequence[Any], timeout: float) -> list[Any]:
    """One item from ``q`` per process; a process that died first (an exception in it) or a timeout
    raises at once, rather than leaving the evaluation waiting."""
    import queue

    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < len(procs):
        try:
            got.append(q.get(timeout=0.5))
            continue
        except queue.Empty:
            pass
        dead = [p for p in procs if p.exitcode not in (None, 0)]
        if dead:
            raise RuntimeError(f"tile38: a client process failed (exit code {dead[0].exitcode}); see the output above")
        if time.monotonic() > deadline:
            raise TimeoutError(f"tile38: {len(procs) - len(got)} of {len(procs)} client processes did not report")
    return got


@dataclass(frozen=True)
class Workload:
    """Fixes in the order they are sent: ``dev`` indexes ``devices``/``tenants``."""

    devices: list[str]
    tenants: list[str]
    dev: np.ndarray
    ts: np.ndarray
    lon: np.ndarray
    lat: np.ndarray

    def __len__(self) -> int:
        return len(self.dev)

    def share(self, i: int, of: int) -> np.ndarray:
        """The positions of client ``i``'s fixes (of ``of`` clients): every fix of its collars, in order."""
        return np.flatnonzero(self.dev % of == i)


_WORK: Workload | None = None  # the workload, inherited by the forked client processes


def _parse(data: bytes) -> Key | None:
    m = orjson.loads(data)
    detect = m.get("detect")
    if detect not in ("enter", "exit"):
        return None
    return (detect, m["id"], m["hook"], int(m["object"]["coordinates"][2]))


def _subscriber(port: int, expected: int, ready: Any, stop: Any, count: Any, last: Any, out: Any) -> None:
    """Collect the channel messages until ``stop``; ``count`` and ``last`` (its clock) show progress.
    Reads the raw connection (hiredis parses) and keeps each message's bytes, parsed after the run,
    so the subscriber is not what limits Tile38. Reports the enters and exits and the time the
    ``expected``-th message came (None: it never did)."""
    conn = redis.Connection(host=HOST, port=port, protocol=2, socket_timeout=None)
    conn.connect()
    conn.send_command("PSUBSCRIBE", "*")
    conn.read_response()  # the subscription's confirmation
    ready.set()
    raw: list[bytes] = []
    t_expected = None
    while not stop.is_set():
        if not conn.can_read(timeout=0.1):
            continue
        while True:  # everything already here
            m = conn.read_response(disable_decoding=True)
            if isinstance(m, list) and m and m[0] == b"pmessage":
                raw.append(m[3])
            if not conn.can_read(timeout=0):
                break
        last.value = time.monotonic()
        count.value = len(raw)
        if t_expected is None and len(raw) >= expected:
            t_expected = last.value
    conn.disconnect()
    keys = [k for k in map(_parse, raw) if k is not None]
    out.put((keys, t_expected))


def _push_client(port: int, i: int, of: int, batch: int, ready: Any, go: Any, out: Any) -> None:
    work = _WORK
    assert work is not None
    sel = work.share(i, of)
    conn = redis.Connection(host=HOST, port=port, protocol=2)
    conn.connect()
    devices, tenants = work.devices, work.tenants
    chunks = []
    for k in range(0, len(sel), batch):
        part = sel[k : k + batch]
        cmds = [
            ("SET", fleet(tenants[d]), devices[d], "POINT", repr(y), repr(x), str(t))
            for d, t, x, y in zip(
                work.dev[part].tolist(), work.ts[part].tolist(), work.lon[part].tolist(), work.lat[part].tolist()
            )
        ]
        chunks.append((conn.pack_commands(cmds), len(cmds)))
    ready.put(i)
    go.wait()
    errors = 0
    for packed, n in chunks:
        conn.send_packed_command(packed, check_health=False)
        for _ in range(n):
            try:
                conn.read_response(disable_decoding=True)
            except redis.ResponseError:
                errors += 1
    conn.disconnect()
    out.put((i, time.monotonic(), errors))


def push(
    port: int, work: Workload, clients: int, expected: int, batch: int = 1000, quiet_s: float = 5.0
) -> dict[str, Any]:
    """Send ``work`` from ``clients`` processes, ``batch`` commands a round trip; fixes/s = fixes / time
    until every fix is answered and the subscriber has the ``expected``-th enter/exit message. It keeps listening until
    ``quiet_s`` without a message (more than expected would show in the comparison); if the
    expected number never comes, the time is to the last message (and the events differ)."""
    global _WORK
    ctx = mp.get_context("fork")
    ready_sub, stop = ctx.Event(), ctx.Event()
    count, last = ctx.RawValue("q", 0), ctx.RawValue("d", 0.0)
    sub_out: Any = ctx.Queue()
    sub = ctx.Process(target=_subscriber, args=(port, expected, ready_sub, stop, count, last, sub_out), daemon=True)
    sub.start()
    if not ready_sub.wait(30):
        sub.kill()
        raise RuntimeError("tile38: the subscriber did not subscribe")
    ready: Any = ctx.Queue()
    go = ctx.Event()
    done: Any = ctx.Queue()
    _WORK = work
    procs = [
        ctx.Process(target=_push_client, args=(port, i, clients, batch, ready, go, done), daemon=True)
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    _WORK = None
    _gather(ready, procs, 300)
    t0 = time.monotonic()
    go.set()
    ends = _gather(done, procs, 900)
    for p in procs:
        p.join()
    sent_at = max(e[1] for e in ends)
    while True:  # after the sending: until quiet_s without a message, past the expected count or not
        time.sleep(0.1)
        if time.monotonic() - max(last.value, sent_at) > (0.5 if count.value >= expected else quiet_s):
            break
    stop.set()
    keys, t_expected = _gather(sub_out, [sub], 120)[0]
    sub.join(10)
    # done when every fix is answered and every expected message is in (or, short of them, the last one)
    end = max(sent_at, t_expected if t_expected is not None else last.value)
    dt = max(end - t0, 1e-9)
    return {
        "clients": clients,
        "client": "Python (redis-py), pipelined" if batch > 1 else "Python (redis-py)",
        "batch": batch,
        "fixes": len(work),
        "seconds": dt,
        "send_seconds": sent_at - t0,
        "fixes_per_s": len(work) / dt,
        "errors": sum(e[2] for e in ends),
        "messages": len(keys),
        "messages_expected": expected,
        "keys": keys,
    }


# ------------------------------------------------------------------ pull


def points(n: int, seed: int, lon0: float, dlon: float, lat0: float, dlat: float) -> list[str]:
    rng = np.random.default_rng(seed)
    xs = (lon0 + rng.uniform(0, dlon, n)).round(6).tolist()
    ys = (lat0 + rng.uniform(0, dlat, n)).round(6).tolist()
    return [f'{{"type":"Point","coordinates":[{x},{y}]}}' for x, y in zip(xs, ys)]


def _point_client(port: int, pts: list[str], seconds: float, go: Any, out: Any) -> None:
    r = client(port)
    r.execute_command("INTERSECTS", FENCES, "IDS", "OBJECT", pts[0])
    go.wait()
    lat: list[float] = []
    end = time.monotonic() + seconds
    n = 0
    while n % 64 or time.monotonic() < end:  # the clock read every 64 requests
        t = time.perf_counter()
        r.execute_command("INTERSECTS", FENCES, "IDS", "OBJECT", pts[n % len(pts)])
        lat.append(time.perf_counter() - t)
        n += 1
    out.put(lat)


def _pipelined_client(port: int, pts: list[str], seconds: float, batch: int, go: Any, out: Any) -> None:
    conn = redis.Connection(host=HOST, port=port, protocol=2)
    conn.connect()
    packed = [
        conn.pack_commands([("INTERSECTS", FENCES, "IDS", "OBJECT", p) for p in pts[k : k + batch]])
        for k in range(0, len(pts) - batch + 1, batch)
    ]
    go.wait()
    end = time.monotonic() + seconds
    n = matches = 0
    while time.monotonic() < end:
        conn.send_packed_command(packed[(n // batch) % len(packed)], check_health=False)
        for _ in range(batch):
            reply = conn.read_response()
            matches += len(reply[1]) if isinstance(reply, list) else 0
        n += batch
    conn.disconnect()
    out.put((n, matches))


def _run_clients(target: Any, args_of: Any, clients: int, seconds: float) -> tuple[list[Any], float]:
    ctx = mp.get_context("fork")
    go = ctx.Event()
    out: Any = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_of(i), go, out), daemon=True) for i in range(clients)]
    for p in procs:
        p.start()
    time.sleep(0.5 + 0.1 * clients)  # connected and ready
    t0 = time.monotonic()
    go.set()
    got = _gather(out, procs, seconds + 120)
    dt = time.monotonic() - t0
    for p in procs:
        p.join()
    return got, dt


def pull_python(port: int, pts: list[str], clients: int, seconds: float) -> dict[str, Any]:
    """One point a request, each of ``clients`` processes waiting for its answer before the next."""
    got, dt = _run_clients(_point_client, lambda i: (port, pts[i::clients] or pts, seconds), clients, seconds)
    lat = np.concatenate([np.asarray(g) for g in got]) * 1000.0
    return {
        "client": "Python (redis-py), one process each",
        "clients": clients,
        "requests_per_s": len(lat) / dt,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def pull_pipelined(port: int, pts: list[str], clients: int, seconds: float, batch: int = 1000) -> dict[str, Any]:
    """Batches of ``batch`` point queries a round trip (RESP pipelining), from ``clients`` processes."""
    got, dt = _run_clients(_pipelined_client, lambda i: (port, pts[i::clients], seconds, batch), clients, seconds)
    total = sum(g[0] for g in got)
    return {
        "client": "Python (redis-py), pipelined",
        "clients": clients,
        "batch": batch,
        "points_per_s": total / dt,
        "matches": sum(g[1] for g in got),
    }


def redis_benchmark(install: bool = False) -> str | None:
    """redis-benchmark (Debian's redis-tools): installed first when missing, ``install`` and we may."""
    found = shutil.which("redis-benchmark")
    if found or not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print("tile38: installing Debian's redis-tools for redis-benchmark", flush=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "redis-tools"],
        check=False,
        stdout=subprocess.DEVNULL,
        env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
    )
    return shutil.which("redis-benchmark")


def pull_c(port: int, tool: str, connections: int, requests: int, lon0: float, lat0: float) -> dict[str, Any]:
    """``redis-benchmark`` (C, one point a request a connection, like wrk): random points from its
    ``__rand_int__`` (12 digits appended: lon0..lon0+0.01, lat0..lat0+0.01, so lon0/lat0 have two decimals)."""
    point = f'{{"type":"Point","coordinates":[{lon0:.2f}__rand_int__,{lat0:.2f}__rand_int__]}}'
    argv = [tool, "-h", HOST, "-p", str(port), "-c", str(connections), "-n", str(requests)]
    if connections > 1:  # as many client threads as bench.pull gives wrk: min(2, connections)
        argv += ["--threads", str(min(2, connections))]
    argv += ["-r", "1000000000000", "--csv", "INTERSECTS", FENCES, "IDS", "OBJECT", point]
    text = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=900).stdout
    return parse_csv(text) | {"client": "C (redis-benchmark)", "connections": connections, "requests": requests}


def parse_csv(text: str) -> dict[str, Any]:
    """redis-benchmark --csv's last line: "test","rps","avg","min","p50","p95","p99","max"."""
    line = [x for x in text.strip().splitlines() if x.strip()][-1]
    fields = [f.strip('"') for f in line.rsplit(",", 7)[1:]]
    rps, _avg, _min, p50, _p95, p99, _max = (float(f) for f in fields)
    return {"requests_per_s": rps, "p50_ms": p50, "p99_ms": p99}

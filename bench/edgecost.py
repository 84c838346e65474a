"""The Python cost of one point query at the API's edge, over ASGI and over RSGI, in one process (no server).

    python -m bench.edgecost [--fences 10000] [--rounds 40] [--batch 2000] [--profile asgi|rsgi]

One app (``create_app``, the pull benchmark's fences and points, one farm's key, the key cache warm)
answers the same requests through its ASGI edge (``ApiEdge``) and its RSGI edge (``RsgiEdge``).
granian's part is stood in for by the cheapest Python objects that do it: for ASGI a scope dict
and a ``send`` that records the message and returns a finished awaitable (as granian's does, from
Rust); for RSGI a scope object with the same fields and a ``response_bytes`` that records the
answer. So "app" is the Python the app itself runs a request, and "scope" what building the
request's scope costs in Python (granian builds it in Rust: cheaper, but not free, and under the GIL).

Rounds interleave the variants (in a shuffled order each round) so that drift of the machine
falls on both; each round times ``--batch`` requests one after another in one event loop. It
prints each variant's median per request with its interquartile range, and the per-round ratio.
``--profile`` runs one variant's batches under cProfile instead and prints where the time goes.
It answers nothing about throughput under a real server (granian's Rust side, the sockets, wrk):
that is the pull benchmark's job.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import numpy as np

from fencex.index import FenceIndex
from services.api.app import create_app
from services.api.fastpath import ApiEdge
from services.api.rsgi import RsgiEdge
from services.api.settings import Settings
from services.simulator.herd import CELL_LAT, CELL_LON, ORIGIN_LAT, ORIGIN_LON, pastures

KEY = "bench-key"
TENANT = "farm-000"


class Done:
    """A finished awaitable, as granian's ``send`` returns."""

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield


DONE = Done()


class RsgiScope:
    __slots__ = ("authority", "client", "headers", "http_version", "method", "path", "query_string", "scheme", "server")

    def __init__(self, query: str) -> None:
        self.http_version = "1.1"
        self.server = "127.0.0.1:8000"
        self.client = "127.0.0.1:50123"
        self.scheme = "http"
        self.method = "GET"
        self.path = "/query/fences"
        self.query_string = query
        self.headers = {"host": "127.0.0.1:8000", "authorization": f"Bearer {KEY}"}
        self.authority = None


class RsgiProto:
    __slots__ = ("answers",)

    def __init__(self) -> None:
        self.answers: list[tuple[int, bytes]] = []

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.answers.append((status, body))


def asgi_scope(query: str) -> dict[str, Any]:
    """The scope granian's ASGI side builds for the request (the same fields, in Python here)."""
    return {
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "extensions": {"http.response.pathsend": {}},
        "type": "http",
        "http_version": "1.1",
        "server": ("127.0.0.1", "8000"),
        "client": ("127.0.0.1", "50123"),
        "scheme": "http",
        "path": "/query/fences",
        "raw_path": b"/query/fences",
        "query_string": query.encode(),
        "headers": [(b"host", b"127.0.0.1:8000"), (b"authorization", f"Bearer {KEY}".encode())],
        "method": "GET",
        "root_path": "",
        "state": {},
    }


def build(fences: int) -> tuple[ApiEdge, RsgiEdge]:
    edge = create_app(Settings(rate_limit_per_s=1e12, rate_limit_burst=1e12))  # the limiter runs, never refuses

    async def tenant_for_key(key: str) -> str | None:
        return TENANT if key == KEY else None

    edge.state.store.tenant_for_key = tenant_for_key  # type: ignore[method-assign,assignment]
    edge.state.follower.index = FenceIndex(pastures(fences, 1))
    edge.state.ready = True
    return edge, RsgiEdge(edge)


def queries(n: int, seed: int) -> list[str]:
    """Points over the farm's paddocks, as the pull benchmark's wrk script asks (bench/pull.py)."""
    rng = np.random.default_rng(seed)
    lon = ORIGIN_LON + rng.random(n) * 10 * CELL_LON
    lat = ORIGIN_LAT + rng.random(n) * 10 * CELL_LAT
    return [f"lon={x:.6f}&lat={y:.6f}" for x, y in zip(lon, lat, strict=True)]


def variants(edge: ApiEdge, rsgi: RsgiEdge, qs: list[str]) -> dict[str, Callable[[], Coroutine[Any, Any, float]]]:
    """Each variant: a batch of requests, timed; the seconds it took."""
    sent: list[Any] = []

    def send(message: Any) -> Done:
        sent.append(message)
        return DONE

    async def receive() -> dict[str, Any]:
        raise AssertionError("the point query reads no body")

    async def asgi_app() -> float:
        scopes = [asgi_scope(q) for q in qs]
        sent.clear()
        t = time.perf_counter()
        for s in scopes:
            await edge(s, receive, send)
        took = time.perf_counter() - t
        assert len(sent) == 2 * len(qs) and sent[0]["status"] == 200
        return took

    async def rsgi_app() -> float:
        scopes = [RsgiScope(q) for q in qs]
        proto = RsgiProto()
        t = time.perf_counter()
        for s in scopes:
            await rsgi.__rsgi__(s, proto)  # type: ignore[arg-type]
        took = time.perf_counter() - t
        assert len(proto.answers) == len(qs) and proto.answers[0][0] == 200
        return took

    async def asgi_scopes() -> float:
        t = time.perf_counter()
        for q in qs:
            asgi_scope(q)
        return time.perf_counter() - t

    async def rsgi_scopes() -> float:
        t = time.perf_counter()
        for q in qs:
            RsgiScope(q)
        return time.perf_counter() - t

    return {"asgi app": asgi_app, "rsgi app": rsgi_app, "asgi scope": asgi_scopes, "rsgi scope": rsgi_scopes}


def same_answers(edge: ApiEdge, rsgi: RsgiEdge, qs: list[str]) -> None:
    """Both edges answer each point alike (else the figures compare different work)."""
    got: list[bytes] = []

    async def run() -> None:
        out: list[Any] = []

        def send(message: Any) -> Done:
            out.append(message)
            return DONE

        for q in qs:
            out.clear()
            await edge(asgi_scope(q), None, send)  # type: ignore[arg-type]
            proto = RsgiProto()
            await rsgi.__rsgi__(RsgiScope(q), proto)  # type: ignore[arg-type]
            assert out[1]["body"] == proto.answers[0][1], q
            got.append(proto.answers[0][1])

    asyncio.run(run())
    hits = sum(b'"id"' in b for b in got)
    print(f"{len(qs)} points answered alike over both; {hits} inside a fence", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.edgecost", description=__doc__.splitlines()[0])
    ap.add_argument("--fences", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", choices=("asgi", "rsgi"), help="profile this interface's point query instead")
    a = ap.parse_args()
    edge, rsgi = build(a.fences)
    qs = queries(a.batch, a.seed)
    same_answers(edge, rsgi, qs[:200])
    runs = variants(edge, rsgi, qs)
    if a.profile:
        return profile(runs[f"{a.profile} app"], a.rounds)
    per: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    shuffle = random.Random(a.seed)
    loop = asyncio.new_event_loop()
    try:
        for name in order:  # warm up
            loop.run_until_complete(runs[name]())
        for _ in range(a.rounds):
            shuffle.shuffle(order)
            for name in order:
                per[name].append(loop.run_until_complete(runs[name]()) / a.batch * 1e6)
    finally:
        loop.close()
    print(f"{a.rounds} rounds of {a.batch} point queries, {a.fences} fences; µs a request: median [q1, q3]")
    for name, us in per.items():
        q1, _, q3 = statistics.quantiles(us, n=4)
        print(f"  {name:11s} {statistics.median(us):7.2f}  [{q1:.2f}, {q3:.2f}]")
    ratio = [r / s for r, s in zip(per["rsgi app"], per["asgi app"], strict=True)]
    q1, _, q3 = statistics.quantiles(ratio, n=4)
    print(f"  rsgi app / asgi app, per round: median {statistics.median(ratio):.3f} [{q1:.3f}, {q3:.3f}]")
    return 0


def profile(run: Callable[[], Coroutine[Any, Any, float]], rounds: int) -> int:
    import cProfile
    import pstats

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run())
        with cProfile.Profile() as prof:
            for _ in range(rounds):
                loop.run_until_complete(run())
    finally:
        loop.close()
    pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())

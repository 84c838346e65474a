"""FENCEX_WORKERS=2 (issue 14, item 5): the API as two granian processes, and one scrape of /metrics
counts what both did: a counter is the sum over the processes (a dead one's counts included), the
gauges are aggregated per gauge (up: every process ready; memory: the processes' sum) with no `pid`
label, and a dead process's gauges leave the scrape."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import ADMIN_KEY, wait_api

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SQUARE = {
    "type": "Polygon",
    "coordinates": [[[17.60, 59.80], [17.61, 59.80], [17.61, 59.81], [17.60, 59.81], [17.60, 59.80]]],
}
POINT = {"lon": 17.605, "lat": 59.805}
N = 600  # point queries, each on a fresh connection, 24 at a time: the kernel hands them to both processes
FLUSH_S = 1.0  # FENCEX_METRICS_FLUSH_S's default: how old another process's counts may be in a scrape


def scrape(base: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def point_queries(samples: dict) -> float:
    return value(samples, "fencex_http_requests_total", route="/query/fences", method="GET", status="200")


def children(parent: int) -> set[int]:
    """granian's worker processes: the children of the API's main process."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.add(int(entry))
    return found


def rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def per_process(folder: Path, kind: str = "counter") -> dict[int, dict]:
    """What each process wrote to the shared folder: pid -> its samples, read as one process's."""
    out = {}
    for f in sorted(folder.glob(f"{kind}_*.db")):
        pid = int(f.stem.rsplit("_", 1)[1])
        out[pid] = {
            (s.name, frozenset(s.labels.items())): s.value
            for m in MultiProcessCollector.merge([str(f)])
            for s in m.samples
        }
    return out


async def _queries(base: str, key: str, n: int, concurrency: int = 24) -> list[list[str]]:
    limits = httpx.Limits(max_keepalive_connections=0)  # a fresh connection for every request
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=10, limits=limits) as client:

        async def one() -> list[str]:
            async with gate:
                r = await client.get("/query/fences", params=POINT, headers={"Authorization": f"Bearer {key}"})
                r.raise_for_status()
                return [f["id"] for f in r.json()["fences"]]

        return await asyncio.gather(*(one() for _ in range(n)))


def settle(base: str, until, timeout: float = 10 * FLUSH_S) -> dict:
    """Scrape until ``until(samples)`` (other processes' counts arrive within the flush interval)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(base)
        if until(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def start(live, tmp_path: Path) -> tuple[object, str, str, Path]:
    folder = tmp_path / "metrics"
    proc, base = live.start_api(FENCEX_WORKERS="2", FENCEX_METRICS_DIR=str(folder))
    wait_api(base, proc)
    key = httpx.post(f"{base}/admin/tenants", json={"id": "farm"}, headers=ADMIN, timeout=5).json()["api_key"]
    fence = {"type": "Feature", "id": "north", "geometry": SQUARE, "properties": {}}
    r = httpx.post(f"{base}/fences", json=fence, headers={"Authorization": f"Bearer {key}"}, timeout=5)
    assert r.status_code == 201, r.text
    # both processes hold the fence (their indexes follow the change feed) before any query is counted
    deadline = time.monotonic() + 10
    while len(children(proc.pid)) < 2 or value(scrape(base), "fencex_api_fences_loaded") != 1:
        assert time.monotonic() < deadline, "the API's processes did not load the fence"
        time.sleep(0.1)
    return proc, base, key, folder


def test_one_scrape_counts_the_requests_of_both_processes(live, tmp_path):
    proc, base, key, folder = start(live, tmp_path)
    answers = asyncio.run(_queries(base, key, N))
    assert answers == [["north"]] * N

    samples = settle(base, lambda s: point_queries(s) >= N)
    assert point_queries(samples) == N, f"one scrape counted {point_queries(samples):.0f} of {N} point queries"
    assert value(samples, "fencex_queries_total", kind="point") == N
    assert value(samples, "fencex_http_request_duration_seconds_count", route="/query/fences") == N
    # ... and both processes answered some of them (each wrote its own counts)
    served = {pid: point_queries(s) for pid, s in per_process(folder).items()}
    assert len(served) == 2 and all(served.values()) and sum(served.values()) == N, served

    # the gauges: aggregated across the processes, never one series per process
    assert not [k for k in samples if "pid" in dict(k[1])]
    assert value(samples, "fencex_api_up") == 1  # every process is ready (the least of them), not 2
    assert value(samples, "fencex_api_fences_loaded") == 1
    workers = children(proc.pid)
    assert len(workers) == 2
    memory = value(samples, "process_resident_memory_bytes")  # the processes' sum
    assert 1.5 * max(rss(p) for p in workers) < memory < 1.5 * sum(rss(p) for p in workers), (memory, workers)


def test_a_dead_process_keeps_its_counts_and_loses_its_gauges(live, tmp_path):
    proc, base, key, folder = start(live, tmp_path)
    asyncio.run(_queries(base, key, N))
    assert point_queries(settle(base, lambda s: point_queries(s) >= N)) == N
    victim = min(children(proc.pid))
    assert per_process(folder, "gauge_livemin").get(victim), "the victim wrote no gauges"

    os.kill(victim, signal.SIGKILL)  # a crash: no goodbye; granian starts another process
    deadline = time.monotonic() + 20
    while True:  # until the new process is ready and has written its gauges (the victim's are forgotten)
        workers = children(proc.pid)
        try:
            samples = scrape(base)
        except httpx.HTTPError:
            samples = {}
        gauges = set(per_process(folder, "gauge_livemin"))
        if len(workers) == 2 and victim not in workers and gauges == workers and value(samples, "fencex_api_up") == 1:
            break
        assert time.monotonic() < deadline, f"processes {workers}, gauges of {gauges} (killed: {victim})"
        time.sleep(0.1)
    assert asyncio.run(_queries(base, key, N)) == [["north"]] * N

    samples = settle(base, lambda s: point_queries(s) >= 2 * N and value(s, "fencex_api_fences_loaded") == 1)
    # the dead process's counts stay in the sum (counters never go back) ...
    assert point_queries(samples) == 2 * N
    # ... and its gauges are gone: only the living count
    assert victim not in per_process(folder, "gauge_livemin")
    assert victim not in per_process(folder, "gauge_livesum")
    assert victim in per_process(folder)
    assert value(samples, "fencex_api_up") == 1
    memory = value(samples, "process_resident_memory_bytes")
    assert memory < 1.5 * sum(rss(p) for p in children(proc.pid)), memory

"""fencex.shared_metrics: several processes' in-memory metrics, copied to prometheus-client's
multiprocess files, read back by the library's collector as one process's sums."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from fencex import shared_metrics
from fencex.metrics import process_collectors
from fencex.shared_metrics import PROCESS_GAUGE_MODES, SharedMetrics, prepare
from services.api.app import create_app
from services.api.settings import Settings
from services.api.state import GAUGE_MODES

MODES = {"clients": "livesum", "up": "livemin", "loaded": "livemax"}
OPENED: list[SharedMetrics] = []


@pytest.fixture(autouse=True)
def _close_files() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().close()


class Gauges(Collector):
    """Read at scrape time, as the API's ApiCollector: a process's own state."""

    def __init__(self, clients: int, up: int, loaded: int, reloads: int) -> None:
        self.values = {"clients": clients, "up": up, "loaded": loaded, "other": loaded}
        self.reloads = reloads

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        for name, v in self.values.items():
            yield GaugeMetricFamily(name, f"{name} help", value=v)
        yield CounterMetricFamily("reloads", "reloads help", value=self.reloads)


def process(folder, pid: int, requests: dict[str, int], latencies: list[float], gauges: Gauges) -> SharedMetrics:
    registry = CollectorRegistry()
    c = Counter("requests", "requests help", ["route"], registry=registry)
    for route, n in requests.items():
        c.labels(route).inc(n)
    h = Histogram("latency_seconds", "latency help", ["route"], buckets=(0.01, 0.1, 1.0), registry=registry)
    for x in latencies:
        h.labels("/q").observe(x)
    registry.register(gauges)
    OPENED.append(SharedMetrics(registry, folder, MODES, pid=pid))
    return OPENED[-1]


def merged(folder) -> dict[tuple[str, frozenset], float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    return {(s.name, frozenset(s.labels.items())): s.value for m in registry.collect() for s in m.samples}


def test_two_processes_add_up_in_one_scrape(tmp_path):
    a = process(tmp_path, 101, {"/q": 3, "/f": 1}, [0.005, 0.05, 2.0], Gauges(2, 1, 10, reloads=1))
    b = process(tmp_path, 102, {"/q": 4}, [0.05, 0.5], Gauges(5, 0, 12, reloads=2))
    a.flush()
    b.flush()
    got = merged(tmp_path)
    # counters: the sum, per label set
    assert got[("requests_total", frozenset({("route", "/q")}))] == 7
    assert got[("requests_total", frozenset({("route", "/f")}))] == 1
    assert got[("reloads_total", frozenset())] == 3  # a counter read at scrape time too
    # histograms: cumulative buckets, count and sum of both
    q = frozenset({("route", "/q")})
    buckets = {le: got[("latency_seconds_bucket", q | {("le", le)})] for le in ("0.01", "0.1", "1.0", "+Inf")}
    assert buckets == {"0.01": 1, "0.1": 3, "1.0": 4, "+Inf": 5}
    assert got[("latency_seconds_count", q)] == 5
    assert got[("latency_seconds_sum", q)] == pytest.approx(2.605)
    # gauges: by their mode; one with none is kept per process
    assert got[("clients", frozenset())] == 7  # livesum
    assert got[("up", frozenset())] == 0  # livemin: not every process is ready
    assert got[("loaded", frozenset())] == 12  # livemax
    assert got[("other", frozenset({("pid", "101")}))] == 10 and got[("other", frozenset({("pid", "102")}))] == 12


def test_a_flush_writes_the_values_of_now(tmp_path):
    gauges = Gauges(1, 1, 1, reloads=0)
    a = process(tmp_path, 101, {"/q": 1}, [], gauges)
    a.flush()
    a.registry._names_to_collectors["requests"].labels("/q").inc(5)
    gauges.values["clients"] = 9
    assert merged(tmp_path)[("requests_total", frozenset({("route", "/q")}))] == 1  # not flushed yet
    a.flush()
    got = merged(tmp_path)
    assert got[("requests_total", frozenset({("route", "/q")}))] == 6 and got[("clients", frozenset())] == 9


def test_a_stopped_process_keeps_its_counts_and_drops_its_gauges(tmp_path):
    a = process(tmp_path, 101, {"/q": 3}, [0.05], Gauges(2, 1, 10, reloads=0))
    b = process(tmp_path, 102, {"/q": 4}, [], Gauges(5, 1, 12, reloads=0))
    a.flush()
    b.flush()
    b.close()
    b.flush()  # after close: nothing written
    got = merged(tmp_path)
    assert got[("requests_total", frozenset({("route", "/q")}))] == 7
    assert got[("clients", frozenset())] == 2 and got[("loaded", frozenset())] == 10
    assert ("other", frozenset({("pid", "102")})) not in got  # liveall too


def test_a_scrape_forgets_the_gauges_of_processes_that_died_without_stopping(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited (never stopped as a worker does)
    process(tmp_path, pid, {"/q": 4}, [], Gauges(5, 1, 12, reloads=0)).flush()
    me = process(tmp_path, os.getpid(), {"/q": 1}, [], Gauges(1, 1, 1, reloads=0))
    families = {
        s.name: s.value for f in text_string_to_metric_families(me.scrape().decode()) for s in f.samples if not s.labels
    }
    assert families["clients"] == 1 and families["loaded"] == 1  # the dead one's 5 and 12 are gone
    assert not list(tmp_path.glob(f"gauge_live*_{pid}.db"))
    assert list(tmp_path.glob(f"counter_{pid}.db"))


def test_one_process_scrapes_as_it_would_alone(tmp_path):
    """The files hold exactly what the registry holds: the API's metrics through them read the same."""
    registry = CollectorRegistry()
    c = Counter("requests", "requests help", ["route", "status"], registry=registry)
    c.labels("/q", "200").inc(41)
    c.labels("/q", "404").inc()
    h = Histogram("latency_seconds", "latency help", buckets=(0.001, 0.01, 0.1), registry=registry)
    for x in (0.0005, 0.002, 0.002, 0.05, 3.0):
        h.observe(x)
    process_collectors(registry)
    shared = SharedMetrics(registry, tmp_path, {}, pid=1)
    OPENED.append(shared)
    shared.flush()
    alone = {
        (s.name, frozenset(s.labels.items())): s.value
        for m in registry.collect()
        for s in m.samples
        if not s.name.endswith("_created") and m.name != "process_cpu_seconds" and m.type != "gauge"
    }
    through = {k: v for k, v in merged(tmp_path).items() if k[0].split("_")[0] in ("requests", "latency")}
    assert through == alone


def test_prepare_empties_an_earlier_runs_files(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    process(folder, 7, {"/q": 1}, [], Gauges(1, 1, 1, reloads=0)).flush()
    assert list(folder.glob("*.db"))
    (folder / "keep.txt").write_text("not ours")
    (folder / "counter_8.db.part").write_bytes(b"")  # one being made when its process was killed
    prepare(folder)
    assert not list(folder.glob("*.db*")) and (folder / "keep.txt").exists()
    assert prepare(tmp_path / "new").is_dir()


def test_every_gauge_of_the_api_says_how_its_processes_add_up():
    edge = create_app(Settings())
    gauges = {m.name for m in edge.state.registry.collect() if m.type == "gauge"}
    assert gauges and gauges <= set(GAUGE_MODES) | set(PROCESS_GAUGE_MODES), gauges - set(GAUGE_MODES)


def test_the_api_refuses_several_processes_without_a_folder():
    with pytest.raises(RuntimeError, match="FENCEX_METRICS_DIR"):
        create_app(Settings(workers=2))


FILL_A_TMPFS = r"""
import sys
from prometheus_client import CollectorRegistry, Counter
from fencex.shared_metrics import SharedMetrics

folder = sys.argv[1]
registry = CollectorRegistry()
c = Counter("requests", "requests help", ["route"], registry=registry)
shared = SharedMetrics(registry, folder, {}, pid=1)
for i in range(100_000):  # new series, each a new key in the file, until the folder is full
    c.labels(f"/route/{i:06d}/" + "x" * 200).inc()
    try:
        shared.flush()
    except OSError as exc:
        print("full after", i, "series:", exc, flush=True)
        break
else:
    sys.exit("never full")
print(shared.scrape().count(b"requests_total{"), "series scraped", flush=True)
"""


def test_a_full_tmpfs_is_an_error_not_a_crash(tmp_path):
    """prometheus-client's files are memory-mapped and grown by truncate, which a full tmpfs allows:
    the first write to a page the tmpfs cannot give killed the process with SIGBUS (the API's workers
    died one after the other, their metrics folder being a 16 MiB in-memory emptyDir). A full folder
    is an OSError the flush loop logs, and a scrape still answers."""
    folder = tmp_path / "small"
    folder.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(FILL_A_TMPFS)
    mount = f"mount -t tmpfs -o size=64k fencex-test {folder} && exec {sys.executable} {script} {folder}"
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True) if _has("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("a tmpfs of its own needs unshare -rm (user and mount namespaces)")
    root = str(Path(shared_metrics.__file__).parents[1])  # this checkout's fencex, not an installed one
    ran = subprocess.run(
        ["unshare", "-rm", "sh", "-c", mount],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert ran.returncode == 0, f"exit {ran.returncode} (SIGBUS is -7 / 135): {ran.stdout} {ran.stderr}"
    assert "full after" in ran.stdout and "series scraped" in ran.stdout, ran.stdout


def _has(program: str) -> bool:
    import shutil

    return shutil.which(program) is not None


def test_a_scrape_answers_when_the_folder_cannot_be_written(tmp_path, monkeypatch):
    other = process(tmp_path, 101, {"/q": 3}, [], Gauges(1, 1, 1, reloads=0))
    other.flush()
    me = process(tmp_path, os.getpid(), {"/q": 4}, [], Gauges(1, 1, 1, reloads=0))

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("fencex.shared_metrics.MmapedDict", full)
    body = me.scrape().decode()  # this process's part cannot be written: the others' still show
    assert 'requests_total{route="/q"} 3.0' in body


def test_a_file_that_cannot_be_made_leaves_nothing_behind(tmp_path, monkeypatch):
    """A file the folder has no room for was left empty: the library's collector cannot read an
    empty file (struct.error), so every process's /metrics failed from then on."""
    other = process(tmp_path, 101, {"/q": 3}, [], Gauges(1, 1, 1, reloads=0))
    other.flush()
    me = process(tmp_path, 102, {"/q": 4}, [], Gauges(1, 1, 1, reloads=0))

    def full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError):
        me.flush()
    assert not list(tmp_path.glob("*_102.db")), "half-made files"
    assert merged(tmp_path)[("requests_total", frozenset({("route", "/q")}))] == 3  # the scrape still reads
    monkeypatch.undo()
    me.flush()  # room again: this process's files are made and counted
    assert merged(tmp_path)[("requests_total", frozenset({("route", "/q")}))] == 7


@pytest.mark.parametrize(
    "key", ["", "k", "abc", "x" * 7, "ü" * 13, '["requests", "requests_total", {"route": "/q"}, "h"]']
)
def test_the_bytes_reserved_are_the_bytes_the_library_writes(tmp_path, key):
    """The reservation before a new entry must cover what MmapedDict then writes, to the byte: a
    library that laid its entries out otherwise would write into pages nobody reserved."""
    from prometheus_client.mmap_dict import MmapedDict

    file = MmapedDict(str(tmp_path / "f.db"))
    before = file._used
    file.write_value(key, 1.0, 0.0)
    assert file._used - before == shared_metrics._entry_size(key)
    file.close()


def test_closing_with_a_full_folder_does_not_raise(tmp_path, monkeypatch):
    """close() runs in the API's shutdown before the producer is stopped: an error there skipped
    the producer's stop (its flush), and the records it still held were dropped."""
    me = process(tmp_path, 101, {"/q": 1}, [], Gauges(1, 1, 1, reloads=0))
    me.flush()
    me.registry._names_to_collectors["requests"].labels("/new").inc()  # a new entry: needs room

    def full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    me.close()
    assert me.closed and not list(tmp_path.glob("gauge_live*_101.db"))

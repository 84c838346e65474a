"""Prometheus metrics of a service that runs as several processes (the API under granian with
``FENCEX_WORKERS`` over 1), answered in full by whichever process is scraped.

prometheus-client's multiprocess mode keeps each process's samples in memory-mapped files in one
folder and merges the files at scrape time (:class:`~prometheus_client.multiprocess.MultiProcessCollector`).
Set up as the library documents it (``PROMETHEUS_MULTIPROC_DIR`` before the first metric), every
``inc()`` and ``observe()`` writes its file: about three times an in-memory increment, on the point
query's path; and collectors that read state at scrape time (the API's gauges, CPU and memory) are
not merged at all. So each process keeps its metrics in memory as a single process does, and
:class:`SharedMetrics` copies its registry into that process's files, in the library's format,
every ``flush_s`` and just before it answers a scrape; the scrape merges every process's files
with the library's collector.

- Counters and histograms: each process writes its cumulative values and the scrape adds them up,
  those of processes that have exited included, so a sum never goes back. Another process's counts
  in a scrape are at most ``flush_s`` old.
- Gauges: each is aggregated across the processes by the mode given for it (``livesum``,
  ``livemin``, ``livemax``, ...); one without a mode keeps a series per process (``liveall``: a
  ``pid`` label). The ``live*`` files of a process are removed
  (:func:`~prometheus_client.multiprocess.mark_process_dead`) when it stops, or at the next scrape
  when it died without stopping (killed): a living process is a child of this one's parent (Linux).
- Dead processes' counter files stay until the folder is emptied at the next start: a few
  kilobytes each (a process replaced every hour leaves about 200 KB a week).
- A full folder is an error, logged, never a crash: the library grows its memory-mapped files with
  ``truncate``, which a full tmpfs allows, and the first write to a page the tmpfs cannot give
  kills the process (SIGBUS); so each file's pages are reserved (``posix_fallocate``) before they
  are written, and a folder that has no room fails that reservation (ENOSPC). The process then
  goes on serving; a scrape shows the others' counts and its own as of its last flush.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import _INITIAL_MMAP_SIZE, MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

log = logging.getLogger("fencex.metrics")

# How prometheus-client's own process and platform gauges add up over a service's processes.
PROCESS_GAUGE_MODES = {
    "process_resident_memory_bytes": "livesum",
    "process_virtual_memory_bytes": "livesum",
    "process_open_fds": "livesum",
    "process_max_fds": "livemin",
    "process_start_time_seconds": "livemax",  # the newest process: a replaced one shows as a restart
    "python_info": "livemax",
}
UNLISTED_GAUGE = "liveall"  # one series per process (a pid label): never a wrong sum
PART = ".part"  # a file being made (the collector reads only *.db)


def prepare(folder: str | Path) -> Path:
    """The shared folder, made if missing and emptied of an earlier run's files: call it once,
    before the processes start (a folder of the service's own: another run's files would be lost)."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    for pattern in ("*.db", f"*.db{PART}"):
        for f in path.glob(pattern):
            f.unlink()
    return path


class SharedMetrics:
    """One process's part: copies ``registry`` (this process's metrics, in memory) to its files
    in ``folder``; :meth:`scrape` answers for every process."""

    def __init__(
        self, registry: CollectorRegistry, folder: str | Path, gauge_modes: Mapping[str, str], pid: int | None = None
    ) -> None:
        self.registry = registry
        self.folder = str(folder)
        self.modes = {**PROCESS_GAUGE_MODES, **gauge_modes}
        self.pid = os.getpid() if pid is None else pid
        self.closed = False
        self._files: dict[str, Any] = {}  # file prefix -> MmapedDict
        self._fds: dict[str, int] = {}  # file prefix -> a descriptor to reserve its pages with
        self._reserving = True  # False on a file system with no fallocate (nothing to reserve with)
        self._keys: dict[tuple[str, str, tuple[tuple[str, str], ...]], str] = {}
        self._failing = False
        self.merged = CollectorRegistry()
        MultiProcessCollector(self.merged, path=self.folder)  # type: ignore[no-untyped-call]

    def flush(self) -> None:
        """Write this process's current values to its files."""
        if self.closed:
            return
        for family in self.registry.collect():
            if family.type == "counter":
                self._write(
                    "counter",
                    family,
                    ((s.name, s.labels, s.value) for s in family.samples if s.name.endswith("_total")),
                )
            elif family.type == "histogram":
                self._write("histogram", family, _buckets_apart(family))
            elif family.type == "gauge":
                mode = self.modes.get(family.name, UNLISTED_GAUGE)
                self._write(f"gauge_{mode}", family, ((s.name, s.labels, s.value) for s in family.samples))
            # summaries, info and state sets: the services have none (the multiprocess format has no place for them)

    def _write(self, prefix: str, family: Metric, samples: Iterable[tuple[str, dict[str, str], float]]) -> None:
        file = self._files.get(prefix)
        if file is None:
            file = self._open(prefix)
        keys = self._keys
        for name, labels, value in samples:
            cached = (family.name, name, tuple(labels.items()))
            key = keys.get(cached)
            if key is None:
                key = keys[cached] = mmap_key(
                    family.name, name, list(labels), list(labels.values()), family.documentation
                )
            if key not in file._positions:  # a new entry: its bytes at the end of the used part
                self._reserve(self._fds[prefix], file._used, _entry_size(key))
            file.write_value(key, value, 0.0)

    def _open(self, prefix: str) -> Any:
        path = os.path.join(self.folder, f"{prefix}_{self.pid}.db")
        if not os.path.exists(path):
            self._make(path)
        fd = os.open(path, os.O_RDWR)
        try:
            file = MmapedDict(path)  # type: ignore[no-untyped-call]
        except BaseException:
            os.close(fd)
            raise
        self._fds[prefix] = fd
        self._files[prefix] = file
        return file

    def _make(self, path: str) -> None:
        """A new file, whole or not at all: made aside and renamed into place, with the page of
        MmapedDict's header reserved. The library's collector reads every ``*.db`` of the folder
        and fails on an empty one (every scrape would), as one left by a full folder or a kill."""
        part = f"{path}{PART}"
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self._reserve(fd, 0, 8)
            os.ftruncate(fd, _INITIAL_MMAP_SIZE)  # the size MmapedDict gives a new file (the rest is sparse)
        except BaseException:
            os.close(fd)
            os.unlink(part)
            raise
        os.close(fd)
        os.rename(part, path)

    def _reserve(self, fd: int, offset: int, length: int) -> None:
        """The file's pages from ``offset`` for ``length`` bytes, in the file system: OSError
        (ENOSPC) when it has no room, where a write through the memory map would be SIGBUS."""
        if not self._reserving:
            return
        try:
            os.posix_fallocate(fd, offset, length)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            self._reserving = False

    def forget_dead(self) -> None:
        """Take the gauges of processes that died without stopping out of the scrape."""
        for f in Path(self.folder).glob("gauge_live*_*.db"):
            pid = int(f.stem.rsplit("_", 1)[1])
            if pid != self.pid and not _living_sibling(pid):
                mark_process_dead(pid, self.folder)  # type: ignore[no-untyped-call]

    def scrape(self) -> bytes:
        """Every process's metrics, this one's as of now (as of its last flush if the folder is
        full): the text of ``/metrics``."""
        self._try_flush()
        self.forget_dead()
        return generate_latest(self.merged)

    async def run(self, flush_s: float) -> None:
        """Flush every ``flush_s`` until cancelled (a full tmpfs is logged, and retried)."""
        while True:
            await asyncio.sleep(flush_s)
            self._try_flush()

    def _try_flush(self) -> None:
        try:
            self.flush()
        except OSError as exc:
            if not self._failing:
                log.warning("cannot write the shared metrics to %s: %s", self.folder, exc)
            self._failing = True
        else:
            if self._failing:
                log.info("writing the shared metrics to %s again", self.folder)
            self._failing = False

    def close(self) -> None:
        """This process stops: its last counts written (if there is room: a full folder is logged,
        never raised into the shutdown that still has a producer to stop), its gauges out of the scrape."""
        if self.closed:
            return
        try:
            self._try_flush()
        finally:
            self.closed = True
            for file in self._files.values():
                file.close()
            for fd in self._fds.values():
                os.close(fd)
            self._files.clear()
            self._fds.clear()
            mark_process_dead(self.pid, self.folder)  # type: ignore[no-untyped-call]


def _entry_size(key: str) -> int:
    """The bytes MmapedDict gives an entry: the key's length, the key padded to 8 bytes, value and timestamp."""
    encoded = len(key.encode("utf-8"))
    return 4 + encoded + (8 - (encoded + 4) % 8) + 16


def _buckets_apart(family: Metric) -> Iterable[tuple[str, dict[str, str], float]]:
    """A histogram as the multiprocess files hold it: each bucket's own count (not cumulative),
    and the sum; the collector adds the buckets up again and derives the count."""
    below: dict[tuple[tuple[str, str], ...], float] = {}
    for s in family.samples:
        if s.name.endswith("_bucket"):
            series = tuple((k, v) for k, v in s.labels.items() if k != "le")
            yield s.name, s.labels, s.value - below.get(series, 0.0)
            below[series] = s.value
        elif s.name.endswith("_sum"):
            yield s.name, s.labels, s.value


def _living_sibling(pid: int) -> bool:
    """Whether ``pid`` is alive and a child of this process's parent (so not a reused pid)."""
    if not os.path.exists("/proc/self/stat"):  # no procfs (not Linux): alive is enough
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    return state != "Z" and int(ppid) == os.getppid()

"""The local stack stops everything it started, whatever stops it (issue 9, defect 14).

A closed terminal (SIGHUP), ``timeout`` or a process manager (SIGTERM), Ctrl-C (SIGINT),
and, on Linux, even SIGKILL of the stack itself: afterwards no process the stack started
is alive and none of their ports is held.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from devtools.localserver import free_port, port_taken
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration
READY_LINE = "events as they happen"


class Stack:
    """``python -m devtools.stack`` in a subprocess, its output collected by a thread."""

    def __init__(self, tmp: Path) -> None:
        args = ["--workers", "1", "--fences", "20", "--devices", "40", "--rate", "20", "--quiet-events"]
        for name in ("kafka", "redis", "api", "prometheus"):
            args += [f"--{name}-port", str(free_port())]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devtools.stack", *args, "--logdir", str(tmp)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a signal reaches the stack alone, as from a process manager
        )
        self.lines: list[str] = []
        self.seen: dict[int, psutil.Process] = {}  # every descendant ever listed, for the clean-up
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_started(self, timeout: float = 120.0) -> None:
        """Until every piece answers: the stack printed its banner, the workers and API serve."""
        deadline = time.monotonic() + timeout
        while READY_LINE not in self.output:
            assert self.proc.poll() is None, f"the stack exited with {self.proc.returncode}:\n{self.output}"
            assert time.monotonic() < deadline, f"the stack did not start:\n{self.output}"
            time.sleep(0.1)
        ports = re.findall(r"(?:processor-\d+|api) +http://127\.0\.0\.1:(\d+)", self.output)
        urls = [f"http://127.0.0.1:{p}/healthz" for p in ports]
        assert len(urls) == 2, self.output
        for url in urls:
            while True:
                assert self.proc.poll() is None, f"the stack exited with {self.proc.returncode}:\n{self.output}"
                assert time.monotonic() < deadline, f"{url} did not answer:\n{self.output}"
                try:
                    if httpx.get(url, timeout=1.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)

    def descendants(self) -> list[psutil.Process]:
        found = psutil.Process(self.proc.pid).children(recursive=True)
        self.seen.update((p.pid, p) for p in found)
        return found


def listening_ports(procs: list[psutil.Process]) -> set[int]:
    ports = set()
    for p in procs:
        try:
            ports |= {c.laddr.port for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            pass
    return ports


def alive(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of ``procs`` still running after ``timeout`` seconds (a zombie counts as gone)."""
    _, still = psutil.wait_procs(procs, timeout=timeout)
    return [p for p in still if _running(p)]


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def stack(tmp_path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        # whatever the test left behind, so a failing run does not hold ports for the next one
        with contextlib.suppress(psutil.NoSuchProcess):
            s.descendants()
        if s.proc.poll() is None:
            s.proc.kill()
        s.proc.wait(10)
        s.reader.join(10)
        assert s.proc.stdout is not None
        s.proc.stdout.close()
        for p in s.seen.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()  # psutil checks the start time: never another process that took the pid


def command(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.NoSuchProcess:
        return f"pid {p.pid} (gone)"


@pytest.mark.parametrize(
    "sig",
    [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL],
    ids=["SIGINT", "SIGTERM", "SIGHUP", "SIGKILL"],
)
def test_a_stop_signal_stops_everything_the_stack_started(stack, sig):
    if sig == signal.SIGKILL and not sys.platform.startswith("linux"):
        pytest.skip("children die with the stack through prctl(PR_SET_PDEATHSIG), Linux only")
    stack.wait_started()
    children = stack.descendants()
    commands = " ".join(command(p) for p in children)
    pieces = ["tansu", "redis-server", "services.processor", "services.api", "services.simulator"]
    if "prometheus  http" in stack.output:
        pieces.append("prometheus")
    for piece in pieces:
        assert piece in commands, f"{piece} is not running: {commands}"
    ports = listening_ports(children)
    assert len(ports) >= len(pieces) - 1, ports  # every server, the simulator has no port

    os.kill(stack.proc.pid, sig)
    code = stack.proc.wait(60)

    left = alive(children, timeout=15)
    assert not left, f"still running after {sig.name}: {[command(p) for p in left]}"
    held = {p for p in ports if port_taken(p)}
    assert not held, f"ports still held after {sig.name}: {held}"
    if sig != signal.SIGKILL:
        assert code == 0, stack.output
        assert "stack: stopped" in stack.output

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from devtools.localserver import free_port, port_taken, spawn, start_redis, stop_all
from fencex.errors import BrokerUnavailable, ServerStartError
from fencex.kafka.admin import check_broker


def test_port_taken_gives_clear_message():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServerStartError, match=f"port {port} for redis is already taken"):
            start_redis(port)


def test_broker_that_does_not_answer():
    with pytest.raises(BrokerUnavailable, match="does not answer"):
        check_broker(f"127.0.0.1:{free_port()}", timeout=1.0)


def test_a_port_left_in_time_wait_is_free():
    """A stopped server's connections linger in TIME_WAIT: restarting it on its port must work."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis-server and Tansu bind
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_taken(port)
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server closes first: its side goes to TIME_WAIT
        assert client.recv(1) == b""
        client.close()
    assert not port_taken(port)


def _gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            p = psutil.Process(pid)
            if p.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_stop_all_stops_the_children_a_process_started(tmp_path):
    """As granian's workers: a child that outlives its parent, and ignores SIGTERM, is still stopped."""
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(60)"
    script = (
        "import subprocess, sys; "
        f"c = subprocess.Popen([sys.executable, '-c', {stubborn!r}], stdout=subprocess.PIPE); "
        "c.stdout.readline(); print(c.pid, flush=True)"
    )
    proc = spawn([sys.executable, "-c", script], tmp_path / "log")
    proc.wait(10)
    (child,) = map(int, (tmp_path / "log").read_text().split())
    assert not _gone(child, timeout=0.2)
    stop_all([proc], timeout=1.0)
    assert _gone(child)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux only")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_spawned_process_dies_with_its_parent(tmp_path, sig):
    """Even when the parent (the stack, a test run) is SIGKILLed and cannot stop anything."""
    script = (
        "import sys, time, signal; from pathlib import Path; from devtools.localserver import spawn; "
        f"p = spawn(['sleep', '60'], Path(sys.argv[1]), die_signal=signal.{sig.name}); "
        "print(p.pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "sleep.log")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    assert parent.stdout is not None
    with parent.stdout:
        child = int(parent.stdout.readline())
    try:
        assert not _gone(child, timeout=0.2)
        parent.kill()
        parent.wait(5)
        assert _gone(child)
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(child).kill()

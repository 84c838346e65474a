"""python -m devtools.stack (or ./dev stack): the whole push path on this machine.

Starts the Kafka-protocol broker and redis-server, one or more processor
workers, the query API and the simulator's herd, and prints fence events live
as they happen.
Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
from confluent_kafka import Consumer

from devtools.localserver import Server, free_port, port_taken, python, start_broker, start_prometheus, start_redis
from devtools.stack.prometheus import write_config
from fencex.errors import ServerStartError
from fencex.kafka.admin import ensure_topics

COLOURS = {"enter": "\033[32m", "exit": "\033[33m", "dwell": "\033[36m"}


def _port(wanted: int) -> int:
    return wanted if not port_taken(wanted) else free_port()


def show_events(bootstrap: str, topic: str, stop: threading.Event, colour: bool) -> None:
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
            if msg is None or msg.error():
                continue
            e = orjson.loads(msg.value())
            c, r = (COLOURS.get(e["type"], ""), "\033[0m") if colour else ("", "")
            extra = f" after {e['dwell_s']:.0f} s" if "dwell_s" in e else ""
            print(
                f"{e['ts'][11:19]} {c}{e['type']:<5}{r} {e['device_id']} {'into' if e['type'] != 'exit' else 'out of'} "
                f"{e['fence_id']} ({e['tenant']}){extra}",
                flush=True,
            )
    finally:
        consumer.close()


def main() -> int:
    ap = argparse.ArgumentParser(prog="./dev stack", description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="processor worker processes")
    ap.add_argument("--fences", type=int, default=400)
    ap.add_argument("--devices", type=int, default=800)
    ap.add_argument("--rate", type=float, default=400.0, help="fixes per second from the simulator")
    ap.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: until Ctrl-C)")
    ap.add_argument("--kafka-port", type=int, default=9092)
    ap.add_argument("--redis-port", type=int, default=6379)
    ap.add_argument("--api-port", type=int, default=8000)
    ap.add_argument("--prometheus-port", type=int, default=9090)
    ap.add_argument(
        "--admin-key",
        default=os.environ.get("FENCEX_ADMIN_KEY", "dev-admin-key"),
        help="the API's admin key (FENCEX_ADMIN_KEY); the default is for this machine only",
    )
    ap.add_argument("--quiet-events", action="store_true", help="do not print events")
    ap.add_argument("--logdir", type=Path, default=Path("out/stack"))
    args = ap.parse_args()
    args.logdir.mkdir(parents=True, exist_ok=True)
    servers: list[Server] = []
    procs: list[subprocess.Popen] = []
    stop = threading.Event()
    try:
        broker = start_broker(_port(args.kafka_port), args.logdir)
        servers.append(broker)
        redis = start_redis(_port(args.redis_port), args.logdir)
        servers.append(redis)
        bootstrap, redis_url = broker.address, f"redis://{redis.address}/0"
        ensure_topics(bootstrap, {"locations": 12, "fence-events": 12, "locations.dlq": 1})
        env = dict(
            os.environ, FENCEX_KAFKA_BOOTSTRAP=bootstrap, FENCEX_REDIS_URL=redis_url, FENCEX_SESSION_TIMEOUT_S="6"
        )
        print(f"broker      {bootstrap}  (Tansu, in memory)\nredis       {redis_url}", flush=True)
        worker_targets = []
        for i in range(args.workers):
            port = free_port()
            worker_targets.append(f"127.0.0.1:{port}")
            with (args.logdir / f"processor-{i}.log").open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        [python(), "-m", "services.processor"],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=dict(env, FENCEX_WEB_PORT=str(port), FENCEX_DATADIR=f"/tmp/fencex-stack-{i}"),
                    )
                )
            print(f"processor-{i} http://127.0.0.1:{port}/metrics  (log processor-{i}.log)", flush=True)
        api_port = _port(args.api_port)
        with (args.logdir / "api.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [python(), "-m", "services.api"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(env, FENCEX_PORT=str(api_port), FENCEX_HOST="127.0.0.1", FENCEX_ADMIN_KEY=args.admin_key),
                )
            )
        print(
            f"api         http://127.0.0.1:{api_port}  (docs: /docs; admin key: {args.admin_key}; log api.log)",
            flush=True,
        )
        if shutil.which("prometheus"):
            config = write_config(args.logdir / "prometheus.yml", worker_targets, [f"127.0.0.1:{api_port}"])
            prom = start_prometheus(config, _port(args.prometheus_port), args.logdir)
            servers.append(prom)
            print(
                f"prometheus  http://{prom.address}  (dashboards as PNG: ./dev dashboards --prometheus "
                f"http://{prom.address})",
                flush=True,
            )
        else:
            print("prometheus  not installed (apt-get install prometheus): no metrics history", flush=True)
        with (args.logdir / "simulator.log").open("wb") as log:
            sim = subprocess.Popen(
                [
                    python(),
                    "-m",
                    "services.simulator",
                    "--setup",
                    "--fences",
                    str(args.fences),
                    "--devices",
                    str(args.devices),
                    "--rate",
                    str(args.rate),
                    "--bad-every",
                    "1000",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        procs.append(sim)
        print(
            f"simulator   {args.devices} animals on {args.fences} pastures, {args.rate:.0f} fixes/s "
            f"(log {args.logdir}/simulator.log)\nevents as they happen (Ctrl-C stops the stack):",
            flush=True,
        )
        viewer = threading.Thread(
            target=show_events, args=(bootstrap, "fence-events", stop, sys.stdout.isatty()), daemon=True
        )
        if not args.quiet_events:
            viewer.start()
        started = time.monotonic()
        while not args.duration or time.monotonic() - started < args.duration:
            for p in procs:
                if p.poll() is not None:
                    print(
                        f"stack: {p.args[2]} exited with {p.returncode}; see the logs in {args.logdir}", file=sys.stderr
                    )
                    return 1
            time.sleep(0.5)
        return 0
    except ServerStartError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        stop.set()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        for s in reversed(servers):
            s.stop()
        print("stack: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())

"""The availability run's picture: fixes processed a second, the backlog and the events published around
the SIGKILL of one of two workers and its restart (``plot``, which ``bench.evaluate.plots`` calls).

``python -m bench.availability`` runs the evaluation's availability phase alone (tiny or medium: the full
size is ``./dev evaluate``'s) and draws it, with the events published a second read back from the events
topic (each record's timestamp), which the evaluation's own timeline does not carry.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

SIZES = {
    # fences, devices, fixes/s, seconds, kill at, restart after
    "tiny": (500, 1_000, 2_000, 16, 5, 3),
    "medium": (2_000, 5_000, 5_000, 30, 10, 5),
}


def events_timeline(bootstrap: str, topic: str, t0_ms: int, quiet_s: float = 3.0) -> dict[str, Any]:
    """The events of ``topic`` a second, by their records' timestamps from ``t0_ms``: all of them and the
    duplicates (an event_id seen before), as ``{"t": [...], "events_per_s": [...], "duplicates_per_s": [...]}``."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"avail-plot-{time.time()}", "enable.auto.commit": False})
    stamps: list[tuple[int, str]] = []
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        quiet = time.monotonic() + 20
        while time.monotonic() - quiet < quiet_s:
            msgs = c.consume(5000, 0.5)
            for m in msgs:
                if not m.error():
                    stamps.append((m.timestamp()[1], orjson.loads(m.value() or b"{}").get("event_id", "")))
            if msgs:
                quiet = time.monotonic()
    finally:
        c.close()
    return per_second(stamps, t0_ms)


def per_second(stamps: list[tuple[int, str]], t0_ms: int) -> dict[str, Any]:
    """Events (``(timestamp ms, event_id)``) a second from ``t0_ms``, and the duplicates among them: an
    event_id seen at an earlier (or the same) time."""
    seen: set[str] = set()
    every: Counter[int] = Counter()
    dup: Counter[int] = Counter()
    for ms, eid in sorted(stamps):
        s = (ms - t0_ms) // 1000
        every[s] += 1
        if eid in seen:
            dup[s] += 1
        seen.add(eid)
    span = range(min(every, default=0), max(every, default=-1) + 1)
    return {
        "t": [s + 0.5 for s in span],
        "events_per_s": [every[s] for s in span],
        "duplicates_per_s": [dup[s] for s in span],
    }


def plot(av: dict[str, Any], path: Path, title: str = "") -> Path:
    """Draw an availability result (``bench.evaluate``'s ``availability``) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = av.get("events_timeline")
    fig, axes = plt.subplots(2 if events else 1, 1, figsize=(12, 7 if events else 4.5), sharex=True, squeeze=False)
    a = axes[0][0]
    t = [p["t"] for p in av["timeline"]]
    a.plot(t, [p["fixes_per_s"] for p in av["timeline"]], label="fixes processed per second")
    a.axhline(av["offered_fixes_per_s"], color="gray", linestyle=":", label="offered")
    a.set_ylabel("fixes per second")
    ax2 = a.twinx()
    ax2.plot(t, [p["lag"] for p in av["timeline"]], color="tab:red", label="backlog (fixes)")
    ax2.set_ylabel("backlog: fixes sent, not yet processed", color="tab:red")
    killed, restarted, recovery = av["killed_at_s"], av["restarted_at_s"], av["recovery_s"]
    for i, ax in enumerate(row[0] for row in axes):
        if killed is not None and recovery is not None:
            ax.axvspan(killed, killed + recovery, color="tab:orange", alpha=0.12)
        for x, label, height in ((killed, "SIGKILL worker 0", 0.97), (restarted, "worker 0 restarted", 0.87)):
            if x is not None:
                ax.axvline(x, color="black", linestyle="--")
                if i == 0:
                    ax.text(x, ax.get_ylim()[1] * height, f" {label}", fontsize=8, va="top")
    lines = a.get_legend_handles_labels()
    more = ax2.get_legend_handles_labels()
    a.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right", fontsize=8)
    a.set_title(
        title
        or (
            f"Availability: two workers at {av['offered_fixes_per_s']:,.0f} fixes/s, one killed and restarted. "
            f"Recovery {recovery or float('nan'):.1f} s (shaded); events lost {av['events_lost']} of "
            f"{av['events_expected']:,}, duplicated {av['events_duplicated']}"
        ),
        fontsize=10,
    )
    if events:
        b = axes[1][0]
        b.bar(events["t"], events["events_per_s"], width=0.9, color="tab:green", label="events published per second")
        b.bar(events["t"], events["duplicates_per_s"], width=0.9, color="tab:purple", label="of them duplicates")
        b.set_ylabel("events per second")
        b.legend(loc="upper right", fontsize=8)
        axes[-1][0].set_xlabel("seconds")
    else:
        a.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    from bench.evaluate import Evaluation
    from bench.push import say
    from fencex.kafka.admin import ensure_topics

    ap = argparse.ArgumentParser(prog="python -m bench.availability", description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--out", type=Path, default=Path("out/availability"))
    ap.add_argument("--png", type=Path, help="where the picture goes (default: OUT/availability.png)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    fences, devices, rate, seconds, kill_at, restart_after = SIZES[a.size]
    a.out.mkdir(parents=True, exist_ok=True)
    t0: list[int] = []

    class Timed(Evaluation):
        def live_producer(self, *args: Any, **kwargs: Any) -> Any:
            # the availability timeline's zero is taken as the producer starts
            t0.append(int(time.time() * 1000))
            return super().live_producer(*args, **kwargs)

    cfg = argparse.Namespace(fences=fences, devices=devices, seed=a.seed, out=str(a.out), pack=20, step_s=1.0)
    ev = Timed(cfg)
    try:
        say(f"seeding {fences:,} fences and {devices:,} collars")
        asyncio.run(ev.seed())
        ensure_topics(ev.bootstrap, {"fence-events": 12, "locations.dlq": 1})
        av = ev.availability(rate, seconds, kill_at=kill_at, restart_after=restart_after, pack=20)
        av["events_timeline"] = events_timeline(ev.bootstrap, "eval-avail-events", t0[0])
    finally:
        ev.close()
    date = datetime.now(UTC).isoformat(timespec="seconds")
    machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores"
    result = {"date": date, "machine": machine, "size": a.size, "fences": fences, "devices": devices, **av}
    (a.out / "availability.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    png = plot(
        av,
        a.png or a.out / "availability.png",
        title=f"Availability ({a.size} run, {date}, {machine}): two workers at {rate:,} fixes/s, one killed "
        f"and restarted.\nRecovery {av['recovery_s'] or float('nan'):.1f} s (shaded); events lost "
        f"{av['events_lost']} of {av['events_expected']:,}, duplicated {av['events_duplicated']}",
    )
    say(f"wrote {png} and {a.out / 'availability.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

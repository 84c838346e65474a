"""python -m bench.spy: where a benchmark's processes spend their time, sampled by py-spy.

    python -m bench.spy [--rate 100] [--top 15] [--match fencex] [--out out/spy] -- COMMAND ...

Runs COMMAND and samples it and every Python process it starts (the benchmark's driver, its workers,
the API's server; those matching ``--match`` only) with one ``py-spy record`` attached to each. Then
for each process that holds at least ``--min-share`` of the samples it prints its own time by function
(the sampled stack's innermost frame: where the interpreter was) and its time by fencex function (any
frame of the stack: the function and all it called), each as a share of that process's samples. Idle
threads are not sampled (py-spy's default), so a share is of the time the process was running Python.
Writes the raw stacks (``stacks.txt``, collapsed: one stack a line, for flame graphs), ``profile.json``
and ``profile.png`` (the top own-time entries of the busiest processes). A command, not a test: issue
16 asks that the profile come before the optimising, and its top entries go into the closing note.

Example: the push path's worker, one fix a record::

    python -m bench.spy --match services.processor -- \\
        python -m bench.push --packed-fixes 2000 --single-fixes 1000000 --latency-rates ""
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


@dataclass
class Process:
    """One sampled process: its command line, its samples, and its time by function."""

    command: str
    samples: int = 0
    own: Counter[str] = field(default_factory=Counter)  # innermost frame
    inclusive: Counter[str] = field(default_factory=Counter)  # any frame (counted once a stack)


def function(frame: str) -> str:
    """``name (file:line)`` -> ``name (file)``: one entry a function, whatever line was running."""
    m = FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    path = m["file"]
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    else:
        for root in ("/fencex/", "/services/", "/bench/", "/devtools/", "/tests/"):
            if root in path:
                path = path[path.index(root) + 1 :]
                break
    return f"{m['name']} ({path})"


def parse(lines: list[str]) -> dict[str, Process]:
    """Collapsed stacks (``process PID:"cmd";frame;...;frame COUNT``) -> processes by pid."""
    procs: dict[str, Process] = {}
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        head, frames = (frames[0], frames[1:]) if frames[0].startswith("process ") else ("process ?", frames)
        pid, _, command = head.removeprefix("process ").partition(":")
        proc = procs.setdefault(pid, Process(command.strip('"')))
        n = int(count)
        proc.samples += n
        names = [function(f) for f in frames if not f.startswith("thread ")]
        if names:
            proc.own[names[-1]] += n
        for name in set(names):
            proc.inclusive[name] += n
    return procs


def report(procs: dict[str, Process], top: int, match: str | None, min_share: float) -> list[dict[str, Any]]:
    total = sum(p.samples for p in procs.values()) or 1
    out = []
    for pid, p in sorted(procs.items(), key=lambda kv: -kv[1].samples):
        if p.samples / total < min_share or (match and not re.search(match, p.command)):
            continue
        out.append(
            {
                "pid": pid,
                "command": p.command,
                "samples": p.samples,
                "share_of_all": round(p.samples / total, 3),
                "own": [(f, round(n / p.samples, 4)) for f, n in p.own.most_common(top)],
                "fencex": [
                    (f, round(n / p.samples, 4))
                    for f, n in p.inclusive.most_common()
                    if "fencex/" in f or "services/" in f
                ][:top],
            }
        )
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows[:2]
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 0.32 * 15 * len(rows) + 1), squeeze=False)
    for ax, r in zip(axes[:, 0], rows):
        names = [f[:70] for f, _ in r["own"]][::-1]
        shares = [100 * s for _, s in r["own"]][::-1]
        ax.barh(names, shares, color="#4c72b0")
        ax.set_xlabel("% of the process's samples (own time)")
        ax.set_title(f"{r['command'][:90]} ({r['samples']} samples)", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_report(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        print(f"\n== pid {r['pid']}: {r['command'][:120]}")
        print(f"   {r['samples']} samples ({100 * r['share_of_all']:.0f}% of all)")
        print("   own time (innermost frame):")
        for f, s in r["own"]:
            print(f"     {100 * s:5.1f}%  {f}")
        print("   fencex functions, with what they call:")
        for f, s in r["fencex"]:
            print(f"     {100 * s:5.1f}%  {f}")


def record(spy: str, command: list[str], rate: int, match: str | None, out: Path, stacks: Path) -> int:
    """Run ``command``; attach one ``py-spy record`` to it and to each process it starts whose command line
    matches ``match`` (all, without one), found every 0.2 s; write their stacks, each line headed by its
    process, to ``stacks``. Attaching by pid, not ``--subprocesses``: py-spy 0.4 followed none of the
    benchmark's workers so."""
    import psutil

    root = subprocess.Popen(command)
    spies: dict[int, tuple[subprocess.Popen[bytes], Path, str]] = {}

    def attach() -> None:
        try:
            procs = [psutil.Process(root.pid), *psutil.Process(root.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for proc in procs:
            try:
                line = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if proc.pid in spies or "python" not in line or (match and not re.search(match, line)):
                continue
            path = out / f"stacks-{proc.pid}.txt"
            args = ["record", "-p", str(proc.pid), "--nonblocking", "--format", "raw", f"--rate={rate}", "-o"]
            spy_proc = subprocess.Popen([spy, *args, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            spies[proc.pid] = (spy_proc, path, line)

    while root.poll() is None:
        attach()
        time.sleep(0.2)
    for spy_proc, _, _ in spies.values():
        if spy_proc.poll() is None:
            spy_proc.send_signal(signal.SIGINT)  # py-spy writes what it has on ^C
    lines = []
    for pid, (spy_proc, path, line) in spies.items():
        try:
            spy_proc.wait(30)
        except subprocess.TimeoutExpired:
            spy_proc.kill()
        if path.exists():
            head = f'process {pid}:"{line}"'
            lines += [f"{head};{row}" for row in path.read_text().splitlines() if row.strip()]
    stacks.write_text("\n".join(lines) + "\n")
    return root.returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rate", type=int, default=100, help="samples a second")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--match", help="only processes whose command line matches this regular expression")
    ap.add_argument("--min-share", type=float, default=0.05, help="only processes with this share of the samples")
    ap.add_argument("--out", default="out/spy")
    ap.add_argument("--from-stacks", type=Path, help="report on a run's stacks.txt again; run nothing")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stacks = out / "stacks.txt"
    if a.from_stacks is not None:
        stacks = a.from_stacks
    else:
        command = a.command[1:] if a.command[:1] == ["--"] else a.command
        if not command:
            ap.error("give the command to profile after --")
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        print(f"py-spy sampling the processes of {' '.join(command)} at {a.rate}/s", flush=True)
        code = record(spy, command, a.rate, a.match, out, stacks)
        if code != 0:
            print(f"the command exited {code}", file=sys.stderr)
            if not stacks.exists():
                return code
    rows = report(parse(stacks.read_text().splitlines()), a.top, a.match, a.min_share)
    print_report(rows)
    (out / "profile.json").write_text(json.dumps(rows, indent=1))
    if rows:
        plot(rows, out / "profile.png")
        print(f"\nwrote {out / 'profile.json'} and {out / 'profile.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""./dev dashboards: draw the Grafana dashboards' panels to PNG from Prometheus' HTTP API.

Grafana cannot run here; this asks Prometheus for every panel's expressions over the
last --minutes and draws one PNG per dashboard with matplotlib, so a person can look at
a run without a Grafana server.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx

from deploy.build import DASHBOARDS


def query_range(prom: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    r = httpx.get(
        f"{prom}/api/v1/query_range", params={"query": expr, "start": start, "end": end, "step": step}, timeout=30
    )
    r.raise_for_status()
    return r.json()["data"]["result"]


def legend(template: str, labels: dict) -> str:
    out = template
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return out if "{{" not in out else ",".join(f"{k}={v}" for k, v in labels.items()) or template


def render(prom: str, out: Path, minutes: float) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    end = time.time()
    start = end - minutes * 60
    step = max(1.0, minutes * 60 / 300)
    written = []
    for uid, spec in DASHBOARDS.items():
        panels = spec["panels"]
        rows = (len(panels) + 1) // 2
        fig, axes = plt.subplots(rows, 2, figsize=(14, 3.2 * rows), squeeze=False)
        for ax, (title, unit, targets) in zip(axes.flat, panels):
            drawn = 0
            for expr, tmpl in targets:
                for series in query_range(prom, expr, start, end, step)[:12]:
                    ts = [datetime.fromtimestamp(float(t)) for t, _ in series["values"]]
                    vs = [float(v) for _, v in series["values"]]
                    ax.plot(ts, vs, label=legend(tmpl, series["metric"]))
                    drawn += 1
            ax.set_title(title, fontsize=9)
            ax.set_ylabel(unit, fontsize=8)
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
            ax.tick_params(labelsize=7)
            if drawn:
                ax.legend(fontsize=6, loc="upper left")
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        fig.suptitle(f"{spec['title']} (last {minutes:g} min, from {prom})", fontsize=11)
        fig.tight_layout()
        path = out / f"{uid}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
        print(f"wrote {path}", flush=True)
    return written


def main() -> int:
    ap = argparse.ArgumentParser(prog="./dev dashboards", description=__doc__.splitlines()[0])
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090")
    ap.add_argument("--minutes", type=float, default=15)
    ap.add_argument("--out", default="out/dashboards")
    args = ap.parse_args()
    out = Path(args.out)
    try:
        render(args.prometheus.rstrip("/"), out, args.minutes)
    except httpx.HTTPError as exc:
        print(f"dashboards: cannot query Prometheus at {args.prometheus}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

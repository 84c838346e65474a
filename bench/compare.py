"""python -m bench.compare: builds benchmarked in turn, side by side (means and ratios, and a PNG).

Each ``--group label=dir,dir,...`` names the ``--out`` directories of ``python -m bench.push`` runs of
one build; the first group is the baseline. Prints each group's mean fixes/s (packed and one per
record) and its ratio to the baseline, and draws them as bars (``--png``)::

    python -m bench.compare --group before=/tmp/b/base-1,/tmp/b/base-2 \\
        --group "tracks on"=/tmp/b/on-1,/tmp/b/on-2 --png docs/figures/tracks-cost.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

MEASURES = (("packed", "100 fixes a record"), ("single", "one fix a record"))


def load(dirs: list[str]) -> dict[str, list[float]]:
    runs = [json.loads((Path(d) / "push.json").read_text()) for d in dirs]
    return {key: [r[key]["fixes_per_s"] for r in runs] for key, _ in MEASURES}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", action="append", required=True, metavar="LABEL=DIR,DIR")
    parser.add_argument("--png", type=Path, help="draw the means as bars, with the ratios to the first group")
    args = parser.parse_args()
    groups = {}
    for g in args.group:
        label, _, dirs = g.partition("=")
        groups[label] = load(dirs.split(","))
    base_label = next(iter(groups))
    base = {k: statistics.mean(v) for k, v in groups[base_label].items()}
    print(f"{'build':<16}" + "".join(f"{title:>34}" for _, title in MEASURES))
    for label, got in groups.items():
        cells = []
        for key, _ in MEASURES:
            mean = statistics.mean(got[key])
            cells.append(f"{mean:>12,.0f} fixes/s ({mean / base[key]:.2f}x {base_label})")
        print(f"{label:<16}" + "".join(f"{c:>34}" for c in cells))
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(MEASURES), figsize=(10, 4))
        for ax, (key, title) in zip(axes, MEASURES, strict=True):
            labels = list(groups)
            means = [statistics.mean(groups[g][key]) for g in labels]
            bars = ax.bar(labels, means, color=["#888888", *["#2a7ab0"] * (len(labels) - 1)])
            for bar, mean in zip(bars, means, strict=True):
                ax.annotate(
                    f"{mean / base[key]:.2f}x", (bar.get_x() + bar.get_width() / 2, mean), ha="center", va="bottom"
                )
            for i, g in enumerate(labels):
                ax.plot([i] * len(groups[g][key]), groups[g][key], "k.", alpha=0.6)
            ax.set_title(title)
            ax.set_ylabel("fixes/s, one worker")
        fig.suptitle("push throughput: each build's runs (dots), mean (bar), ratio to the first")
        fig.tight_layout()
        args.png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png, dpi=100)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

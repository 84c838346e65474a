"""How many partitions the locations topic needs (issue 15, item 4; docs/design/partitions.md).

A partition is read by one worker at a time, so the partition count is the most workers the push
path can use (KEDA's ``maxReplicaCount`` is set to it: a worker past it holds nothing). The rule::

    workers    = ceil(rate * headroom / per_worker)
    partitions = ceil(workers * growth / multiple) * multiple

``rate``: the target fix rate (fixes/s); ``per_worker``: one worker's measured push rate, in the form
the collars send (one fix a record); ``headroom``: the measured rate over the rate a worker is run at
(the spare half drains a failed worker's backlog while new fixes keep coming, and covers what the
measurement does not: 20,000 known devices there, millions in production); ``growth``: the growth
the count is to carry before partitions are added again (adding them moves devices to other
partitions: safe, see the design note, but an operation, not a setting); rounded up to a
``multiple`` of 12, so that 1, 2, 3, 4, 6 or 12 workers share the partitions evenly.

``python -m bench.partitions --rate 170000`` prints the sizing (no broker, no Redis: arithmetic).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

# README, Measured: one worker, one fix per record, tracks on (issue 12's run, the lower of two)
PER_WORKER_MEASURED = 52_246
HEADROOM = 2.0
GROWTH = 2.0
MULTIPLE = 12


@dataclass(frozen=True, slots=True)
class Sizing:
    workers: int  # workers needed now, at the headroom
    partitions: int  # the locations topic's partitions (and KEDA's maximum of workers)
    per_partition: float  # fixes/s a partition carries at the target rate


def partitions_for(
    rate: float,
    per_worker: float = PER_WORKER_MEASURED,
    headroom: float = HEADROOM,
    growth: float = GROWTH,
    multiple: int = MULTIPLE,
) -> Sizing:
    """The sizing rule (module docstring); ValueError for a rate below zero or a factor below one."""
    if rate < 0 or per_worker <= 0:
        raise ValueError("the rate must be at least 0 and the per-worker rate above 0")
    if headroom < 1 or growth < 1 or multiple < 1:
        raise ValueError("headroom and growth are factors of at least 1, the multiple at least 1")
    workers = max(1, math.ceil(rate * headroom / per_worker))
    partitions = math.ceil(workers * growth / multiple) * multiple
    return Sizing(workers, partitions, rate / partitions)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, required=True, help="target fixes per second")
    ap.add_argument("--per-worker", type=float, default=PER_WORKER_MEASURED, help="one worker's measured fixes/s")
    ap.add_argument("--headroom", type=float, default=HEADROOM)
    ap.add_argument("--growth", type=float, default=GROWTH)
    ap.add_argument("--multiple", type=int, default=MULTIPLE)
    a = ap.parse_args(argv)
    s = partitions_for(a.rate, a.per_worker, a.headroom, a.growth, a.multiple)
    each = f"{s.per_partition:,.0f} fixes/s each"
    print(f"workers {s.workers}, partitions {s.partitions} (KEDA max {s.partitions}), {each}")


if __name__ == "__main__":
    main()

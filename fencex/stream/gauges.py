"""What a worker's metrics collector reads at scrape time (``fencex.metrics.StateCollector``):
state gauges computed when Prometheus asks, never kept up to date on the hot path."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from fencex.metrics import HERD_SERIES

if TYPE_CHECKING:
    from fencex.stream.loop import Processor


def worker_gauges(p: Processor) -> dict[str, Any]:
    """Partitions, lag, fences, devices and the herd's busiest fences of one running worker."""
    occupancy: Counter[tuple[str, str]] = Counter()
    for state in list(p.states.values()):
        for fid in state.members:
            occupancy[(state.tenant, fid)] += 1
    return {
        "partitions": p.consumer.assignment(),
        "lag": p.consumer.lag(),
        "fences": len(p.index),
        "index_version": p.follower.applied,
        "quarantined": len(p.follower.quarantined),
        "feed_reloads": p.follower.reloads,
        "devices": len(p.states),
        "running": int(p.running),
        "occupancy": occupancy.most_common(HERD_SERIES),
        "fence_events": p.outbox.fence_events.most_common(HERD_SERIES),
    }

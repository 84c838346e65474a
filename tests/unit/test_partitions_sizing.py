"""The partition sizing rule (bench/partitions.py; docs/design/partitions.md), as a table."""

from __future__ import annotations

import pytest

from bench.partitions import partitions_for


@pytest.mark.parametrize(
    ("rate", "per_worker", "headroom", "growth", "workers", "partitions"),
    [
        # the target: 10,000,000 collars a minute; 7 workers at half their measured rate, x2 growth -> 24
        (170_000, 52_246, 2.0, 2.0, 7, 24),
        # one farm: one worker; the count never goes below one multiple (12)
        (2.5, 52_246, 2.0, 2.0, 1, 12),
        # no fixes at all still needs a worker (silences and schedules run on the workers' clocks)
        (0, 52_246, 2.0, 2.0, 1, 12),
        # exactly a multiple: 12 workers x 1 growth stays 12, one fix/s more needs 13 -> 24
        (12 * 50_000, 50_000, 1.0, 1.0, 12, 12),
        (12 * 50_000 + 1, 50_000, 1.0, 1.0, 13, 24),
        # a slower worker (e.g. measured with 10,000,000 known devices) needs more partitions
        (170_000, 20_000, 2.0, 2.0, 17, 36),
    ],
)
def test_partitions_from_rate_per_worker_rate_and_headroom(rate, per_worker, headroom, growth, workers, partitions):
    got = partitions_for(rate, per_worker, headroom, growth)
    assert (got.workers, got.partitions) == (workers, partitions)
    assert got.partitions % 12 == 0 and got.partitions >= got.workers


@pytest.mark.parametrize("kwargs", [{"rate": -1}, {"rate": 1, "per_worker": 0}, {"rate": 1, "headroom": 0.5}])
def test_nonsense_is_refused(kwargs):
    with pytest.raises(ValueError):
        partitions_for(**kwargs)

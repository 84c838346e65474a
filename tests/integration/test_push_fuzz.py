"""Fuzzing the push path: 10,000 generated records, good and bad, through the real broker to a
real worker (see devtools/fuzz_push.py for the generator and the invariants)."""

from __future__ import annotations

import pytest

from devtools.fuzz_push import Target, fuzz
from tests.integration.conftest import wait_ready

pytestmark = pytest.mark.integration


def test_no_record_stops_or_fools_the_worker(live):
    proc, port = live.start_worker()
    wait_ready(port, proc)
    target = Target(
        live.bootstrap,
        live.redis_url,
        live.prefix,
        live.locations,
        live.events,
        live.dlq,
        f"{live.name}-processor",
        f"http://127.0.0.1:{port}/metrics",
    )
    verdict = fuzz(target, records=10_000, seed=20261121, devices=300, alive=lambda: proc.poll() is None, timeout=240)
    print(verdict.summary())
    assert verdict.problems == [], "\n".join(verdict.problems[:30])
    assert verdict.bad > 1000 and verdict.events_expected > 500  # the run exercised both sides

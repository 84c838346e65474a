"""The bounded device-state cache on the push path (issue 15, item 3), against the real broker and Redis:
a worker caching 3 states of 12 collars publishes the same events as one caching all of them."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest

from fencex.fence import Fence
from fencex.fix import Fix
from fencex.index import FenceIndex
from fencex.kafka.admin import ensure_topics
from fencex.pipeline import default_rules, process
from tests.integration.conftest import Env, events_of, metric, read, run, wait_ready
from tests.integration.test_push import INSIDE, OUTSIDE, SQUARE, T0, _seed, fix

pytestmark = pytest.mark.integration

COWS = [f"cow-{i}" for i in range(12)]
ROUNDS = 6


def _fixes() -> list[Fix]:
    """Every cow crosses the border each round: an event a fix (but the first, outside)."""
    return [
        Fix(c, T0 + r * 1000, *(INSIDE if (r + i) % 2 else OUTSIDE)) for r in range(ROUNDS) for i, c in enumerate(COWS)
    ]


def _expected() -> list[str]:
    index = FenceIndex([Fence(id="north", tenant="farm", name="North", geometry=SQUARE)])
    out = process(_fixes(), index, {}, lambda d: "farm", default_rules)  # the worker's rules
    return sorted(e.event_id for e in out.events)


def _run(live: Env, **env: str) -> tuple[list[str], int]:
    """Seed, start a worker, send the rounds a batch apart; the events' ids, and the worker's port."""
    run(_seed(live, [Fence(id="north", tenant="farm", name="North", geometry=SQUARE)], dict.fromkeys(COWS, "farm")))
    proc, port = live.start_worker(**env)
    wait_ready(port, proc)
    fixes = _fixes()
    for r in range(ROUNDS):
        live.produce(
            [
                (f.device_id, orjson.dumps(fix(f.device_id, f.ts_ms, (f.lon, f.lat))))
                for f in fixes[r * len(COWS) : (r + 1) * len(COWS)]
            ]
        )
        time.sleep(0.6)  # the next round in another batch, after this one is saved
    n = len(_expected())
    events = events_of(read(live.consumer(live.events), lambda got: len(got) >= n))
    return sorted(e["event_id"] for e in events), port


def test_a_worker_caching_3_of_12_states_publishes_what_one_caching_all_does(live, broker, redis_url, tmp_path):
    unbounded, _ = _run(live)
    other = Env(broker.address, redis_url, f"t{uuid.uuid4().hex[:8]}", tmp_path / "bounded")
    other.tmp.mkdir()
    ensure_topics(other.bootstrap, {other.locations: 4, other.events: 4, other.dlq: 1})
    try:
        bounded, port = _run(other, FENCEX_STATE_CACHE_MAX="3")
        assert unbounded == _expected() and len(unbounded) >= len(COWS) * (ROUNDS - 1)
        assert bounded == unbounded
        assert metric(port, "fencex_state_cache_evictions_total") > 0
        assert metric(port, 'fencex_state_cache_misses_total{path="fix"}') > len(COWS)  # evicted, then reloaded
        assert metric(port, "fencex_devices_cached") <= 3 + len(COWS)  # the bound, and one unsaved batch at most
        assert metric(port, "fencex_devices_held") == len(COWS)
    finally:
        for w in other.workers:
            w.kill()
            w.wait(10)

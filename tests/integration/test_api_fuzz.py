"""Schema fuzzing: schemathesis against the live API (a real server, Redis and broker), every
operation but the endless event stream, all checks, stateful links, a fixed seed and a bounded
number of examples. Longer runs: ``python -m devtools.fuzz_api --examples N``."""

from __future__ import annotations

import time

import orjson
import pytest

from devtools.fuzz_api import EXAMPLE_DEVICE, FUZZ_TENANT, fuzz, prepare
from fencex.detector import DeviceState
from fencex.fix import Fix
from fencex.store.redis import RedisStore
from fencex.track import Track
from tests.integration.conftest import ADMIN_KEY, run, wait_api

pytestmark = pytest.mark.integration
SEED = 20260528
EXAMPLES = 25


async def _seed_track(live) -> None:
    """The collar the OpenAPI examples name has a state and a track (a fix every 2 minutes for 20 hours:
    more than a page; some with extras), so its track's answers are checked against the document too."""
    store = RedisStore(live.redis_url, live.prefix)
    await store.connect()
    try:
        now = int(time.time() * 1000)
        track = Track()
        for k in range(600, -1, -1):
            extra = {"accuracy_m": 3.5, "battery": 80.0} if k % 3 == 0 else None
            track.add_fix(Fix(EXAMPLE_DEVICE, now - k * 120_000, 17.6 + k * 1e-5, 59.8, extra))
        state = DeviceState(FUZZ_TENANT, now, 17.6, 59.8)
        p = 0  # its partition: where its state is saved, and written down so that the API finds it
        await store.redis.hset(store.keys.where(store.keys.group(EXAMPLE_DEVICE)), EXAMPLE_DEVICE, p)
        await store.redis.set(store.keys.device(p, EXAMPLE_DEVICE), orjson.dumps(state.to_obj()))
        await store.redis.rpush(store.keys.track(p, EXAMPLE_DEVICE), track.to_bytes())  # a list of segments
    finally:
        await store.close()


def test_the_api_does_what_its_openapi_document_says(live, tmp_path):
    proc, base = live.start_api()
    wait_api(base, proc)
    key = prepare(base, ADMIN_KEY)
    run(_seed_track(live))
    result = fuzz(base, key, ADMIN_KEY, examples=EXAMPLES, seed=SEED, workdir=tmp_path)
    print(f"schemathesis: seed {SEED}: {result.operations} operations, {result.cases} test cases")
    assert result.returncode == 0, result.output[-20_000:]
    assert result.operations == 41 and result.cases > 1000, result.output[-3000:]
    assert proc.poll() is None

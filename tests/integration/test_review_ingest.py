"""Found in review: HTTP ingest forwarded each fix as the client sent it, unknown members
included, so a farm could write up to a whole request body of junk into the shared
``locations`` topic per fix, and a fix larger than the broker's limit was answered 503
("a backing service is unavailable", Retry-After) instead of being a client error."""

from __future__ import annotations

import time

import orjson
import pytest

from tests.integration.conftest import read
from tests.integration.test_api_limits import farm, start

pytestmark = pytest.mark.integration


def test_ingest_forwards_only_the_fix(live):
    with start(live, FENCEX_MAX_BODY_BYTES=str(4 << 20)) as api:
        a = farm(api, "farm-a")
        assert api.put("/devices/cow-1", headers=a).status_code == 200
        now = int(time.time() * 1000)
        sent = [
            {"device_id": "cow-1", "ts": now - 2000, "lon": 17.6, "lat": 59.8, "junk": "x" * 3_000_000},
            {"device_id": "cow-1", "ts": now - 1000, "lon": 17.7, "lat": 59.9, "battery": 80, "tenant": "farm-b"},
        ]
        for fix in sent:
            r = api.post("/locations", json=fix, headers=a)
            assert r.status_code == 202, r.text
        consumer = live.consumer(live.locations)
        got = read(consumer, lambda ms: len(ms) >= 2)
        consumer.close()
        assert sorted((orjson.loads(m.value()) for m in got), key=lambda f: f["ts"]) == sorted(
            [
                {"device_id": "cow-1", "ts": now - 2000, "lon": 17.6, "lat": 59.8},
                {"device_id": "cow-1", "ts": now - 1000, "lon": 17.7, "lat": 59.9, "battery": 80.0},
            ],
            key=lambda f: f["ts"],
        )

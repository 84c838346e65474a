from __future__ import annotations

import orjson
import pytest

from fencex.errors import InvalidFix
from fencex.fix import fix_from_obj, parse_record, parse_ts

NOW = 1_700_000_060_000  # the receiving clock in these tests: a minute after GOOD's time


def parse(raw: bytes, now: int = NOW, skew: int = 600_000):
    fixes, rejected = [], []
    parse_record(raw, fixes, rejected, now, skew)
    return fixes, rejected


GOOD = {"device_id": "cow-1", "ts": 1700000000000, "lon": 17.6, "lat": 59.8}


def test_single_and_packed_records():
    fixes, rejected = parse(orjson.dumps(GOOD))
    assert [(f.device_id, f.ts_ms, f.lon, f.lat) for f in fixes] == [("cow-1", 1700000000000, 17.6, 59.8)]
    packed = [GOOD, {**GOOD, "device_id": "cow-2", "battery": 0.5}]
    fixes, rejected = parse(orjson.dumps(packed))
    assert [f.device_id for f in fixes] == ["cow-1", "cow-2"] and not rejected
    assert fixes[1].extra == {"battery": 0.5}


@pytest.mark.parametrize(
    "raw,reason,detail",
    [
        (b"{not json", "not_json", "not JSON"),
        (orjson.dumps({**GOOD, "device_id": None}), "bad_device_id", "device_id"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "device_id"}), "bad_device_id", "device_id"),
        (orjson.dumps({**GOOD, "lat": 91}), "bad_lat", "outside"),
        (orjson.dumps({**GOOD, "lon": -180.5}), "bad_lon", "outside"),
        (orjson.dumps({**GOOD, "lon": "NaN"}), "bad_lon", "must be a number"),
        (b'{"device_id": "a", "ts": 1, "lon": NaN, "lat": 1}', "not_json", "not JSON"),
        (orjson.dumps({**GOOD, "ts": "yesterday"}), "bad_ts", "neither RFC 3339"),
        (orjson.dumps({**GOOD, "ts": "2026-01-01T00:00:00"}), "bad_ts", "time zone"),
        (orjson.dumps([]), "bad_fix", "empty list"),
        (orjson.dumps(3), "bad_fix", "JSON object"),
    ],
)
def test_bad_records_are_rejected_with_reason(raw, reason, detail):
    fixes, rejected = parse(raw)
    assert fixes == []
    (r,) = rejected
    assert r.reason == reason and detail in r.detail and r.raw == raw


def test_a_bad_fix_in_a_pack_rejects_only_itself():
    raw = orjson.dumps([GOOD, {**GOOD, "lat": 120}, {**GOOD, "device_id": "cow-3"}])
    fixes, rejected = parse(raw)
    assert [f.device_id for f in fixes] == ["cow-1", "cow-3"]
    assert len(rejected) == 1 and rejected[0].detail.startswith("fix 1 of 3")


@pytest.mark.parametrize(
    "value,ms",
    [
        (1700000000123, 1700000000123),
        ("2023-11-14T22:13:20Z", 1700000000000),
        ("2023-11-14T23:13:20.5+01:00", 1700000000500),
    ],
)
def test_timestamps(value, ms):
    assert parse_ts(value) == ms


BAD_TIMES = [
    1_700_000_000_000_000,  # microseconds
    1_700_000_000_000_000_000,  # nanoseconds
    1e20,
    1_700_000_000,  # seconds: 1970
    "0001-01-01T00:00:00+14:00",
    "2100-01-01T00:00:00Z",  # far ahead: would freeze the device (every later fix stale)
    "1999-12-31T23:59:59Z",
    NOW + 600_001,  # just beyond the tolerated skew
]


@pytest.mark.parametrize("ts", BAD_TIMES)
def test_timestamps_out_of_range_are_bad_ts(ts):
    single = {**GOOD, "ts": ts}
    for raw in (orjson.dumps(single), orjson.dumps([GOOD, single])):
        fixes, rejected = parse(raw)
        assert [r.reason for r in rejected] == ["bad_ts"], rejected
        assert len(fixes) == (1 if raw.startswith(b"[") else 0)
    with pytest.raises(InvalidFix, match=r"^ts"):
        fix_from_obj(single, NOW)


def test_timestamps_in_range_pass():
    for ts in (NOW + 600_000, 946_684_800_000, "2023-11-14T22:15:20Z"):
        fixes, rejected = parse(orjson.dumps({**GOOD, "ts": ts}))
        assert len(fixes) == 1 and not rejected


def test_skew_is_a_parameter_and_http_ingest_checks_against_now():
    ahead = {**GOOD, "ts": NOW + 60_000}
    assert parse(orjson.dumps(ahead), skew=30_000)[1][0].reason == "bad_ts"
    with pytest.raises(InvalidFix):
        fix_from_obj({**GOOD, "ts": "2100-01-01T00:00:00Z"})  # no receiving time: the clock now
    assert fix_from_obj(GOOD).ts_ms == GOOD["ts"]


def test_packed_rejections_carry_their_index():
    raw = orjson.dumps([GOOD, {**GOOD, "lat": 120}, {**GOOD, "ts": 1}])
    _, rejected = parse(raw)
    assert [(r.index, r.reason) for r in rejected] == [(1, "bad_lat"), (2, "bad_ts")]

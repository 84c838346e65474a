"""Records in, fixes, reroutes and dead letters out (pure); dead letters bounded, one per record."""

from __future__ import annotations

import hashlib

import orjson
from confluent_kafka import KafkaError

from fencex.kafka.producer import Producer, is_permanent
from fencex.stream.batch import MAX_KEY, MAX_LISTED, split, undelivered_stub
from tests.unit.fakes import Rec

NOW = 1_780_000_060_000
GOOD = {"device_id": "cow-1", "ts": 1_780_000_000_000, "lon": 17.6, "lat": 59.8}


def rec(value: bytes, key: bytes | None = b"cow-1", offset: int = 0) -> Rec:
    return Rec("locations", 3, offset, key, value)


def test_good_fixes_reroutes_and_partitions():
    packed = [GOOD, {**GOOD, "device_id": "cow-2"}]
    out = split([rec(orjson.dumps(GOOD)), rec(orjson.dumps(packed), offset=1)], NOW)
    assert [f.device_id for f in out.fixes] == ["cow-1", "cow-1"] and out.partitions == [3, 3]
    assert [f.device_id for f in out.reroutes] == ["cow-2"]
    assert out.dead == [] and out.records == 2


def test_each_applied_fix_has_its_records_partition_whatever_the_record_holds():
    other = {**GOOD, "device_id": "cow-2"}
    records = [
        Rec("locations", 1, 0, b"cow-1", orjson.dumps(GOOD)),  # one fix under its own key
        Rec("locations", 2, 0, b"cow-1", orjson.dumps(other)),  # one fix under another's key: rerouted
        Rec("locations", 4, 0, None, orjson.dumps(GOOD)),  # one fix with no key: rerouted
        Rec("locations", 5, 0, b"cow-1", orjson.dumps([GOOD, GOOD])),  # packed, its own key
        Rec("locations", 6, 0, b"cow-1", orjson.dumps([other, other])),  # packed, none its key's: all rerouted
        Rec("locations", 7, 0, b"cow-2", orjson.dumps([GOOD, other, GOOD])),  # packed, one its key's
    ]
    out = split(records, NOW)
    assert [f.device_id for f in out.fixes] == ["cow-1", "cow-1", "cow-1", "cow-2"]
    assert out.partitions == [1, 5, 5, 7]
    assert [f.device_id for f in out.reroutes] == ["cow-2", "cow-1", "cow-2", "cow-2", "cow-1", "cow-1"]


def test_a_record_of_many_bad_elements_gives_one_bounded_dead_letter():
    bad = [{**GOOD, "lat": 100}] * 20_000 + [GOOD, {**GOOD, "ts": 1}]
    raw = orjson.dumps(bad)
    assert len(raw) > 1_000_000
    out = split([rec(raw, offset=7)], NOW, dead_max_bytes=64 * 1024)
    assert [f.device_id for f in out.fixes] == ["cow-1"]  # the good one goes on
    ((key, value, headers),) = out.dead  # one dead letter for the record
    h = dict(headers)
    assert key == b"cow-1" and value == raw[: 64 * 1024]
    assert h["sha256"] == hashlib.sha256(raw).hexdigest().encode() and h["size"] == str(len(raw)).encode()
    assert h["truncated"] == b"1" and h["source"] == b"locations/3/7"
    assert h["errors_total"] == b"20001" and h["reason"] == b"bad_lat"
    listed = orjson.loads(h["errors"])
    assert len(listed) == MAX_LISTED and listed[:2] == [[0, "bad_lat"], [1, "bad_lat"]]
    assert sum(len(v) for _, v in headers) < 8 * 1024
    assert out.dead_reasons == ["bad_lat"] and len(out.rejected) == 20_001


def test_a_small_bad_record_is_kept_whole():
    raw = orjson.dumps({**GOOD, "ts": 1_780_000_000_000_000})  # microseconds
    ((_, value, headers),) = split([rec(raw)], NOW).dead
    assert value == raw and dict(headers)["reason"] == b"bad_ts" and "truncated" not in dict(headers)


def test_permanent_and_transient_produce_errors():
    assert is_permanent(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    assert is_permanent(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    assert not is_permanent(KafkaError(KafkaError._MSG_TIMED_OUT))
    assert not is_permanent(KafkaError(KafkaError._TRANSPORT))
    assert not is_permanent(KafkaError(KafkaError.NOT_ENOUGH_REPLICAS))


def test_producers_use_murmur2_and_keep_per_key_order():
    idempotent = Producer("127.0.0.1:1")._config
    assert idempotent["partitioner"] == "murmur2_random" and idempotent["enable.idempotence"] is True
    plain = Producer("127.0.0.1:1", idempotence=False)._config
    assert plain["enable.idempotence"] is False and plain["max.in.flight.requests.per.connection"] == 1


def test_a_dead_letter_is_bounded_whatever_its_key():
    """Found in review: the key was copied whole; a bad record with a 1.5 MB key made a dead
    letter (and its undelivered stub) over the producer's limit, so it never reached the DLQ."""
    big = b"k" * 1_500_000
    ((key, value, headers),) = split([rec(b"not json", key=big)], NOW).dead
    h = dict(headers)
    assert key is not None and len(key) <= MAX_KEY and big.startswith(key)
    assert h["key_size"] == b"1500000" and h["key_sha256"] == hashlib.sha256(big).hexdigest().encode()
    assert value == b"not json" and h["reason"] == b"not_json"
    stub_key, _, _ = undelivered_stub("fence-events", big, [], "too_large", "refused")
    assert stub_key is not None and len(stub_key) <= MAX_KEY
    ((key, _, headers),) = split([rec(b"not json")], NOW).dead
    assert key == b"cow-1" and "key_size" not in dict(headers)  # a key of ordinary size is kept as it is

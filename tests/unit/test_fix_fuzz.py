"""The fix parser under generated input: it never raises, and it agrees record by record with the
labels of the push fuzzer's generator (which knows, from the format's rules, what is good)."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from devtools.fuzz_push import Generator, herd_fences
from fencex.fix import Fix, Rejected, parse_record

NOW = 1_790_000_000_000
FENCES = herd_fences(50)


def test_parser_agrees_with_the_generators_labels():
    for seed in range(3):
        gen = Generator(seed, FENCES, devices=40, now_ms=NOW)
        for i, case in enumerate(gen.cases(3000)):
            fixes: list[Fix] = []
            rejected: list[Rejected] = []
            parse_record(case.value, fixes, rejected, received_ms=NOW)
            where = f"seed {seed} record {i} ({case.kind})"
            assert [(f.device_id, f.ts_ms, f.lon, f.lat) for f in fixes] == [
                (f.device_id, f.ts_ms, f.lon, f.lat) for f in case.good
            ], where
            assert bool(rejected) == case.bad, where


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=30,
)
fixish = st.fixed_dictionaries(
    {
        "device_id": st.text(max_size=200) | st.integers(-(2**63), 2**63),
        "ts": json_values,
        "lon": json_values,
        "lat": json_values,
    },
    optional={"battery": json_values, "accuracy_m": json_values, "extra": json_values},
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(json_values, fixish, st.lists(fixish, max_size=8)))
def test_any_json_is_parsed_or_rejected_never_raised(value):
    fixes: list[Fix] = []
    rejected: list[Rejected] = []
    parse_record(orjson.dumps(value), fixes, rejected, received_ms=NOW)
    n = len(value) if isinstance(value, list) else 1
    assert len(fixes) + len(rejected) == max(n, 1)  # each element one or the other
    for f in fixes:
        assert -180 <= f.lon <= 180 and -90 <= f.lat <= 90 and 946_684_800_000 <= f.ts_ms <= NOW + 600_000


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_parsed_or_rejected_never_raised(raw):
    fixes: list[Fix] = []
    rejected: list[Rejected] = []
    parse_record(raw, fixes, rejected, received_ms=NOW)

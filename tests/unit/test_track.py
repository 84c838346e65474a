"""A device's track: its bytes, what it records, and its bounds (window, cap) at snapshot boundaries."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fencex.detector import DeviceState, Membership
from fencex.errors import CorruptRecord
from fencex.event import Event
from fencex.fix import Fix
from fencex.index import FenceIndex
from fencex.late import merge
from fencex.pipeline import process
from fencex.track import Track, append_bytes
from fencex.trackbytes import BASE, MAGIC, ORPHAN, anchor, encode_fixes, fix_bytes, state_record
from tests.unit.factory import fence

DEV = "cow-1"
T = 1_700_000_000_000
H = 3_600_000


def state(ts: int, lon: float = 17.605, lat: float = 59.805) -> DeviceState:
    return DeviceState("farm", ts, lon, lat, {"A": Membership(T, 1)}, battery=30.0, seen_ms=5, silent=True)


def test_bytes_give_the_track_back_exactly():
    track = Track(base=state(T - 1000))
    fixes = [
        Fix(DEV, T, 17.6051234, 59.8051234),  # 7 decimals: two int32
        Fix(DEV, T + 1000, 17.605123456789, 59.80512345678, {"battery": 30.25}),  # float64 place; hundredths
        Fix(DEV, T + 2000, 17.6, 59.8, {"accuracy_m": 3.333, "battery": 19.5}),  # 3.333: not hundredths: float64
        Fix(DEV, T + 2000 + (1 << 33), -179.9999999, -89.5, {"accuracy_m": 4.0}),  # a gap beyond 32 bits
    ]
    track.extend(fixes[:3], [Event("enter", "farm", DEV, "A", 1, T + 1000, 17.6, 59.8)], state(T + 2000), 2)
    track.extend(fixes[3:], [Event("silent", "farm", DEV, "", 0, T + 2000, 17.6, 59.8)], state(T + 2000 + (1 << 33)))
    track.retracted[b"\x01" * 16] = (T + 1000, 2)
    back = Track.from_bytes(track.to_bytes())
    assert back == track
    assert back.fixes(DEV) == fixes
    assert len(back.ids[T + 1000]) == 1 and T + 2000 not in back.ids  # silent is of the worker's clock: not kept
    assert back.base is not None and back.base.seen_ms == 0 and not back.base.silent  # nor in the states kept
    assert len(back.snaps) == 1 and back.snaps[0].last_ts == T + 2000


def test_the_live_path_appends_bytes_without_reading_the_track():
    track = Track(base=state(T - 1000))
    track.extend([Fix(DEV, T, 17.6, 59.8)], [], state(T))
    stored = track.to_bytes()
    fixes = [Fix(DEV, T + 1000, 17.61, 59.8, {"battery": 12.0}), Fix(DEV, T + 2000, 17.62, 59.8)]
    events = [
        Event("exit", "farm", DEV, "A", 1, T + 1000, 17.61, 59.8),
        Event("enter", "farm", DEV, "B", 1, T, 17.6, 59.8),  # a fence change re-deciding an older fix
        Event("exit", "farm", DEV, "C", 1, T - 5000, 17.6, 59.8),  # at a fix not held (the base's): not kept
        Event("resumed", "farm", DEV, "", 0, T + 1000, 17.61, 59.8),
    ]
    stored += append_bytes(track.newest, fixes, events, state(T + 2000))
    track.extend(fixes, events, state(T + 2000), snap_every=1)
    assert Track.from_bytes(stored) == track


def test_the_window_and_the_cap_drop_the_oldest_fixes_up_to_a_snapshot():
    track = Track()
    for i in range(30):  # a fix an hour, a snapshot every 4
        ts = T + i * H
        track.extend([Fix(DEV, ts, 17.6, 59.8)], [Event("enter", "farm", DEV, "A", 1, ts, 17.6, 59.8)], state(ts), 4)
    track.trim(window_ms=24 * H, cap=2_000)
    # the window starts at fix 5 (29 h - 24 h): the newest snapshot at or before fix 4 is after fix 3
    assert track.base is not None and track.base.last_ts == T + 3 * H
    assert track.ts[0] == T + 4 * H and min(track.ids) == T + 4 * H
    assert all(s.last_ts > track.base.last_ts for s in track.snaps)
    track.trim(window_ms=24 * H, cap=10)  # the cap: 10 fixes, cut at a snapshot
    assert len(track) <= 10 + 4 and track.ts[-1] == T + 29 * H
    assert track.base.last_ts == T + 19 * H


def test_a_late_fix_older_than_the_base_is_too_old_even_within_the_window():
    index = FenceIndex([fence("A")])
    track = Track()
    for i in range(12):
        ts = T + i * 60_000
        track.extend([Fix(DEV, ts, 17.605, 59.805)], [], state(ts), 4)
    track.trim(cap=5)  # 5 of 12: the newest snapshot before the 8th fix is after the 4th, the base now
    assert track.base is not None and track.base.last_ts == T + 3 * 60_000 and len(track) == 8
    current = state(T + 11 * 60_000)
    m = merge(DEV, current, track, [Fix(DEV, T + 3 * 60_000 - 1, 17.0, 59.0)], index)
    assert (m.too_old, m.events) == (1, [])
    m = merge(DEV, current, track, [Fix(DEV, T + 3 * 60_000, 17.0, 59.0)], index)  # the base's own fix
    assert (m.duplicates, m.events) == (1, [])
    m = merge(DEV, current, track, [Fix(DEV, T + 3 * 60_000 + 1, 17.0, 59.0)], index)  # after it: merged
    assert [e.type for e in m.events] == ["exit", "enter"]


def test_a_track_out_of_step_with_the_state_starts_again_from_it():
    index = FenceIndex([fence("A")])
    current = state(T + 60_000)
    m = merge(DEV, current, Track(), [Fix(DEV, T, 17.0, 59.0)], index)  # tracks kept since now only
    assert (m.too_old, m.events) == (1, [])
    assert m.track.base is not None and m.track.base.last_ts == current.last_ts


def test_a_fix_as_collars_send_it_is_13_bytes_17_with_accuracy_and_battery():
    assert len(append_bytes(T, [Fix(DEV, T + 60_000, 17.6051234, 59.8051234)], [])) == 13
    assert (
        len(append_bytes(T, [Fix(DEV, T + 60_000, 17.60512, 59.80512, {"accuracy_m": 4.7, "battery": 87.0})], [])) == 17
    )
    assert len(append_bytes(T, [Fix(DEV, T + 60_000, 17.605123456789, 59.8)], [])) == 21  # a place not in 1e-7 degrees


fix_st = st.builds(
    lambda t, dt, x, y, a, b: (
        Fix(DEV, t, x, y, {k: v for k, v in (("accuracy_m", a), ("battery", b)) if v is not None} or None),
        t - dt,
    ),
    st.integers(T, T + 10 * H),
    st.sampled_from([1, 60_000, 1 << 32, 1 << 33, 0]),  # gaps: small, a minute, beyond 32 bits; 0: no fix before
    st.one_of(st.integers(-1_800_000_000, 1_800_000_000).map(lambda i: i / 1e7), st.floats(-180, 180)),
    st.one_of(st.integers(-900_000_000, 900_000_000).map(lambda i: i / 1e7), st.floats(-90, 90)),
    st.one_of(st.none(), st.integers(0, 70_000).map(lambda i: i / 100), st.floats(0, 1000)),
    st.one_of(st.none(), st.integers(0, 10_000).map(lambda i: i / 100), st.floats(-5, 105)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(fix_st, max_size=30))
def test_a_batch_encoded_at_once_gives_each_fix_its_own_record(rows):
    fixes = [f for f, _ in rows]
    prev = [p if p != f.ts_ms else -1 for f, p in rows]
    extras = [f.extra or {} for f in fixes]
    one_by_one = [
        fix_bytes(f.ts_ms, p, f.lon, f.lat, e.get("accuracy_m"), e.get("battery"))
        for f, p, e in zip(fixes, prev, extras, strict=True)
    ]
    assert encode_fixes(fixes, prev) == one_by_one
    for f, p, rec in zip(fixes, prev, one_by_one, strict=True):  # and each reads back exactly
        back = Track.from_bytes(MAGIC + bytes([BASE]) + _base(p) + rec) if p >= 0 else Track.from_bytes(MAGIC + rec)
        assert back.fixes(DEV) == [f]


def _base(ts: int) -> bytes:
    out = bytearray()
    state_record(out, BASE, DeviceState("farm", ts, 0.0, 0.0))
    return bytes(out[1:])


def _stored_track() -> bytes:
    track = Track(base=state(T - 1000))
    fixes = [
        Fix(DEV, T + k * 1000, 17.6 + k * 1e-5, 59.8, {"battery": 30.25, "accuracy_m": 3.333} if k % 3 == 0 else None)
        for k in range(12)
    ]
    track.extend(fixes, [Event("enter", "farm", DEV, "A", 1, T + 1000, 17.6, 59.8)], state(T + 11_000), 5)
    track.retracted[b"\x01" * 16] = (T + 1000, 2)
    return track.to_bytes()


def test_bytes_cut_short_or_damaged_read_as_a_track_in_order_or_fail_with_corrupt_record():
    # Review 12: Redis may hand back a track cut short or damaged; reading it raised struct.error,
    # IndexError, KeyError or orjson's error (a worker's loop catches fencex's errors), and some
    # damaged bytes read as a track whose fixes are out of time order (a merge bisects them).
    data = _stored_track()
    rnd = random.Random(12)
    damaged = [data[:n] for n in range(len(data))]
    for _ in range(3000):
        b = bytearray(data)
        for _ in range(rnd.randint(1, 3)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        damaged.append(bytes(b))
    for bad in damaged:
        try:
            back = Track.from_bytes(bad)
        except CorruptRecord:
            continue
        assert all(a < b for a, b in itertools.pairwise(back.ts)) and (not back.ts or back.ts[0] > back.floor)
    with pytest.raises(CorruptRecord):
        Track.from_bytes(data[:-1])


def test_an_id_retracted_more_times_than_two_bytes_count_still_writes():
    # Review 12: the times an id was retracted were a uint16: a track holding an id retracted 65,535
    # times (an event brought back and withdrawn again by late fixes) that a merge retracts once more
    # raised struct.error when written, failing the device's save.
    states: dict[str, DeviceState] = {}
    track = Track()
    index = FenceIndex([fence("A")])
    out, inside = (17.59, 59.79), (17.605, 59.805)
    fixes = [Fix(DEV, T, *out), Fix(DEV, T + 60_000, *inside)]
    track.extend(fixes, process(fixes, index, states, lambda d: "farm").events, states[DEV])
    (entered,) = track.ids[T + 60_000]
    track.retracted[entered] = (T + 60_000, 65_535)
    merged = merge(DEV, states[DEV], track, [Fix(DEV, T + 30_000, *inside)], index)
    assert [(e.type, e.turn) for e in merged.events if e.type == "retract"] == [("retract", 65_535)]
    assert Track.from_bytes(merged.track.to_bytes()).retracted[entered] == (T + 60_000, 65_536)


def test_an_append_to_a_track_not_there_reads_back_from_its_anchor_as_an_orphan():
    # The save script starts a missing track with ORPHAN and the append's anchor (the fix time before it).
    fixes = [Fix(DEV, T + 1000, 17.61, 59.8), Fix(DEV, T + 2000, 17.62, 59.8)]
    stored = MAGIC + bytes((ORPHAN,)) + anchor(T) + append_bytes(T, fixes, [])
    track = Track.from_bytes(stored)
    assert track.orphan and track.base is None and track.ts == [T + 1000, T + 2000]
    assert track.adopted() == Track()  # no snapshot yet: a merge starts again from the device's state


def test_a_state_of_a_device_in_thousands_of_fences_is_kept():
    # Review 12: a state's JSON had a uint16 length: a cow inside 3,000 overlapping fences of its farm
    # (it may hold 10,000) has a state over 64 KiB, and keeping it raised struct.error (the save failed).
    members = {f"paddock-{i:05d}": Membership(T, 1) for i in range(3000)}
    big = DeviceState("farm", T, 17.6, 59.8, members)
    track = Track(base=big)
    track.extend([Fix(DEV, T + 1000, 17.6, 59.8)], [], DeviceState("farm", T + 1000, 17.6, 59.8, members), 1)
    stored = track.to_bytes()
    assert len(stored) > 2 * 65_536
    assert Track.from_bytes(stored) == track
    assert append_bytes(
        T + 1000, [Fix(DEV, T + 2000, 17.6, 59.8)], [], DeviceState("farm", T + 2000, 17.6, 59.8, members)
    )

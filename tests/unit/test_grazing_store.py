"""The store's side of grazing without Redis: what the worker's save adds (HINCRBY), how a day's hash reads
back. (Against a real Redis: tests/integration/test_api_grazing.py.)"""

from __future__ import annotations

from fencex.store.grazing import GRAZING_TTL_S, GrazingRow, rows_of
from fencex.store.redis import RedisStore


def test_what_the_save_adds():
    store = RedisStore("redis://127.0.0.1:1/0", "fx")  # no I/O before connect()
    acc = {
        ("farm", "north", "", "2026-11-20"): 5_000,
        ("farm", "north", "ewes", "2026-11-20"): -2_000,  # a late fix's correction
        ("farm", "south", "", "2026-11-21"): 7_000,
        ("other", "north", "", "2026-11-20"): 1,
        ("farm", "east", "", "2026-11-20"): 0,  # nothing to add
    }
    farm, other = store.keys.group("farm"), store.keys.group("other")  # the farm's group's slot: {g<k>}
    assert store.grazing_writes(acc) == {
        f"fx:{farm}:graze:farm:2026-11-20": {"north\t": 5_000, "north\tewes": -2_000},
        f"fx:{farm}:graze:farm:2026-11-21": {"south\t": 7_000},
        f"fx:{other}:graze:other:2026-11-20": {"north\t": 1},
    }
    assert GRAZING_TTL_S == 400 * 86_400


def test_a_days_hash_reads_back_as_rows(caplog):
    fields = {
        b"north\t": b"7200000",
        b"north\tewes": b"60000",
        b"south\t": b"0",  # corrected to nothing: left out
        b"east\t": b"-5",  # below nothing (a correction before its credit): left out
        b"broken": b"5",  # no tab: unreadable, left out and logged
        b"west\t": b"many",  # not a number: unreadable
    }
    assert rows_of("2026-11-20", fields, None) == [
        GrazingRow("2026-11-20", "north", "", 7_200_000),
        GrazingRow("2026-11-20", "north", "ewes", 60_000),
    ]
    assert sum("unreadable" in r.message for r in caplog.records) == 2
    caplog.clear()
    assert [r.fence_id for r in rows_of("2026-11-20", fields, ["south", "north"])] == ["north", "north"]
    assert caplog.records == []  # the fields of the fences asked for only

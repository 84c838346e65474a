"""The cluster save's outbox entries (fencex.store.outbox), without Redis: what each partition step files."""

from __future__ import annotations

import msgpack

from fencex.detector import DeviceState
from fencex.event import Event
from fencex.store.base import Keys, SaveWrites, tag_of
from fencex.store.outbox import file_entries
from fencex.store.redis import RedisStore
from fencex.store.save import unpack_save

T0 = 1_790_000_000_000


def a_save() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    store = RedisStore("redis://unused:6379/0", "fx")
    states = {f"cow-{i}": DeviceState(f"farm-{i % 3}", T0, 17.6, 59.8) for i in range(6)}
    events = [Event("enter", f"farm-{i % 3}", f"cow-{i}", "north", 1, T0, 17.6, 59.8) for i in range(6)]
    grazing = {(f"farm-{i}", "north", "", "2026-11-21"): 1000 for i in range(3)}
    blob = store.pack_save(
        states,
        events,
        None,
        {("loc", 0): 1, ("loc", 1): 1},
        SaveWrites(grazing=grazing),
        {f"cow-{i}": i % 2 for i in range(6)},
    )
    assert blob is not None
    _, _, parts, farms = unpack_save(blob)
    return parts, farms


def test_each_partition_step_files_an_entry_in_its_own_slot_and_the_first_holds_the_farm_steps():
    parts, farms = a_save()
    assert len(parts) == 2 and farms
    filed = file_entries(Keys("fx"), parts, farms, 1000.0)
    assert set(filed) == {t for t, _ in parts}
    tokens = {f.token for f in filed.values()}
    (token,) = tokens
    first, second = (filed[t] for t, _ in parts)
    for key, f in filed.items():
        assert tag_of(f.key) == tag_of(key), "the entry is in the partition step's slot (one script, one slot)"
        assert key.endswith(token)
    at, steps, calls = msgpack.unpackb(first.entry)
    assert at == 1000.0 and steps == [t for t, _ in parts]
    assert [(t, b) for t, b in calls] == farms  # the farm steps as the saver sends them: tokens and blobs
    at, steps, holder = msgpack.unpackb(second.entry)
    assert steps == [t for t, _ in parts] and holder == first.key  # the rest name the first
    assert len(second.entry) < 200


def test_nothing_is_owed_without_a_farm_step_or_a_partition_step_before_it():
    parts, farms = a_save()
    assert file_entries(Keys("fx"), parts, [], 1.0) == {}
    assert file_entries(Keys("fx"), [], farms, 1.0) == {}

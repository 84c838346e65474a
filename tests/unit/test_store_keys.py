"""The store's keys on a Redis Cluster (docs/design/redis-cluster.md), without Redis: every script call and
transaction names the keys of one slot, which their hash tags decide; the URL chooses the client."""

from __future__ import annotations

import zlib

import msgpack

from fencex.detector import DeviceState
from fencex.event import Event
from fencex.store.base import Keys, SaveWrites, tag_of
from fencex.store.connection import cluster_seeds, max_connections, without_max_connections
from fencex.store.redis import RedisStore
from fencex.store.save import unpack_save

T0 = 1_790_000_000_000


def event(kind: str, device: str, tenant: str, fence: str = "north") -> Event:
    return Event(kind, tenant, device, fence, 1, T0, 17.6, 59.8)


def test_a_farms_keys_share_its_groups_slot_and_a_devices_its_partitions():
    k = Keys("fx", groups=16)
    farm = k.group("farm")
    assert farm == f"{{g{zlib.crc32(b'farm') % 16}}}"
    per_farm = [
        k.fence("farm", "north"),
        k.tenant_fences("farm"),
        k.fences(farm),
        k.changes(farm),
        k.geo("farm"),
        k.inside("farm", "north"),
        k.alerts("farm", "out"),
        k.grazing("farm", "2026-11-21"),
        k.events("farm"),
        k.seen("farm", "e1"),
        k.herd(farm),
        k.mob("farm", "ewes"),
        k.tenant_mobs("farm"),
        k.mob_of("farm"),
        k.mob_farms(farm),
        k.tenant_keys("farm"),
    ]
    assert {tag_of(key) for key in per_farm} == {farm}
    per_partition = [k.device(7, "cow-1"), k.track(7, "cow-1"), k.partition("loc", 7), k.generation("loc", 7)]
    assert {tag_of(key) for key in per_partition} == {"{p7}"}
    assert tag_of(k.devices(k.group("cow-1"))) == tag_of(k.where(k.group("cow-1"))) == k.group("cow-1")
    assert tag_of(k.api_key("abc")) == "fx:key:abc"  # no tag: a slot of its own


def test_every_call_of_a_save_names_one_slot():
    """The save of two farms' devices on three partitions: one call per partition, each of whose keys (its
    token, states, track prefix, device set, generation) are the partition's; one per farm group."""
    store = RedisStore("redis://127.0.0.1:1/0", "fx")  # no I/O: only pack_save
    k = store.keys
    farms = ("farm", "other")
    states = {f"cow-{i}": DeviceState(farms[i % 2], T0, 17.6, 59.8) for i in range(6)}
    partitions = {d: i % 3 for i, d in enumerate(states)}
    events = [event("enter", d, s.tenant) for d, s in states.items()] + [event("escape", "cow-1", "other")]
    writes = SaveWrites(
        tracks={"cow-0": b"x", "cow-4": b"y"},
        grazing={("farm", "north", "", "2026-11-21"): 5_000, ("other", "north", "", "2026-11-21"): 7},
    )
    new = {("loc", 2): ["cow-2", "cow-5"]}
    gens = {("loc", p): 3 for p in range(3)}
    blob = store.pack_save(states, events, new, gens, writes, partitions)
    checked, pointers, part_calls, farm_calls = unpack_save(blob)
    assert [g[0] for g in checked] == [k.generation("loc", p) for p in range(3)]
    written = {d: (key, p) for key, flat in pointers.items() for d, p in zip(flat[::2], flat[1::2])}
    assert written == {d: (k.where(k.group(d)), 2) for d in ("cow-2", "cow-5")}  # the new devices' partitions
    assert len(part_calls) == 3
    for token, call in part_calls:
        gen, flat, added, _tracks, track_prefix, *_ = msgpack.unpackb(call, raw=True)  # bytes: the scripts' strings
        keys = [token, *(x.decode() for x in [gen[0], *flat[::2], track_prefix, *(added[:1])])]
        assert len({tag_of(key) for key in keys}) == 1, keys
    assert sorted(tag_of(t) for t, _ in farm_calls) == sorted({k.group(f) for f in farms})
    for token, call in farm_calls:
        geo, rows, grazing, _ttl = msgpack.unpackb(call, raw=True)
        keys = [token, *(x.decode() for x in [*geo, *(row[1] for row in rows), *grazing])]
        assert len({tag_of(key) for key in keys}) == 1, keys


def test_the_url_chooses_the_client():
    assert cluster_seeds("redis://127.0.0.1:6379/0") is None
    url, nodes = cluster_seeds("redis+cluster://u:pw@10.0.0.1:7000,10.0.0.2:7001?max_connections=6") or ("", [])
    assert url == "redis://u:pw@10.0.0.1:7000?max_connections=6" and nodes == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert cluster_seeds("rediss+cluster://redis.example")[0] == "rediss://redis.example:6379"  # type: ignore[index]
    assert max_connections(url) == 6 and max_connections("redis://h:1") == 50
    assert without_max_connections(url) == "redis://u:pw@10.0.0.1:7000"


def test_a_followers_position_holds_every_feeds_id():
    store = RedisStore("redis://127.0.0.1:1/0", "fx", groups=3)  # no I/O
    assert store._position("0-0") == ["0-0", "0-0", "0-0"]  # from the start of every feed
    assert store._position("5-0 0-0 7-1") == ["5-0", "0-0", "7-1"]
    assert store._position("5-0") is None  # a position of one feed (before groups): read as trimmed, reloaded
    assert store._position("5-0 0-0 7-1 9-9") is None  # of another number of groups

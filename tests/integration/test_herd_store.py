"""The herd in the real Redis: settings and mobs (versions, conflicts, one mob per collar, the
farm's own fences and collars), their change-feed entries, the follower's view of them, and the
alert lists the worker's save keeps."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from fencex.detector import DeviceState
from fencex.errors import InAnotherMob, InvalidInput, LimitExceeded, NotFound, VersionConflict
from fencex.event import Event
from fencex.fence import Fence
from fencex.follower import FenceFollower
from fencex.herd import DEFAULT_RULES, HerdRules
from fencex.mob import MobRecord
from fencex.store.redis import RedisStore
from tests.integration.test_api import FAR, SQUARE

pytestmark = pytest.mark.integration


Test = Callable[[RedisStore], Coroutine[Any, Any, None]]


def on_store(test: Test) -> Callable[[Any], None]:
    """The async test run against a fresh namespace of the real Redis: a farm with a pasture and
    an exclusion zone, another farm with a pasture; cow-1 and cow-2 the farm's, cow-9 the other's."""

    async def go(url: str) -> None:
        s = RedisStore(url, f"h{uuid.uuid4().hex[:8]}")
        await s.connect()
        try:
            await s.put_fences(
                [
                    Fence(id="north", tenant="farm", geometry=SQUARE),
                    Fence(id="pond", tenant="farm", geometry=FAR, kind="exclusion"),
                    Fence(id="theirs", tenant="other", geometry=FAR),
                ]
            )
            await s.register_devices({"cow-1": "farm", "cow-2": "farm", "cow-9": "other"})
            await test(s)
        finally:
            await s.close()

    def run_it(redis_url: str) -> None:
        asyncio.run(go(redis_url))

    run_it.__name__ = test.__name__
    run_it.__doc__ = test.__doc__
    return run_it


def mob(mid: str = "ewes", tenant: str = "farm", **fields) -> MobRecord:
    return MobRecord(id=mid, tenant=tenant, **fields)


async def feed(s: RedisStore, kind: str) -> list[tuple[str, str, str, int]]:
    return [(c.op, c.key, c.tenant, c.version) for c in await s.changes("0-0", block_ms=0) if c.kind == kind]


@on_store
async def test_herd_settings_per_farm_and_on_the_feed(store):
    assert await store.get_herd_rules("farm") is DEFAULT_RULES and await store.herd_rules() == {}
    rules = HerdRules(confirm_fixes=3, silence_s=120.0, timezone="America/Santiago", track_window_s=7200.0)
    assert await store.put_herd_rules("farm", rules) == rules
    assert await store.get_herd_rules("farm") == rules and await store.get_herd_rules("other") is DEFAULT_RULES
    assert await store.herd_rules() == {"farm": rules}
    assert await feed(store, "herd") == [("upsert", "farm", "farm", 1)]


@on_store
async def test_unreadable_settings_give_the_defaults(store):
    await store.redis.hset(
        store.keys.herd(store.keys.group("farm")), "farm", b'{"confirm_fixes": 0}'
    )  # HerdRules refuses it
    assert await store.get_herd_rules("farm") is DEFAULT_RULES


@on_store
async def test_mob_versions_and_if_match(store):
    one = await store.put_mob(mob(fences=["north"], devices=["cow-1"]), create_only=True)
    assert one.version == 1 and one.updated_at > 0
    with pytest.raises(VersionConflict) as exists:
        await store.put_mob(mob(), create_only=True)
    assert exists.value.actual == 1 and exists.value.what == "mob"
    two = await store.put_mob(mob(name="Ewes", fences=["north", "pond"], devices=["cow-1"]), if_match=1)
    assert two.version == 2 and await store.get_mob("farm", "ewes") == two
    with pytest.raises(VersionConflict):
        await store.put_mob(mob(), if_match=1)
    with pytest.raises(VersionConflict):
        await store.delete_mob("farm", "ewes", if_match=1)
    assert (await store.delete_mob("farm", "ewes", if_match=2)) == 2  # the deleted version
    with pytest.raises(NotFound):
        await store.get_mob("farm", "ewes")
    assert await feed(store, "mob") == [
        ("upsert", "ewes", "farm", 1),
        ("upsert", "ewes", "farm", 2),
        ("delete", "ewes", "farm", 2),
    ]


@on_store
async def test_a_mob_record_that_no_longer_reads_can_be_replaced_or_deleted(store):
    """A stored mob that fails validation (an older or broken writer) is skipped by the followers;
    its farm must still be able to overwrite or delete it, and its collars must not stay held by it
    ("in another mob") when they are given to another mob."""
    await store.put_mob(mob(fences=["north"], devices=["cow-1", "cow-2"]))
    await store.redis.set(store.keys.mob("farm", "ewes"), b'{"id": "ewes", "version": 3, "fences": 7}')
    with pytest.raises(VersionConflict) as stale:
        await store.put_mob(mob(devices=["cow-1"]), if_match=1)
    assert stale.value.actual == 3  # its version read from what is left of it
    fixed = await store.put_mob(mob(fences=["north"], devices=["cow-1"]), if_match=3)
    assert fixed.version == 4 and await store.mob_of_device("farm", "cow-2") is None  # cow-2 let go
    await store.redis.set(store.keys.mob("farm", "ewes"), b"not json")
    assert await store.delete_mob("farm", "ewes") == 0  # no version left: 0
    assert await store.mob_of_device("farm", "cow-1") is None
    assert (await store.put_mob(mob("rams", devices=["cow-1", "cow-2"]), create_only=True)).version == 1


@on_store
async def test_mob_ids_are_per_farm(store):
    await store.put_mob(mob(fences=["north"], devices=["cow-1"]))
    theirs = await store.put_mob(mob(tenant="other", fences=["theirs"], devices=["cow-9"]))
    assert theirs.version == 1  # the same id on another farm is another mob
    with pytest.raises(NotFound):
        await store.delete_mob("nobody", "ewes")
    assert [m.tenant for m in await store.mobs()] == ["farm", "other"]
    assert [m.devices for m in await store.mobs("other")] == [["cow-9"]]


@on_store
async def test_a_mob_names_only_the_farms_fences_and_collars(store):
    with pytest.raises(InvalidInput, match="no fence 'theirs', 'gone' on this farm"):
        await store.put_mob(mob(fences=["north", "theirs", "gone"]))
    with pytest.raises(InvalidInput, match="'cow-9', 'stray' not registered to this farm"):
        await store.put_mob(mob(devices=["cow-1", "cow-9", "stray"]))
    assert await store.mobs("farm") == []  # nothing written


@on_store
async def test_a_collar_is_in_one_mob_of_its_farm(store):
    await store.put_mob(mob(devices=["cow-1", "cow-2"]))
    with pytest.raises(InAnotherMob) as taken:
        await store.put_mob(mob("rams", devices=["cow-2"]))
    assert taken.value.mob == "ewes" and taken.value.devices == ["cow-2"]
    assert await store.mob_of_device("farm", "cow-2") == "ewes"
    await store.put_mob(mob(devices=["cow-1"]))  # cow-2 leaves the ewes...
    assert await store.mob_of_device("farm", "cow-2") is None
    await store.put_mob(mob("rams", devices=["cow-2"]))  # ...and may join the rams
    await store.delete_mob("farm", "ewes")
    assert await store.mob_of_device("farm", "cow-1") is None
    assert await store.mob_of_device("farm", "cow-2") == "rams"


@on_store
async def test_the_mob_quota(store):
    await store.put_mob(mob("a"), max_per_tenant=2)
    await store.put_mob(mob("b"), max_per_tenant=2)
    await store.put_mob(mob("b", name="B"), max_per_tenant=2)  # a replacement is no new mob
    with pytest.raises(LimitExceeded) as over:
        await store.put_mob(mob("c"), max_per_tenant=2)
    assert over.value.limit == "max_mobs_per_tenant"


@on_store
async def test_the_follower_resolves_mobs_from_the_store(store):
    told: list[tuple[str, set[str]]] = []
    follower = FenceFollower(
        store,
        on_index=(handed := []).append,
        on_rules=lambda t: told.append(("rules", t)),
        on_mobs=lambda t: told.append(("mobs", t)),
    )
    await follower.load()
    assert follower.mob_of("cow-1") is None
    await store.put_herd_rules("farm", HerdRules(confirm_fixes=4))
    await store.put_mob(mob(fences=["north", "pond"], devices=["cow-1"]))
    assert await follower.step(0) is True and handed == []
    assert told == [("mobs", {"farm"}), ("rules", {"farm"})]  # no fence changed: that farm's devices only
    got = follower.mob_of("cow-1")
    assert got is not None and got.pastures == {"north"} and got.exclusions == {"pond"}
    assert follower.rules_of("farm").confirm_fixes == 4
    await store.delete_fence("farm", "north")
    await follower.step(0)
    assert follower.mob_of("cow-1").pastures == frozenset()  # a deleted fence is ignored
    await store.delete_mob("farm", "ewes")
    await follower.step(0)
    assert follower.mob_of("cow-1") is None


def event(type_: str, device: str, ts: int, tenant: str = "farm") -> Event:
    return Event(type_, tenant, device, "", 0, ts, 17.6, 59.8)


@on_store
async def test_the_save_keeps_the_farms_alert_lists(store):
    states = {d: DeviceState("farm", 1_000, 17.6, 59.8) for d in ("cow-1", "cow-2")}
    events = [
        event("escape", "cow-1", 1_000),
        event("battery_low", "cow-1", 1_000),
        event("silent", "cow-2", 900),
        event("escape", "cow-2", 1_100),
        event("return", "cow-2", 1_200),  # after its escape in the same save: not out
        event("enter", "cow-1", 1_000),
    ]
    await store.save_packed(store.pack_save(states, events))
    assert await store.alerts("farm", "out", 10) == [("cow-1", 1_000)]
    assert await store.alerts("farm", "battery_low", 10) == [("cow-1", 1_000)]
    assert await store.alerts("farm", "silent", 10) == [("cow-2", 900)]
    assert await store.alerts("other", "out", 10) == []
    later = [event("battery_ok", "cow-1", 2_000), event("resumed", "cow-2", 2_000), event("return", "cow-1", 2_000)]
    await store.save_packed(store.pack_save(states, later))
    assert await store.alert_counts("farm", ("out", "silent", "battery_low")) == {
        "out": 0,
        "silent": 0,
        "battery_low": 0,
    }


@on_store
async def test_alert_pages_hold_across_ties_and_departures(store):
    states = {f"c{i:02d}": DeviceState("farm", 1, 17.6, 59.8) for i in range(12)}
    # three collars escaped at each of four times: ties a page must not split wrongly
    await store.save_packed(store.pack_save(states, [event("escape", d, 1_000 + i // 3) for i, d in enumerate(states)]))
    pages, after = [], None
    while True:
        page = await store.alerts("farm", "out", 5, after)
        if not page:
            break
        pages.append(page)
        after = (page[-1][1], page[-1][0])
        if len(pages) == 1:  # one of the first page leaves the list: nobody moves page
            await store.save_packed(store.pack_save(states, [event("return", "c01", 5_000)]))
    assert [d for p in pages for d, _ in p] == sorted(states)
    assert [len(p) for p in pages] == [5, 5, 2]

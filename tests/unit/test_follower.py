"""The fence follower against an in-memory change feed: changes, quarantine, gaps, retries."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Collection, Sequence

import orjson
import pytest

from fencex.errors import StoreUnavailable
from fencex.fence import Fence
from fencex.follower import FeedStore, FenceFollower
from fencex.herd import DEFAULT_RULES, HerdRules, Mob
from fencex.index import FenceIndex
from fencex.mob import MobRecord
from fencex.store.base import Change, decode_fences
from fencex.store.devices import registrations
from tests.unit.factory import LAT0, LON0, fence, known

INSIDE = (LON0 + 0.005, LAT0 + 0.005)
MIXED_3D = {  # issue 9 #1: what an older fencex stored: [lon, lat] beside [lon, lat, alt]
    "type": "Polygon",
    "coordinates": [[[LON0, LAT0], [LON0 + 0.01, LAT0, 5], [LON0 + 0.01, LAT0 + 0.01], [LON0, LAT0]]],
}


class FakeFeed:
    """The store as the follower sees it, in memory: ``groups`` change feeds (one by default), a farm's
    changes in its group's, a device's registration in the device's (``place`` names a name's group; crc32
    places the others, as the store does). Each feed is trimmed like a capped stream: a prefix of its
    entries goes, and ``trimmed_feeds`` says which lost any after a position. ``read`` lists the groups
    whose fences were read (a reload of some groups reads theirs only)."""

    def __init__(self, groups: int = 1, place: dict[str, int] | None = None) -> None:
        self.records: dict[str, bytes] = {}
        self.owner: dict[str, str] = {}  # fence id -> its farm (a garbage record's too)
        self.devices: dict[str, str] = {}
        self.rules: dict[str, HerdRules] = {}
        self.mob_records: dict[tuple[str, str], MobRecord] = {}
        self.groups = [f"{{g{k}}}" for k in range(groups)]
        self.place = place or {}
        self.feeds: list[list[tuple[int, str, str, str, str]]] = [[] for _ in self.groups]
        self.generated = [0] * groups  # each feed's last id
        self.trimmed_up_to = [0] * groups  # each feed's last entry trimmed away
        self.down = 0  # the next calls to changes() that fail
        self.read: list[str] = []

    def feed_groups(self) -> list[str]:
        return list(self.groups)

    def feed_group(self, name: str) -> str:
        return self.groups[self.place.get(name, zlib.crc32(name.encode()) % len(self.groups))]

    def _append(self, kind: str, op: str, key: str, tenant: str) -> None:
        g = self.groups.index(self.feed_group(key if kind == "device" else tenant))
        self.generated[g] += 1
        self.feeds[g].append((self.generated[g], kind, op, key, tenant))

    def put(self, f: Fence) -> None:
        self.put_raw(f.id, f.tenant, f.to_json())

    def put_raw(self, fid: str, tenant: str, raw: bytes) -> None:
        self.records[fid], self.owner[fid] = raw, tenant
        self._append("fence", "upsert", fid, tenant)

    def delete(self, fid: str, tenant: str) -> None:
        del self.records[fid]
        self._append("fence", "delete", fid, tenant)

    def register(self, devices: dict[str, str]) -> None:
        self.devices.update(devices)
        for d, t in devices.items():
            self._append("device", "upsert", d, t)

    def put_rules(self, tenant: str, rules: HerdRules) -> None:
        self.rules[tenant] = rules
        self._append("herd", "upsert", tenant, tenant)

    def put_mob(self, mob: MobRecord) -> None:
        self.mob_records[(mob.tenant, mob.id)] = mob
        self._append("mob", "upsert", mob.id, mob.tenant)

    def delete_mob(self, tenant: str, mob_id: str) -> None:
        del self.mob_records[(tenant, mob_id)]
        self._append("mob", "delete", mob_id, tenant)

    def trim(self, keep: int, group: int = 0) -> None:
        feed = self.feeds[group]
        gone, self.feeds[group] = feed[: len(feed) - keep], feed[len(feed) - keep :]
        if gone:
            self.trimmed_up_to[group] = gone[-1][0]

    def _position(self, after: str) -> list[int] | None:
        ids = after.split()
        if ids == ["0-0"]:
            return [0] * len(self.groups)
        return [int(i.split("-")[0]) for i in ids] if len(ids) == len(self.groups) else None

    async def last_change_id(self, after: str | None = None, groups: Collection[str] | None = None) -> str:
        at = self._position(after) if after is not None else None
        if at is None or groups is None:
            at, groups = [0] * len(self.groups), self.groups
        for g, name in enumerate(self.groups):
            if name in groups:
                at[g] = self.generated[g]
        return " ".join(f"{n}-0" for n in at)

    async def changes(self, after: str, block_ms: int = 0, count: int = 10_000) -> list[Change]:
        if self.down:
            self.down -= 1
            raise StoreUnavailable("redis does not answer: fake")
        at = self._position(after)
        found: list[Change] = []
        for g, feed in enumerate(self.feeds if at is not None else []):
            assert at is not None
            for n, kind, op, key, tenant in [e for e in feed if e[0] > at[g]][:count]:
                at[g] = n
                found.append(Change(" ".join(f"{i}-0" for i in at), kind, op, key, tenant, 1))
        if not found:
            await asyncio.sleep(block_ms / 1000)  # XREAD BLOCK: the loop goes on meanwhile
        return found

    async def trimmed_feeds(self, after: str) -> set[str]:
        at = self._position(after)
        if at is None:
            return set(self.groups)
        return {name for g, name in enumerate(self.groups) if self.trimmed_up_to[g] > at[g]}

    async def changes_trimmed(self, after: str) -> bool:  # (what the follower asked before review15d #2)
        return bool(await self.trimmed_feeds(after))

    async def fences(self, tenant: str | None = None, *, unreadable: dict[str, str] | None = None) -> list[Fence]:
        ids = sorted(self.records)
        found = decode_fences(ids, [self.records[i] for i in ids], unreadable)
        return [f for f in found.values() if f is not None and tenant in (None, f.tenant)]

    async def fence_pages(
        self,
        tenant: str | None = None,
        *,
        groups: Sequence[str] | None = None,
        unreadable: dict[str, str] | None = None,
        light: bool = False,
    ) -> AsyncIterator[list[Fence]]:
        self.read.extend(groups if groups is not None else self.groups)
        for fid in sorted(self.records):  # a page a fence: the follower must not need them all at once
            if groups is not None and self.feed_group(self.owner[fid]) not in groups:
                continue
            got = decode_fences([fid], [self.records[fid]], unreadable, light)[fid]
            if got is not None and tenant in (None, got.tenant):
                yield [got]

    async def fences_by_id(
        self, ids: list[str], *, unreadable: dict[str, str] | None = None, light: bool = False
    ) -> dict[str, Fence | None]:
        return decode_fences(ids, [self.records.get(i) for i in ids], unreadable, light)

    def _ours(self, name: str, groups: Sequence[str] | None) -> bool:
        return groups is None or self.feed_group(name) in groups

    async def device_tenants(self, groups: Sequence[str] | None = None) -> dict[str, str]:
        return {d: t for d, t in self.devices.items() if self._ours(d, groups)}

    async def herd_rules(self, groups: Sequence[str] | None = None) -> dict[str, HerdRules]:
        return {t: r for t, r in self.rules.items() if self._ours(t, groups)}

    async def get_herd_rules(self, tenant: str) -> HerdRules:
        return self.rules.get(tenant, DEFAULT_RULES)

    async def mobs(self, tenant: str | None = None, *, groups: Sequence[str] | None = None) -> list[MobRecord]:
        return [m for (t, _), m in sorted(self.mob_records.items()) if tenant in (None, t) and self._ours(t, groups)]

    async def mobs_by_id(self, tenant: str, ids: list[str]) -> dict[str, MobRecord | None]:
        return {i: self.mob_records.get((tenant, i)) for i in ids}


def stored(fid: str, geometry: dict, tenant: str = "farm", version: int = 1) -> bytes:
    return orjson.dumps({"id": fid, "tenant": tenant, "version": version, "geometry": geometry})


def inside(follower: FenceFollower, tenant: str = "farm") -> list[str]:
    return sorted(f.id for f in follower.index.containing(tenant, *INSIDE))


def test_the_fake_is_a_feed_store():
    store: FeedStore = FakeFeed()  # mypy checks the fake against the Protocol
    assert store is not None


def test_changes_are_applied_in_one_rebuild_and_handed_over():
    store = FakeFeed()
    store.put(fence("north"))
    follower = FenceFollower(store, on_index=(handed := []).append)
    asyncio.run(follower.load())
    store.put(fence("south", tenant="other"))
    store.register({"cow-1": "farm", "cow-2": "other"})
    store.delete("north", "farm")
    assert asyncio.run(follower.step(0)) is True
    assert inside(follower) == [] and inside(follower, "other") == ["south"]
    assert follower.tenants == {"cow-1": "farm", "cow-2": "other"} and follower.applied == 4
    assert handed == [follower.index]
    assert asyncio.run(follower.step(0)) is False  # nothing new


def test_a_fence_change_rebuilds_its_farms_shard_only():
    """Issue 15 #2: the follower builds the changed farms' shards; every other farm's is the one it had."""
    store = FakeFeed()
    for t in ("farm", "other", "third"):
        store.put(fence(f"{t}-1", tenant=t))
    follower = FenceFollower(store)
    before = asyncio.run(follower.load())
    assert before.changed is None and set(before.farms) == {"farm", "other", "third"}
    store.put(fence("farm-2", lon=LON0 + 0.1))
    asyncio.run(follower.step(0))
    after = follower.index
    assert after.changed == frozenset({"farm"}) and len(after) == 4
    assert after.farm("other") is before.farm("other") and after.farm("third") is before.farm("third")
    assert after.farm("farm").geometry("farm-1") is before.farm("farm").geometry("farm-1")  # reused
    # a farm whose last fence goes is gone, from the index and from the follower's fences by farm
    store.delete("third-1", "third")
    asyncio.run(follower.step(0))
    assert "third" not in follower.index.farms and "third" not in follower.by_farm
    assert follower.index.farm("other") is before.farm("other")
    # the fences by farm are what a full load gives
    again = FenceFollower(store)
    asyncio.run(again.load())
    assert follower.by_farm == again.by_farm
    assert {t: s.fences for t, s in follower.index.farms.items()} == {t: s.fences for t, s in again.index.farms.items()}


def test_a_fence_that_does_not_build_is_quarantined_not_fatal():
    """Issue 9 #1: a stored fence that does not build, or a record that cannot be read, stops no farm."""
    store = FakeFeed()
    store.put(fence("north"))
    store.put(fence("theirs", tenant="other"))
    store.put_raw("old-3d", "farm", stored("old-3d", MIXED_3D, version=4))
    store.put_raw("garbage", "farm", b"{not json")
    follower = FenceFollower(store)
    asyncio.run(follower.load())
    assert inside(follower) == ["north"] and inside(follower, "other") == ["theirs"]
    assert set(follower.quarantined) == {"old-3d", "garbage"}
    assert follower.quarantined["old-3d"].tenant == "farm" and follower.quarantined["old-3d"].version == 4
    assert "Invalid JSON" in follower.quarantined["garbage"].reason
    # through the feed: the farm's tenant is known from the change
    store.put_raw("bad-later", "other", b'{"id": "bad-later"}')
    store.put_raw("old-3d-too", "other", stored("old-3d-too", MIXED_3D, tenant="other"))
    asyncio.run(follower.step(0))
    assert set(follower.quarantined_of("other")) == {"bad-later", "old-3d-too"}
    assert inside(follower, "other") == ["theirs"]
    # a good version lifts the quarantine
    store.put(fence("old-3d", version=5))
    store.put(fence("bad-later", tenant="other"))
    asyncio.run(follower.step(0))
    assert set(follower.quarantined) == {"garbage", "old-3d-too"}
    assert inside(follower) == ["north", "old-3d"] and inside(follower, "other") == ["bad-later", "theirs"]


def test_a_trimmed_feed_reloads_fences_and_registrations_in_full():
    """Issue 9 #7: changes trimmed from the capped feed before a lagging follower read them."""
    store = FakeFeed()
    store.put(fence("north"))
    follower = FenceFollower(store, on_index=(handed := []).append)
    asyncio.run(follower.load())
    store.put(fence("missed", tenant="other"))
    store.register({f"cow-{i}": "farm" for i in range(100)})
    store.delete("north", "farm")
    store.register({"cow-last": "other"})
    store.trim(keep=1)  # only the last registration is left in the feed
    assert asyncio.run(follower.step(0)) is True
    assert inside(follower) == [] and inside(follower, "other") == ["missed"]
    assert len(follower.tenants) == 101 and follower.tenants["cow-7"] == "farm"
    assert follower.reloads == 1 and handed == [follower.index]
    # and it follows on from the reload
    store.put(fence("after", tenant="other", lon=LON0 + 0.001))
    asyncio.run(follower.step(0))
    assert inside(follower, "other") == ["after", "missed"] and follower.reloads == 1


def test_a_trimmed_feed_reloads_its_group_only_and_the_index_equals_a_full_reloads():
    """review15d #2: a follower whose position fell behind one group's trimmed feed reloaded every fence of
    the country (tens of seconds at a million fences); now it reloads that group's farms (fences, mobs,
    settings) and devices only, keeps every other farm's shard, and knows what a full reload would."""
    place = {"farm": 0, "cow-1": 0, "other": 1, "cow-2": 1, "cow-3": 1}
    store = FakeFeed(groups=2, place=place)
    store.put(fence("north"))
    store.put(fence("theirs", lon=LON0 + 1, tenant="other"))
    store.put_raw("garbage", "other", b"{not json")
    store.register({"cow-1": "farm", "cow-2": "other"})
    store.put_rules("other", HerdRules(confirm_fixes=3))
    store.put_mob(MobRecord(id="m", tenant="other", fences=["theirs"], devices=["cow-2"]))
    follower = FenceFollower(store, on_index=(handed := []).append, on_rules=(told := []).append)
    asyncio.run(follower.load())
    kept, store.read = follower.index.farm("farm"), []
    # the other farm's group changes while the follower lags, and its feed is trimmed past the follower
    store.delete("theirs", "other")
    store.put(fence("new", lon=LON0 + 1, tenant="other"))
    store.put_raw("garbage", "other", fence("garbage", lon=LON0 + 2, tenant="other").to_json())  # readable now
    store.register({"cow-3": "other", "cow-2": "farm"})
    store.put_rules("other", HerdRules(confirm_fixes=5))
    store.put_mob(MobRecord(id="m", tenant="other", fences=["new"], devices=["cow-3"]))
    store.trim(keep=0, group=1)
    store.put(fence("south", lat=LAT0 - 0.02))  # the farm's group: kept in its feed
    assert asyncio.run(follower.step(0)) is True
    assert store.read == ["{g1}"], "only the trimmed feed's group is read again"
    reloaded, applied = handed  # the group reloaded, then the other feed's change read again and applied
    assert reloaded.changed == {"other"} and reloaded.farm("farm") is kept, "another group's farm was rebuilt"
    assert applied is follower.index and applied.changed == {"farm"} and told == [{"other"}]
    assert follower.reloads == 1 and follower.groups_reloaded == 1
    assert follower.rules_of("other").confirm_fixes == 5 and follower.mob_of("cow-3").pastures == {"new"}
    full = FenceFollower(store)
    asyncio.run(full.load())
    assert known(follower) == known(full)
    assert inside(follower) == ["north"] and follower.tenants["cow-2"] == "farm"


def test_follow_retries_while_the_store_is_down():
    store = FakeFeed()
    follower = FenceFollower(store, on_error=(errors := []).append)
    asyncio.run(follower.load())
    store.down = 1
    store.put(fence("north"))

    async def run() -> None:
        task = asyncio.create_task(follower.follow(block_ms=5))
        try:
            for _ in range(400):
                if inside(follower):
                    return
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(run())
    assert inside(follower) == ["north"]
    assert [type(e) for e in errors] == [StoreUnavailable]


def test_index_of_a_follower_is_a_fence_index():
    assert isinstance(FenceFollower(FakeFeed()).index, FenceIndex)


# -------------------------------------------------------------- the herd: settings and mobs


def herd_farm() -> tuple[FakeFeed, FenceFollower, list[FenceIndex | set[str]]]:
    """A farm with two pastures, a pond (exclusion), a water point (zone) and another farm's
    pasture; cow-1 and cow-2 registered to the farm, cow-9 to the other farm. The list holds what
    the follower handed over (an index) or told ``on_mobs`` (the farms whose mobs changed)."""
    store = FakeFeed()
    store.put(fence("north"))
    store.put(fence("south", lat=LAT0 - 0.02))
    store.put(fence("pond", lon=LON0 + 0.002, size=0.001, kind="exclusion"))
    store.put(fence("water", lon=LON0 + 0.005, size=0.001, kind="zone"))
    store.put(fence("theirs", lon=LON0 + 1, tenant="other"))
    store.register({"cow-1": "farm", "cow-2": "farm", "cow-9": "other"})
    follower = FenceFollower(store, on_index=(handed := []).append, on_mobs=handed.append)
    asyncio.run(follower.load())
    return store, follower, handed


def test_herd_settings_are_loaded_and_followed_per_farm():
    store = FakeFeed()
    store.put_rules("farm", HerdRules(confirm_fixes=3))
    follower = FenceFollower(store, on_index=(handed := []).append, on_rules=(told := []).append)
    asyncio.run(follower.load())
    assert follower.rules_of("farm").confirm_fixes == 3
    assert follower.rules_of("other") is DEFAULT_RULES  # no settings stored: the defaults
    store.put_rules("other", HerdRules(silence_s=120))
    # not handed over (no fence changed): the worker is told which farm, and re-times its silences only
    assert asyncio.run(follower.step(0)) is True
    assert follower.rules_of("other").silence_s == 120 and follower.rules_of("farm").confirm_fixes == 3
    assert handed == [] and told == [{"other"}]


def test_a_mob_is_resolved_to_the_farms_pastures_and_exclusion_zones():
    store, follower, _ = herd_farm()
    # a zone means nothing to the herd, another farm's fence and an unknown id are ignored
    store.put_mob(
        MobRecord(id="ewes", tenant="farm", fences=["north", "pond", "water", "theirs", "nope"], devices=["cow-1"])
    )
    asyncio.run(follower.step(0))
    mob = follower.mob_of("cow-1")
    assert mob is not None and mob.pastures == {"north"} and mob.exclusions == {"pond"}
    assert follower.mob_of("cow-2") is None  # in no mob: the farm's default mob


def test_a_mob_naming_no_fence_has_the_default_mobs_fences_under_its_own_id():
    store, follower, _ = herd_farm()
    store.put_mob(MobRecord(id="all", tenant="farm", devices=["cow-1"]))
    asyncio.run(follower.step(0))
    default = follower.index.mob("farm")
    assert default.pastures == {"north", "south"} and default.id == ""
    # the herd rules see the default mob's fences; grazing is kept under the mob's id
    assert follower.mob_of("cow-1") == Mob(default.pastures, default.exclusions, "all")
    store.put(fence("east", lon=LON0 + 0.05))  # a new pasture of the farm: the mob's too
    asyncio.run(follower.step(0))
    assert follower.mob_of("cow-1") == Mob(frozenset({"north", "south", "east"}), frozenset({"pond"}), "all")


def test_a_resolved_mob_carries_its_id():
    store, follower, _ = herd_farm()
    store.put_mob(MobRecord(id="ewes", tenant="farm", fences=["north"], devices=["cow-1"]))
    asyncio.run(follower.step(0))
    assert follower.mob_of("cow-1") == Mob(frozenset({"north"}), frozenset(), "ewes")


def test_a_device_counts_only_in_a_mob_of_the_farm_it_is_registered_to():
    store, follower, _ = herd_farm()
    # the other farm names the farm's cow (the API refuses it; a transfer can leave it so)
    store.put_mob(MobRecord(id="rams", tenant="other", fences=["theirs"], devices=["cow-1", "cow-9"]))
    asyncio.run(follower.step(0))
    assert follower.mob_of("cow-1") is None and follower.mob_of("cow-9") is not None
    store.register({"cow-1": "other"})  # moved to the other farm: now its mob applies
    asyncio.run(follower.step(0))
    assert follower.mob_of("cow-1") == follower.mob_of("cow-9")


def test_a_mob_change_tells_its_farm_and_a_delete_returns_the_default():
    store, follower, handed = herd_farm()
    store.put_mob(MobRecord(id="ewes", tenant="farm", fences=["south"], devices=["cow-1", "cow-2"]))
    assert asyncio.run(follower.step(0)) is True
    assert handed == [{"farm"}]  # the worker re-evaluates that farm's escapes and returns, not every farm's
    assert follower.mob_of("cow-2") is not None and follower.mob_of("cow-2").pastures == {"south"}
    store.put_mob(MobRecord(id="ewes", tenant="farm", fences=["south"], devices=["cow-1"]))
    asyncio.run(follower.step(0))
    assert follower.mob_of("cow-2") is None and len(handed) == 2
    store.delete_mob("farm", "ewes")
    asyncio.run(follower.step(0))
    assert follower.mobs == {} and len(handed) == 3


def test_a_fence_deleted_or_changed_is_resolved_again():
    store, follower, _ = herd_farm()
    store.put_mob(MobRecord(id="ewes", tenant="farm", fences=["north", "south"], devices=["cow-1"]))
    asyncio.run(follower.step(0))
    store.delete("south", "farm")  # its id stays in the mob: ignored
    asyncio.run(follower.step(0))
    assert follower.mob_of("cow-1").pastures == {"north"}
    store.put(fence("north", kind="exclusion", version=2))  # north is an exclusion zone now
    asyncio.run(follower.step(0))
    assert follower.mob_of("cow-1").pastures == frozenset() and follower.mob_of("cow-1").exclusions == {"north"}
    store.put(fence("south", lat=LAT0 - 0.02, version=2))  # recreated: counts again
    asyncio.run(follower.step(0))
    assert follower.mob_of("cow-1").pastures == {"south"}


def test_a_reload_after_a_gap_brings_settings_and_mobs_back():
    store, follower, _ = herd_farm()
    store.put_mob(MobRecord(id="ewes", tenant="farm", fences=["north"], devices=["cow-1"]))
    store.put_rules("farm", HerdRules(confirm_fixes=4))
    store.trim(keep=0)  # the follower never read those changes
    assert asyncio.run(follower.step(0)) is True
    assert follower.reloads == 1 and follower.rules_of("farm").confirm_fixes == 4
    assert follower.mob_of("cow-1").pastures == {"north"}


def test_a_registration_or_another_farms_change_resolves_no_mob_of_this_farm(monkeypatch):
    """Mobs are resolved farm by farm: a collar claimed, or another farm's fence or mob changed,
    costs nothing for this farm's mobs (the review measured 0.64 s of every worker's loop per
    registration with 100 mobs of 10,000 collars, when every mob was resolved again)."""
    import fencex.follower as follower_module

    store, follower, _ = herd_farm()
    store.put_mob(MobRecord(id="ewes", tenant="farm", fences=["north"], devices=["cow-1"]))
    asyncio.run(follower.step(0))
    calls: list[str] = []
    real = follower_module.resolve
    monkeypatch.setattr(follower_module, "resolve", lambda r, f, d=None: calls.append(r.tenant) or real(r, f, d))
    store.register({"cow-3": "farm"})
    store.put_mob(MobRecord(id="theirs", tenant="other", fences=["theirs"], devices=["cow-9"]))
    store.put(fence("theirs", lon=LON0 + 1.1, tenant="other"))
    asyncio.run(follower.step(0))
    assert calls == ["other"]  # once for the other farm's change, never for this farm's mob
    assert follower.mob_of("cow-1") is not None and follower.mob_of("cow-9") is not None
    store.register({"cow-1": "other"})  # moved: no longer in a mob of the farm it is registered to
    asyncio.run(follower.step(0))
    assert follower.mob_of("cow-1") is None


def test_a_mob_change_read_with_another_farms_fence_change_is_still_told():
    """Issue 15 #2 (review): the worker re-evaluates the farms the index says changed and those ``on_mobs``
    names. A farm's mob change read in the same step as another farm's fence change must be one of them:
    the new index names the fence's farm only, so the mob's farm has to be told (its escapes re-evaluated)."""
    store, follower, handed = herd_farm()
    store.put_mob(MobRecord(id="rams", tenant="other", fences=["theirs"], devices=["cow-9"]))
    store.put(fence("north", lon=LON0 + 0.5, version=2))  # the farm's fence, in the same read
    assert asyncio.run(follower.step(0)) is True
    told: set[str] = set()
    for h in handed:
        told |= h if isinstance(h, set) else (h.changed or set())
    assert {"farm", "other"} <= told


def test_a_settings_change_read_with_another_farms_fence_change_is_still_told():
    """As the mob change above: the worker re-times the silences of the farms ``on_rules`` names only (a
    fence change re-times none), so settings read in the same step as a fence change must be told too."""
    store = FakeFeed()
    store.put(fence("north"))
    follower = FenceFollower(store, on_index=(handed := []).append, on_rules=(told := []).append)
    asyncio.run(follower.load())
    store.put_rules("other", HerdRules(silence_s=120))
    store.put(fence("north", lon=LON0 + 0.5, version=2))
    assert asyncio.run(follower.step(0)) is True
    assert len(handed) == 1 and told == [{"other"}]


def test_the_follower_keeps_no_coordinates_and_its_index_still_answers():
    """Issue 15 (a worker's memory a fence): the follower's records are light, the index built from them."""
    store = FakeFeed()
    store.put(fence("north", dwell_s=60.0, tags=["pasture"]))
    follower = FenceFollower(store)
    asyncio.run(follower.load())
    kept = follower.fences["north"]
    assert "coordinates" not in kept.geometry and kept.light_record
    assert kept.model_dump(exclude={"geometry"}) == fence("north", dwell_s=60.0, tags=["pasture"]).model_dump(
        exclude={"geometry"}
    )
    assert inside(follower) == ["north"]
    store.put(fence("north", lon=LON0 + 1, version=2))  # moved away: a change read light too
    asyncio.run(follower.step(0))
    assert inside(follower) == [] and follower.fences["north"].light_record


def test_a_reload_does_not_reuse_a_geometry_of_another_record_with_the_same_version():
    """A store wiped and written again (same id, same version, another shape): the light records' digests
    differ, so the index does not keep the old geometry (it compares geometries, not versions alone)."""
    store = FakeFeed()
    store.put(fence("north"))
    follower = FenceFollower(store)
    asyncio.run(follower.load())
    assert inside(follower) == ["north"]
    store.records["north"] = fence("north", lon=LON0 + 1).to_json()  # version 1 again, elsewhere
    asyncio.run(follower.load())
    assert inside(follower) == []


def test_registrations_hold_one_string_a_farm():
    """Issue 15 #3: each farm id is held once, not once a device (loaded, and heard from the feed)."""
    hashes = [{b"cow-1": b"farm", b"cow-2": b"farm"}, {b"cow-3": b"farm", b"cow-4": b"other"}]
    got = registrations(hashes)
    assert got == {"cow-1": "farm", "cow-2": "farm", "cow-3": "farm", "cow-4": "other"}
    assert got["cow-1"] is got["cow-2"] is got["cow-3"]  # one string for the farm, across the hashes too
    store = FakeFeed()
    store.put(fence("north"))
    store.devices = {"cow-1": "".join(["fa", "rm"])}  # each a string of its own, as decoded
    follower = FenceFollower(store)
    asyncio.run(follower.load())
    store.register({"cow-2": "".join(["fa", "rm"]), "cow-3": "".join(["fa", "rm"])})
    asyncio.run(follower.step(0))
    t = follower.tenants
    assert t == {"cow-1": "farm", "cow-2": "farm", "cow-3": "farm"} and t["cow-2"] is t["cow-3"]


def test_a_follower_without_registrations_holds_none():
    """Issue 15 #3: the API reads no registration, so its follower holds none (loaded or from the feed)."""
    store = FakeFeed()
    store.put(fence("north"))
    store.register({"cow-1": "farm"})
    follower = FenceFollower(store, on_index=(handed := []).append, registrations=False)
    asyncio.run(follower.load())
    store.register({"cow-2": "farm"})
    assert asyncio.run(follower.step(0)) is False and follower.tenants == {} and follower.applied == 1
    store.put(fence("south"))
    assert asyncio.run(follower.step(0)) is True and inside(follower) == ["north", "south"] and len(handed) == 1
    assert follower.tenants == {}

"""The mob model: checked fields, lists once each, stored form, and its resolution against fences."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fencex.errors import InvalidInput
from fencex.herd import Mob
from fencex.mob import MobRecord, resolve
from tests.unit.factory import fence

FENCES = {
    f.id: f
    for f in (
        fence("north"),
        fence("pond", kind="exclusion"),
        fence("water", kind="zone"),
        fence("theirs", tenant="other"),
    )
}


def test_lists_keep_their_order_once_each():
    mob = MobRecord(id="ewes", tenant="farm", fences=["north", "pond", "north"], devices=["c2", "c1", "c2"])
    assert mob.fences == ["north", "pond"] and mob.devices == ["c2", "c1"]


@pytest.mark.parametrize(
    "fields",
    [
        {"id": ""},  # an id is needed
        {"id": "a/b"},  # ids are of the fences' alphabet
        {"id": "ewes", "fences": ["bad id"]},
        {"id": "ewes", "devices": [""]},
        {"id": "ewes", "name": "x" * 201},
        {"id": "ewes", "version": 0},
        {"id": "ewes", "colour": "red"},  # unknown fields are refused, not dropped
    ],
)
def test_bad_fields_are_refused(fields):
    with pytest.raises(ValidationError):
        MobRecord(tenant="farm", **fields)


def test_the_stored_form_reads_back_and_a_broken_one_says_so():
    mob = MobRecord(id="ewes", tenant="farm", name="Ewes", fences=["north"], devices=["c1"], version=3)
    assert MobRecord.from_json(mob.to_json()) == mob
    with pytest.raises(InvalidInput, match="stored mob unreadable: version"):
        MobRecord.from_json(b'{"id": "ewes", "tenant": "farm", "version": "three"}')


@pytest.mark.parametrize(
    ("fences", "want"),
    [
        (["north", "pond"], Mob(frozenset({"north"}), frozenset({"pond"}), "ewes")),  # a pasture, an exclusion zone
        (["water"], Mob(id="ewes")),  # a plain zone means nothing to the herd rules
        (["theirs"], Mob(id="ewes")),  # another farm's fence is not this mob's
        (["gone", "north"], Mob(frozenset({"north"}), id="ewes")),  # a deleted fence is ignored
        ([], None),  # no fence named: the farm's default mob
    ],
)
def test_resolution_against_the_fences_that_exist(fences, want):
    assert resolve(MobRecord(id="ewes", tenant="farm", fences=fences), FENCES) == want


def test_a_mob_naming_no_fence_is_the_default_mobs_fences_under_its_id():
    default = Mob(frozenset({"north"}), frozenset({"pond"}))
    got = resolve(MobRecord(id="ewes", tenant="farm"), FENCES, default)
    assert got == Mob(frozenset({"north"}), frozenset({"pond"}), "ewes")
    # fences named: the default plays no part
    assert resolve(MobRecord(id="ewes", tenant="farm", fences=["water"]), FENCES, default) == Mob(id="ewes")

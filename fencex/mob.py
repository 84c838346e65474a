"""Mobs: a farm's devices grouped into a herd, with the pastures and exclusion zones it is given.

A mob names fences by id; each fence's ``kind`` says what it is to the mob (a ``pasture``
the animals belong in, an ``exclusion`` zone they must stay out of; a plain ``zone`` means
nothing to the herd rules and is ignored). :func:`resolve` turns a stored mob into the
detector's :class:`~fencex.herd.Mob` against the fences that exist now: an id whose fence
was deleted, is another farm's, or is a plain zone is simply left out. A device is in at
most one mob of its farm; a device in none belongs to the farm's default mob (all its
pastures and exclusion zones: :meth:`fencex.index.FenceIndex.mob`), and so does a device
whose mob names no fence at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fencex.errors import InvalidInput
from fencex.fence import DEFAULT_TENANT, Fence, FenceId
from fencex.herd import Mob

MobId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
DeviceRef = Annotated[str, Field(min_length=1, max_length=128)]


def _unique(values: list[str]) -> list[str]:
    """The values in their order, each once."""
    return list(dict.fromkeys(values))


class MobProperties(BaseModel):
    """What a farmer says about a mob: its name, its fences and its devices."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200, examples=["Ewes"])
    fences: list[FenceId] = Field(
        default_factory=list,
        description='the mob\'s pastures and exclusion zones, by fence id, e.g. ["north-paddock", "pond"] '
        "(the farm's own fences; each fence's kind says which, plain zones are ignored); empty: the farm's "
        "pastures and exclusion zones, as for a device in no mob",
    )
    devices: list[DeviceRef] = Field(
        default_factory=list,
        description="the collars in the mob (registered to the farm); a collar is in at most one mob of its farm",
        examples=[["collar-7"]],
    )

    @field_validator("fences", "devices")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        return _unique(value)


class MobRecord(MobProperties):
    """A stored mob: its properties, owner and version. Mob ids are per farm."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: MobId
    tenant: str = Field(default=DEFAULT_TENANT, min_length=1, max_length=128)
    version: int = Field(default=1, ge=1)
    updated_at: float = Field(default=0.0, description="unix seconds of the last change")

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> MobRecord:
        """A stored mob; InvalidInput if the record cannot be read."""
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "record"
            raise InvalidInput(f"stored mob unreadable: {where}: {first['msg']}") from None


def resolve(mob: MobRecord, fences: Mapping[str, Fence], default: Mob | None = None) -> Mob | None:
    """The detector's view of ``mob``: its fence ids that are the farm's pastures and exclusion
    zones in ``fences`` (fence id -> fence: those that exist now), with the mob's id. When the mob
    names no fence its devices have the farm's default mob's fences: ``default`` (the farm's
    :meth:`~fencex.index.FenceIndex.mob`) under this mob's id (grazing is kept per mob), or None
    without one."""
    if not mob.fences:
        return None if default is None else Mob(default.pastures, default.exclusions, mob.id)
    pastures: set[str] = set()
    exclusions: set[str] = set()
    for fid in mob.fences:
        fence = fences.get(fid)
        if fence is None or fence.tenant != mob.tenant:
            continue  # deleted since (or never the farm's): ignored
        if fence.kind == "pasture":
            pastures.add(fid)
        elif fence.kind == "exclusion":
            exclusions.add(fid)
    return Mob(frozenset(pastures), frozenset(exclusions), mob.id)

"""What the worker has applied but not yet committed, and the rule that offsets only move forward.

Modelled on quix-streams' ``Checkpoint``: the loop adds each applied batch's changed device
states, events, newly seen devices and next offsets; every ``interval`` (or before partitions
are given up, or before fences are re-evaluated) it :meth:`take` s everything at once, as one
snapshot to acknowledge, save and commit together. An offset that does not move forward (at
or below one already pending or committed for its partition) is a bug in the loop and raises
:class:`OffsetRegression` rather than committing a past that was not applied.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from fencex.detector import DeviceState
from fencex.event import Event
from fencex.grazing import Grazing, add


class OffsetRegression(RuntimeError):
    """An offset stored at or below the one already pending or committed for its partition."""


@dataclass(slots=True)
class Pending:
    """One snapshot: saved and committed together, or not at all."""

    states: dict[str, DeviceState] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    new_devices: dict[int, list[str]] = field(default_factory=dict)  # partition -> devices first seen
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> next offset to read
    # the devices' tracks (:mod:`fencex.stream.tracks`): bytes to append to each stored track, and the
    # tracks to write whole first (a merge's, a trim's, or a new one: ``fencex.trackbytes.MAGIC`` alone)
    tracks: dict[str, bytearray] = field(default_factory=dict)
    anchors: dict[str, int] = field(default_factory=dict)  # device -> the fix time its first appended one follows
    rewrites: dict[str, bytes] = field(default_factory=dict)
    # devices whose fence memberships and alert lists are set from their state (after a late merge)
    resets: dict[str, tuple[DeviceState, DeviceState]] = field(default_factory=dict)  # (before, after)
    grazing: Grazing = field(default_factory=dict)  # animal-time inside to add (:mod:`fencex.grazing`)


class Checkpoint:
    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._pending = Pending()
        self._committed: dict[int, int] = {}  # partition -> the last next-offset committed
        self.holds: dict[int, int] = {}  # partition -> an offset not to commit past (:meth:`take`)
        self._started = clock()

    # ---------------------------------------------------------------- adding

    def add(self, states: Mapping[str, DeviceState], events: Iterable[Event], grazing: Grazing | None = None) -> None:
        self._pending.states.update(states)
        self._pending.events.extend(events)
        if grazing:
            add(self._pending.grazing, grazing)

    def register(self, partition: int, devices: Iterable[str]) -> None:
        """Devices seen for the first time on ``partition`` (loaded with it from then on)."""
        self._pending.new_devices.setdefault(partition, []).extend(devices)

    def store_offset(self, partition: int, next_offset: int) -> None:
        """The next offset to read on ``partition``, once everything before it is applied."""
        floor = max(self._pending.offsets.get(partition, -1), self._committed.get(partition, -1))
        if next_offset <= floor:
            raise OffsetRegression(f"partition {partition}: offset {next_offset} does not move past {floor}")
        self._pending.offsets[partition] = next_offset

    # ---------------------------------------------------------------- taking

    def due(self) -> bool:
        return self._clock() - self._started >= self.interval

    def empty(self) -> bool:
        p = self._pending
        return not (p.offsets or p.states or p.events or p.new_devices or p.tracks or p.rewrites or p.grazing)

    @property
    def pending(self) -> Pending:
        """What is pending now (to add track bytes and rewrites to: :mod:`fencex.stream.tracks`)."""
        return self._pending

    def pending_offsets(self) -> dict[int, int]:
        return dict(self._pending.offsets)

    def take(self) -> Pending:
        """Everything pending, as one snapshot; the checkpoint starts over.

        An offset past a partition's hold (:attr:`holds`: the first offset of a batch with late fixes
        not yet merged) is committed only up to the hold, and stays pending for a later snapshot: what
        is committed is never read again, and a late fix must not be lost with a crash before its merge."""
        out, self._pending = self._pending, Pending()
        self._started = self._clock()
        for part, hold in self.holds.items():
            off = out.offsets.get(part)
            if off is None or off <= hold:
                continue
            self._pending.offsets[part] = off
            if hold > self._committed.get(part, -1):
                out.offsets[part] = hold
            else:
                del out.offsets[part]
        return out

    def drop(self) -> None:
        """Forget what is pending (not committed: it is read again)."""
        self._pending = Pending()
        self._started = self._clock()

    def committed(self, offsets: Mapping[int, int]) -> None:
        """Offsets the consumer committed (after the snapshot holding them was saved)."""
        self._committed.update(offsets)

    def reassigned(self) -> None:
        """Partitions changed hands: another owner may have committed beyond what this one knows."""
        self._committed.clear()

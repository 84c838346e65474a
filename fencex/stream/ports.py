"""What the worker loop needs from the world, as small ``typing.Protocol``s.

The adapters (``fencex.kafka``, ``fencex.store.redis``, ``fencex.follower``) satisfy
them; the unit tests drive the loop with in-memory fakes of them
(``tests/unit/fakes.py``). Partitions are those of the one topic the consumer reads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from fencex.detector import DeviceState
from fencex.event import Event
from fencex.herd import HerdRules, Mob
from fencex.index import FenceIndex
from fencex.kafka.producer import Outgoing, Undelivered
from fencex.store.base import Located, SaveWrites

PartitionsCallback = Callable[[list[int]], Awaitable[None]]


class Record(Protocol):
    """One consumed record. aiokafka's ``ConsumerRecord`` has this shape and is used as is
    (not copied: a copy cost about 1 µs a record, a tenth of the whole per-fix budget)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> int: ...


class Consumer(Protocol):
    """A group member reading one topic, committing by hand."""

    def listen(self, on_assign: PartitionsCallback, on_revoke: PartitionsCallback) -> None:
        """Register the rebalance callbacks (called with sorted partition numbers)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def getmany(self, timeout_ms: int, max_records: int) -> Mapping[int, Sequence[Record]]: ...
    async def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit the next offset to read, per partition."""

    async def seek_to_committed(self) -> None: ...
    def assignment(self) -> list[int]: ...
    def lag(self) -> dict[int, int]: ...
    async def settled_lag(self) -> dict[int, int]:
        """Records behind the high watermark, only for partitions where both are known (a
        partition missing is not known to be caught up): what the silence sweep waits for."""


class Producer(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def send(self, topic: str, records: Iterable[Outgoing]) -> int: ...
    async def wait_acked(self) -> list[Undelivered]:
        """Wait for every queued record's ack; the records refused for good are returned."""


class DeviceStore(Protocol):
    """Device state, partitions' device lists and generations (``fencex.store.redis.RedisStore``).

    Its methods return awaitables (the adapter's are coroutines wrapped by its error mapping)."""

    def connect(self) -> Awaitable[None]: ...
    def close(self) -> Awaitable[None]: ...
    def ping(self) -> Awaitable[bool]: ...
    def claim_partitions(self, topic: str, partitions: Sequence[int]) -> Awaitable[dict[int, int]]:
        """Raise each partition's generation by one; the new generations (the owner's fence token)."""

    def partition_devices(self, topic: str, partitions: Iterable[int]) -> Awaitable[dict[str, int]]: ...
    def partition_lists(self, topic: str, partitions: Iterable[int]) -> Awaitable[dict[int, list[str]]]:
        """Partition -> the devices seen on it (one can be on two after partitions were added)."""

    def load_states(
        self, device_ids: list[str], partitions: Mapping[str, int] | None = None
    ) -> Awaitable[dict[str, DeviceState]]:
        """The saved states of these devices; ``partitions``: each one's partition, where known."""

    def locate_states(self, device_ids: list[str], partitions: Mapping[str, int] | None = None) -> Awaitable[Located]:
        """The newest saved copy of each device's state and the partition it is under (partitions added
        can leave a device's state under two: docs/design/partitions.md)."""

    def forget_moved(self, topic: str, partition: int, newer: Mapping[str, int]) -> Awaitable[int]:
        """Delete the stale copies under ``partition`` of devices that moved (device -> its newer copy's last_ts)."""

    def pack_save(
        self,
        states: Mapping[str, DeviceState],
        events: Iterable[Event],
        new_devices: Mapping[tuple[str, int], list[str]] | None = None,
        generations: Mapping[tuple[str, int], int] | None = None,
        writes: SaveWrites | None = None,
        partitions: Mapping[str, int] | None = None,
    ) -> bytes | None:
        """Serialise a save now (a snapshot) for :meth:`save_packed`; ``partitions``: device -> its
        partition (its state and track are saved under it)."""

    def save_packed(self, blob: bytes | None) -> Awaitable[list[tuple[str, int]]]:
        """Save atomically; raise Fenced (nothing written) if a generation is no longer the saver's.
        Returns the devices whose tracks are now at least the save's ``long_bytes`` long, and their lengths."""

    def load_tracks(
        self, device_ids: list[str], partitions: Mapping[str, int] | None = None
    ) -> Awaitable[dict[str, bytes]]:
        """The stored tracks (:mod:`fencex.track` bytes) of these devices, those that have one."""


class Follower(Protocol):
    """Keeps a fence index and the device registrations current (``fencex.follower.FenceFollower``)."""

    index: FenceIndex
    tenants: dict[str, str]
    applied: int
    reloads: int  # reloads (of the groups whose feed was trimmed, or of all) after a gap in a change feed
    on_index: Callable[[FenceIndex], None] | None  # a new index (fences changed, or reloaded in full)
    on_rules: Callable[[set[str]], None] | None  # these farms' herd settings changed (and no fence)
    on_mobs: Callable[[set[str]], None] | None  # these farms' mobs changed (and no fence)

    @property
    def quarantined(self) -> Mapping[str, Any]: ...  # fence id -> why it is left out of the index

    async def load(self) -> FenceIndex: ...
    async def follow(self) -> None: ...

    def rules_of(self, tenant: str) -> HerdRules:
        """The farm's herd rules (its stored settings, else the defaults)."""

    def mob_of(self, device_id: str) -> Mob | None:
        """The device's mob resolved against the current index (None: the farm's default mob)."""

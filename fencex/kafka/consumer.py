"""The batch consumer: aiokafka ``getmany`` with manual commits, for one topic.

Faust's per-event stream path reads about 7,000 records/s on this machine;
``getmany`` reads over 300,000, so the processor's hot path takes whole
batches. Offsets are committed only after a batch's events are published and
its state is saved (at least once). Partitions are plain numbers of the one topic;
the rebalance callbacks registered with :meth:`BatchConsumer.listen` are awaited
by aiokafka's coordinator (the loop serialises them against its own steps).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaConnectionError, KafkaError

from fencex.errors import BrokerUnavailable

log = logging.getLogger(__name__)
PartitionsCallback = Callable[[list[int]], Awaitable[None]]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: BatchConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        parts = sorted(tp.partition for tp in revoked)
        for p in parts:
            self.owner.positions.pop(p, None)
        log.info("partitions revoked: %s", parts)
        if self.owner.on_revoke is not None:
            await self.owner.on_revoke(parts)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        parts = sorted(tp.partition for tp in assigned)
        log.info("partitions assigned: %s", parts)
        if self.owner.on_assign is not None:
            await self.owner.on_assign(parts)


class BatchConsumer:
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group_id: str,
        *,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 1_000,
        max_poll_interval_ms: int = 60_000,
        on_assign: PartitionsCallback | None = None,
        on_revoke: PartitionsCallback | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.group_id = group_id
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self._kwargs = dict(
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            max_poll_interval_ms=max_poll_interval_ms,
        )
        self._consumer: AIOKafkaConsumer | None = None
        self.positions: dict[int, int] = {}

    def listen(self, on_assign: PartitionsCallback, on_revoke: PartitionsCallback) -> None:
        """Call these when partitions are assigned and before they are revoked."""
        self.on_assign, self.on_revoke = on_assign, on_revoke

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 << 20,
            fetch_max_bytes=64 << 20,
            fetch_max_wait_ms=50,
            **self._kwargs,
        )
        try:
            await self._consumer.start()
        except KafkaError as exc:
            await self._consumer.stop()
            raise BrokerUnavailable(f"cannot reach the broker at {self.bootstrap}: {exc}") from exc
        self._consumer.subscribe([self.topic], listener=_Listener(self))

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[int, Sequence[ConsumerRecord[bytes, bytes]]]:
        """Records per partition (aiokafka's records: they have the shape of ``fencex.stream.ports.Record``)."""
        assert self._consumer is not None
        try:
            got = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaConnectionError as exc:
            raise BrokerUnavailable(str(exc)) from exc
        out: dict[int, Sequence[ConsumerRecord[bytes, bytes]]] = {}
        for tp, records in got.items():
            if records:
                self.positions[tp.partition] = records[-1].offset + 1
                out[tp.partition] = records
        return out

    async def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit ``offsets`` (partition -> the next offset to read)."""
        assert self._consumer is not None
        if not offsets:
            return
        try:
            await self._consumer.commit({TopicPartition(self.topic, p): o for p, o in offsets.items()})
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took the partitions away: the new owner reads these records
            # again, finds their fixes stale (state was saved first), and goes on.
            log.warning("commit refused after a rebalance: %s", exc)
        except KafkaError as exc:
            raise BrokerUnavailable(f"commit failed: {exc}") from exc

    async def seek_to_committed(self) -> None:
        """Go back to the last committed offsets (after a batch failed half way)."""
        if self._consumer is not None and self._consumer.assignment():
            try:
                committed = await self._consumer.seek_to_committed()
            except KafkaError as exc:
                raise BrokerUnavailable(f"cannot read the committed offsets: {exc}") from exc
            for tp, offset in committed.items():
                if not offset:  # nothing committed yet (or 0): aiokafka leaves these where they are
                    self._consumer.seek(tp, 0)  # the start (out of range: the reset policy, earliest)
            self.positions.clear()

    def assignment(self) -> list[int]:
        return sorted(tp.partition for tp in self._consumer.assignment()) if self._consumer else []

    async def settled_lag(self) -> dict[int, int]:
        """:meth:`lag`, for the partitions whose position and high watermark are both known.

        The position is aiokafka's (the next record ``getmany`` hands out; after an assignment,
        the committed offset: waited for at most half a second); a partition whose high
        watermark no fetch response has brought yet is left out: it is not known to be caught up.
        """
        if self._consumer is None:
            return {}
        out: dict[int, int] = {}
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is None:
                continue
            try:
                pos = await asyncio.wait_for(self._consumer.position(tp), 0.5)
            except (TimeoutError, KafkaError) as exc:
                log.debug("position of %s not known yet: %s", tp, exc)
                continue
            out[tp.partition] = max(high - pos, 0)
        return out

    def lag(self) -> dict[int, int]:
        """Records behind the high watermark, per assigned partition.

        The high watermark comes from fetch responses, not ListOffsets (which the
        local broker answers wrongly for batches of several records); the position
        is the offset after the last record this consumer handed out.
        """
        if self._consumer is None:
            return {}
        out: dict[int, int] = {}
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is not None:
                out[tp.partition] = max(high - self.positions.get(tp.partition, high), 0)
        return out

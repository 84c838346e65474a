"""The producer of fence events and dead letters (confluent-kafka, acks=all).

confluent-kafka queues a record in C for about a microsecond, against tens for
aiokafka's ``send``. The processor queues each batch's events at once and waits
for the broker's acks only before it commits offsets. Not idempotent on purpose: at-least-once delivery already allows
duplicates, and they carry the same ``event_id``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import Producer as KafkaProducer

from fencex.errors import BrokerUnavailable


class Producer:
    def __init__(self, bootstrap: str, *, linger_ms: int = 2, compression: str = "lz4") -> None:
        self.bootstrap = bootstrap
        self._config = {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": linger_ms,
            "compression.type": compression,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "batch.num.messages": 10_000,
            "message.timeout.ms": 30_000,
            "enable.idempotence": False,
        }
        self._producer: KafkaProducer | None = None
        self._errors: list[str] = []

    async def start(self) -> None:
        self._producer = KafkaProducer(self._config)
        try:
            await asyncio.to_thread(self._producer.list_topics, timeout=5)
        except KafkaException as exc:
            raise BrokerUnavailable(f"cannot reach the broker at {self.bootstrap}: {exc}") from exc

    async def stop(self) -> None:
        if self._producer is not None:
            await asyncio.to_thread(self._producer.flush, 10)
            self._producer = None

    def _delivered(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self._errors.append(str(err))

    async def send(
        self, topic: str, records: Iterable[tuple[bytes | None, bytes, list[tuple[str, bytes]] | None]]
    ) -> int:
        """Queue (key, value, headers) records; librdkafka sends them in the background."""
        p = self._producer
        assert p is not None
        n = 0
        for key, value, headers in records:
            while True:
                try:
                    p.produce(topic, value, key, headers=headers, on_delivery=self._delivered)
                    break
                except BufferError:  # the local queue is full: let it drain
                    await asyncio.to_thread(p.poll, 0.05)
            n += 1
        p.poll(0)
        return n

    async def wait_acked(self, timeout: float = 30.0) -> None:
        """Wait until the broker has acknowledged everything queued; raise if any record failed."""
        p = self._producer
        assert p is not None
        left = await asyncio.to_thread(p.flush, timeout) if len(p) else 0
        if left or self._errors:
            errors, self._errors = self._errors, []
            raise BrokerUnavailable(f"{left} records unacknowledged; delivery errors: {errors[:3]}")

    async def send_all(
        self, topic: str, records: Iterable[tuple[bytes | None, bytes, list[tuple[str, bytes]] | None]]
    ) -> int:
        """Send records and wait until the broker has acknowledged all of them."""
        n = await self.send(topic, records)
        await self.wait_acked()
        return n

"""The producer of fence events and dead letters (aiokafka, acks=all).

Not idempotent: aiokafka's InitProducerId fails against the local broker, and at-least-once
delivery already allows duplicates, which carry the same event_id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from fencex.errors import BrokerUnavailable


class Producer:
    def __init__(self, bootstrap: str, *, linger_ms: int = 5, compression: str | None = "lz4") -> None:
        self.bootstrap = bootstrap
        self._kwargs = dict(linger_ms=linger_ms, compression_type=compression)
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                          max_batch_size=1 << 20, **self._kwargs)
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            raise BrokerUnavailable(f"cannot reach the broker at {self.bootstrap}: {exc}") from exc

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def send_all(self, topic: str, records: Iterable[tuple[bytes | None, bytes, list[tuple[str, bytes]] | None]]) -> int:
        """Send (key, value, headers) records and wait until the broker has acknowledged all of them."""
        assert self._producer is not None
        futures = []
        try:
            for key, value, headers in records:
                futures.append(await self._producer.send(topic, value=value, key=key, headers=headers))
            if futures:
                await asyncio.gather(*futures)
        except KafkaError as exc:
            raise BrokerUnavailable(f"publishing to {topic} failed: {exc}") from exc
        return len(futures)

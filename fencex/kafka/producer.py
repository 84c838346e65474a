"""The producer of fence events, dead letters, reroutes and HTTP-ingested fixes (confluent-kafka, acks=all).

confluent-kafka queues a record in C for about a microsecond, against tens for
aiokafka's ``send``. The processor queues each batch's events at once and waits
for the broker's acks only before it commits offsets.

Every fencex producer (this class, and the simulator's and tests' raw clients through
:func:`client_config`) uses the murmur2 partitioner, so a device's key lands on the
partition a Java client or aiokafka would pick (librdkafka's default is CRC32).
Per-key order is kept with idempotence (the default; librdkafka's InitProducerId works
against the local broker), or, where a broker does not support it, one request in
flight per connection.

A record the broker refuses for good (too large, invalid, not authorised) is not a
reason to retry forever: :meth:`Producer.wait_acked` returns it as an :class:`Undelivered`
for the caller to count and dead-letter; transient failures raise BrokerUnavailable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka import Producer as KafkaProducer

from fencex.errors import BrokerUnavailable

Headers = list[tuple[str, bytes]]
_Headers = list[tuple[str, str | bytes | None]]  # what confluent-kafka hands back
Outgoing = tuple[bytes | None, bytes, Headers | None]  # (key, value, headers)

# Errors librdkafka flags as not retriable that a wait does cure (a broker down for a while).
_TRANSIENT = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._DESTROY,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
    }
)
# The metric label of a permanent failure: a closed set.
UNDELIVERED_REASONS = ("too_large", "invalid", "not_authorized", "unknown_topic", "other")
_REASON = {
    KafkaError.MSG_SIZE_TOO_LARGE: "too_large",
    KafkaError.RECORD_LIST_TOO_LARGE: "too_large",
    KafkaError.INVALID_RECORD: "invalid",
    KafkaError.INVALID_MSG_SIZE: "invalid",
    KafkaError.INVALID_MSG: "invalid",
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "not_authorized",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "not_authorized",
    KafkaError.UNKNOWN_TOPIC_OR_PART: "unknown_topic",
    KafkaError._UNKNOWN_TOPIC: "unknown_topic",
    KafkaError._UNKNOWN_PARTITION: "unknown_topic",
}


def is_permanent(err: KafkaError) -> bool:
    """A failure no retry cures (the record itself, or the topic, is the problem)."""
    return not err.retriable() and err.code() not in _TRANSIENT


def client_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    """The settings every fencex producer shares (raw confluent-kafka clients too)."""
    return {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", **extra}


@dataclass(frozen=True, slots=True)
class Undelivered:
    """A record the broker refused for good."""

    topic: str
    key: bytes | None
    headers: Headers
    reason: str  # one of UNDELIVERED_REASONS
    error: str


class Producer:
    def __init__(
        self,
        bootstrap: str,
        *,
        idempotence: bool = True,
        linger_ms: int = 2,
        compression: str = "lz4",
        message_timeout_ms: int = 30_000,
    ) -> None:
        self.bootstrap = bootstrap
        self._config = client_config(
            bootstrap,
            **{
                "acks": "all",
                "linger.ms": linger_ms,
                "compression.type": compression,
                "queue.buffering.max.messages": 1_000_000,
                "queue.buffering.max.kbytes": 1_048_576,
                "batch.num.messages": 10_000,
                "message.timeout.ms": message_timeout_ms,
                "enable.idempotence": idempotence,
            },
        )
        if not idempotence:  # per-key order without idempotence: one request in flight
            self._config["max.in.flight.requests.per.connection"] = 1
        self._producer: KafkaProducer | None = None
        self._errors: list[str] = []
        self._undelivered: list[Undelivered] = []

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

    def _failed(self, err: KafkaError, topic: str, key: bytes | None, headers: Iterable[tuple[str, object]]) -> None:
        if is_permanent(err):
            reason = _REASON.get(err.code(), "other")
            kept = [(k, v) for k, v in headers if isinstance(v, bytes)]
            self._undelivered.append(Undelivered(topic, key, kept, reason, str(err)))
        else:
            self._errors.append(str(err))

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            headers = msg.headers()
            self._failed(
                err, msg.topic() or "", msg.key(), headers.items() if isinstance(headers, dict) else headers or ()
            )

    async def send(self, topic: str, records: Iterable[Outgoing]) -> int:
        """Queue (key, value, headers) records; librdkafka sends them in the background.

        The one place that waits while the local queue is full (BufferError: poll, then again).
        """
        p = self._producer
        assert p is not None, "call start() first"
        n = 0
        for key, value, headers in records:
            while True:
                try:
                    p.produce(topic, value, key, headers=headers, on_delivery=self._delivered)  # type: ignore[arg-type]
                    break
                except BufferError:  # the local queue is full: let it drain
                    await asyncio.to_thread(p.poll, 0.05)
                except KafkaException as exc:  # refused before sending (e.g. larger than message.max.bytes)
                    self._failed(exc.args[0], topic, key, headers or ())
                    break
            n += 1
        p.poll(0)
        return n

    async def wait_acked(self, timeout: float = 30.0) -> list[Undelivered]:
        """Wait until the broker has acknowledged everything queued.

        Returns the records refused for good (to count and dead-letter); raises BrokerUnavailable
        if any record failed for a reason a wait may cure, or is still unacknowledged.
        """
        p = self._producer
        assert p is not None, "call start() first"
        left = await asyncio.to_thread(p.flush, timeout) if len(p) else 0
        undelivered, self._undelivered = self._undelivered, []
        if left or self._errors:
            errors, self._errors = self._errors, []
            raise BrokerUnavailable(f"{left} records unacknowledged; delivery errors: {errors[:3]}")
        return undelivered

    async def send_all(self, topic: str, records: Iterable[Outgoing], timeout: float = 30.0) -> int:
        """Send records and wait up to ``timeout`` seconds until the broker has acknowledged all of them.

        Raises BrokerUnavailable if any was not delivered (for good or not) or is still waiting
        for its acknowledgement: the caller answers 503. Records still queued may yet be
        delivered; a client that sends them again causes no harm (a repeated fix is stale).
        """
        n = await self.send(topic, records)
        undelivered = await self.wait_acked(timeout)
        if undelivered:
            raise BrokerUnavailable(f"{len(undelivered)} records refused: {undelivered[0].error}")
        return n

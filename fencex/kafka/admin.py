"""Topics: make sure they exist with their partitions; check that a broker answers."""

from __future__ import annotations

import asyncio
import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from fencex.errors import BrokerUnavailable
from fencex.retrying import retrying

log = logging.getLogger(__name__)


def _admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 5000})


def check_broker(bootstrap: str, timeout: float = 5.0) -> dict[str, int]:
    """Topic name -> partition count; BrokerUnavailable if the broker does not answer."""
    try:
        meta = _admin(bootstrap).list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BrokerUnavailable(f"the broker at {bootstrap} does not answer: {exc}") from exc
    return {name: len(t.partitions) for name, t in meta.topics.items()}


async def wait_for_topics(bootstrap: str, topics: dict[str, int], give_up_after: float | None = None) -> None:
    """Create the topics, waiting (and saying so) while the broker does not answer."""
    async for attempt in retrying(f"waiting for the broker at {bootstrap}", give_up_after=give_up_after, logger=log):
        with attempt:
            await asyncio.to_thread(ensure_topics, bootstrap, topics)


def ensure_topics(bootstrap: str, topics: dict[str, int], timeout: float = 10.0) -> dict[str, int]:
    """Create the missing topics with their partition counts; return what exists."""
    existing = check_broker(bootstrap, timeout)
    missing = [
        NewTopic(name, num_partitions=n, replication_factor=1) for name, n in topics.items() if name not in existing
    ]
    if missing:
        admin = _admin(bootstrap)  # keep a reference until the futures resolve
        futures = admin.create_topics(missing, operation_timeout=timeout, request_timeout=timeout)
        for name, fut in futures.items():
            try:
                fut.result(timeout=timeout)
                log.info("created topic %s", name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise BrokerUnavailable(f"cannot create topic {name}: {exc}") from exc
    existing = check_broker(bootstrap, timeout)
    for name, n in topics.items():
        if existing.get(name, 0) < n:
            log.warning("topic %s has %s partitions, fewer than the %s configured", name, existing.get(name), n)
    return existing


def delete_topics(bootstrap: str, names: list[str], timeout: float = 10.0) -> None:
    admin = _admin(bootstrap)
    for fut in admin.delete_topics(names, operation_timeout=timeout).values():
        try:
            fut.result(timeout=timeout)
        except KafkaException:
            pass

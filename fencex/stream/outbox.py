"""Everything the worker sends, and its counting: events, reroutes, dead letters, stubs.

Records are queued to the producer (sent in the background); the loop's flush waits for
their acks before it saves and commits. Records the broker refuses for good are counted
(``fencex_undelivered_records_total``, closed labels) and stand in the dead-letter topic
as small stubs that point at their source, so a refusal never makes the loop retry forever.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence

from fencex.event import Event
from fencex.fix import Fix, fix_json
from fencex.kafka.producer import Outgoing, Undelivered
from fencex.metrics import PushMetrics
from fencex.stream import batch
from fencex.stream.config import Topics
from fencex.stream.ports import Producer, Record

log = logging.getLogger(__name__)


class Outbox:
    def __init__(
        self, producer: Producer, topics: Topics, metrics: PushMetrics, clock: Callable[[], float], dead_max_bytes: int
    ) -> None:
        self.producer = producer
        self.topics = topics
        self.metrics = metrics
        self.clock = clock
        self.dead_max_bytes = dead_max_bytes
        self.fence_events: Counter[tuple[str, str]] = Counter()  # for the herd metrics
        self._roles = {topics.events: "events", topics.dlq: "dlq", topics.locations: "locations"}

    async def events(self, events: list[Event]) -> None:
        """Queue events, all serialised first (a failure sends none)."""
        if not events:
            return
        now_ms = self.clock() * 1000.0
        payloads = [(e.device_id.encode(), e.to_json(now_ms), None) for e in events]
        await self.producer.send(self.topics.events, payloads)
        counter, observe, now = self.metrics.events, self.metrics.latency.observe, now_ms / 1000.0
        per_fence = self.fence_events
        per_farm: Counter[tuple[str, str]] = Counter()
        for e in events:
            counter.labels(e.type).inc()
            observe(max(now - e.ts_ms / 1000.0, 0.0))
            per_fence[(e.tenant, e.fence_id)] += 1
            per_farm[(e.tenant, e.type)] += 1
        self.metrics.herd.count(per_farm)

    async def reroutes(self, fixes: list[Fix]) -> None:
        """Fixes packed under another key go back to the topic under their device's key."""
        if fixes:
            await self.producer.send(self.topics.locations, [(f.device_id.encode(), fix_json(f), None) for f in fixes])
            self.metrics.rerouted.inc(len(fixes))

    async def dead_letters(self, letters: list[Outgoing], reasons: Sequence[str]) -> None:
        if letters:
            await self.producer.send(self.topics.dlq, letters)
            for reason in reasons:
                self.metrics.dlq.labels(reason).inc()

    async def poisoned(self, record: Record, exc: Exception) -> None:
        """The dead letter of a record that made a step after parsing fail."""
        log.warning("record %s fails after parsing (%r): dead-lettered", batch.source_of(record).decode(), exc)
        letter = batch.poisoned(record, f"{type(exc).__name__}: {exc}", self.dead_max_bytes)
        await self.dead_letters([letter], ["processing_error"])

    async def undelivered(self, undelivered: list[Undelivered]) -> None:
        """Records refused for good: counted, and a stub pointing at the source goes to the DLQ."""
        stubs = []
        for u in undelivered:
            self.metrics.undelivered.labels(self._roles.get(u.topic, "events"), u.reason).inc()
            if u.topic != self.topics.dlq or dict(u.headers).get("reason") != b"undelivered":
                stubs.append(batch.undelivered_stub(u.topic, u.key, u.headers, u.reason, u.error))
        log.error(
            "%d records refused by the broker for good (first: %s); dead-lettered as stubs",
            len(undelivered),
            undelivered[0],
        )
        await self.dead_letters(stubs, ["undelivered"] * len(stubs))
        for u in await self.producer.wait_acked():  # a stub refused too: counted, not retried
            self.metrics.undelivered.labels("dlq", u.reason).inc()

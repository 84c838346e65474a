"""The push path's worker loop: Kafka batches in, fence events out.

One loop per worker process, in this order for every batch, so that a worker
killed at any moment loses no event (at least once):

1. read a batch of records (``getmany``) from the assigned partitions;
2. parse, run the pipeline (index lookup + detector) against cached device state;
3. queue its events and dead letters to the producer (sent in the background);
4. every ``flush_interval`` (and before giving partitions up): snapshot the
   changed device states, positions and memberships, then, in the background
   while the next batches are processed, wait for the broker's acks of
   everything queued, save the snapshot to Redis (one atomic script), and
5. commit the offsets the snapshot covers. One flush runs at a time.

A crash before 5 replays what was not committed: fixes whose state was saved are
stale and skipped, the others give the same events again, with the same
``event_id``. Saving once per interval rather than once per batch writes each
busy device once, however many of its fixes the interval held.
Fence changes arrive through the Redis change feed; a new index is built off the
loop and swapped in between batches, and the cached devices are re-evaluated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

from aiokafka import TopicPartition

from fencex.detector import DeviceState
from fencex.errors import BrokerUnavailable, StoreUnavailable, Unavailable
from fencex.event import Event
from fencex.fence import DEFAULT_TENANT
from fencex.fix import Fix, Rejected, fix_json, parse_record
from fencex.follower import FenceFollower
from fencex.index import FenceIndex
from fencex.kafka.consumer import BatchConsumer
from fencex.kafka.producer import Producer
from fencex.metrics import HERD_SERIES, PushMetrics
from fencex.pipeline import Processed, process, reevaluate_all
from fencex.store.redis import RedisStore

log = logging.getLogger("fencex.processor")


@dataclass(frozen=True)
class Topics:
    locations: str = "locations"
    events: str = "fence-events"
    dlq: str = "locations.dlq"


class Processor:
    def __init__(
        self,
        store: RedisStore,
        consumer: BatchConsumer,
        producer: Producer,
        metrics: PushMetrics,
        topics: Topics = Topics(),
        max_records: int = 20_000,
        default_tenant: str = DEFAULT_TENANT,
        flush_interval: float = 0.2,
        chunk_fixes: int = 20_000,
    ) -> None:
        self.store = store
        self.consumer = consumer
        self.producer = producer
        self.metrics = metrics
        self.topics = topics
        self.max_records = max_records
        self.default_tenant = default_tenant
        self.index = FenceIndex([])
        self.follower = FenceFollower(store, on_index=self._new_index, on_error=lambda e: metrics.store_errors.inc())
        self.states: dict[str, DeviceState] = {}
        self.device_partition: dict[str, int] = {}
        self.running = False
        self.fence_events: Counter[tuple[str, str]] = Counter()
        self.flush_interval = flush_interval
        self.chunk_fixes = chunk_fixes
        self._pending_states: dict[str, DeviceState] = {}
        self._pending_events: list[Event] = []
        self._pending_new: dict[tuple[str, int], list[str]] = defaultdict(list)
        self._pending_offsets: dict[TopicPartition, int] = {}
        self._flushed_at = time.monotonic()
        self._flushing: asyncio.Task | None = None
        self._next_index: FenceIndex | None = None
        consumer.on_assign = self._on_assign
        consumer.on_revoke = self._on_revoke

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Connect to Redis, load fences and device registrations, join the group."""
        await self.store.connect()
        self.index = await self.follower.load()
        self.metrics.index_rebuild.observe(self.index.build_seconds)
        log.info("loaded %d fences and %d device registrations", len(self.index), len(self.follower.tenants))
        await self.producer.start()
        await self.consumer.start()

    async def stop(self) -> None:
        self.running = False
        try:
            async with self.consumer.lock:
                await self.flush()
        except Exception as exc:  # noqa: BLE001 - what was not committed is read again
            log.warning("final flush failed: %s", exc)
        await self.consumer.stop()
        await self.producer.stop()
        await self.store.close()

    def snapshot(self) -> dict:
        """What the metrics collector reads at scrape time (not kept up to date on the hot path)."""
        occupancy: Counter[tuple[str, str]] = Counter()
        for state in list(self.states.values()):
            for fid in state.members:
                occupancy[(state.tenant, fid)] += 1
        return {
            "partitions": self.consumer.assignment(),
            "lag": self.consumer.lag(),
            "fences": len(self.index),
            "index_version": self.follower.applied,
            "devices": len(self.states),
            "running": int(self.running),
            "occupancy": occupancy.most_common(HERD_SERIES),
            "fence_events": self.fence_events.most_common(HERD_SERIES),
        }

    # ---------------------------------------------------------- fence changes

    def _new_index(self, index: FenceIndex) -> None:
        self.metrics.index_rebuild.observe(index.build_seconds)
        self._next_index = index  # swapped in between batches by the loop

    async def watch_changes(self) -> None:
        """Follow the change feed; new indexes are swapped in by the loop."""
        await self.follower.follow()

    # ---------------------------------------------------------- rebalancing

    async def _on_assign(self, partitions: list[int]) -> None:
        self.metrics.rebalances.inc()
        while True:
            try:
                owned = await self.store.partition_devices(self.topics.locations, partitions)
                states = await self.store.load_states(list(owned))
                break
            except StoreUnavailable as exc:
                self.metrics.store_errors.inc()
                log.warning("loading device state: %s; retrying in 1 s", exc)
                await asyncio.sleep(1.0)
        mine = set(partitions)
        for d in [d for d, p in self.device_partition.items() if p not in mine]:
            self.states.pop(d, None)
            self.device_partition.pop(d, None)
        self.states.update(states)
        self.device_partition.update(owned)
        # A fence may have changed while no worker held these devices: catch up now.
        await self._publish_reevaluation(reevaluate_all(self.index, self.states, list(states)))
        log.info("assigned partitions %s: %d devices loaded", partitions, len(states))

    async def _on_revoke(self, partitions: list[int]) -> None:
        try:
            await self.flush()  # the lock is held by the caller
        except Exception as exc:  # noqa: BLE001 - not committed: the new owner reads it again
            log.warning("flush before revoke failed: %s", exc)
            self._drop_pending()
        gone = set(partitions)
        for d in [d for d, p in self.device_partition.items() if p in gone]:
            self.states.pop(d, None)
            self.device_partition.pop(d, None)

    async def _publish_reevaluation(self, out: Processed) -> None:
        if out.events:
            await self._publish(out.events, [])
        self._pending_states.update(out.dirty)
        self._pending_events.extend(out.events)

    # ------------------------------------------------------------ flushing

    async def flush(self, wait: bool = True) -> None:
        """Snapshot pending state and offsets, then ack, save and commit them.

        The snapshot is serialised here, synchronously, so it holds exactly the
        fixes whose offsets it commits. With ``wait=False`` the ack-save-commit
        runs in the background and the next call waits for it first.
        """
        await self._await_flush()
        blob = self.store.pack_save(self._pending_states, self._pending_events, self._pending_new)
        offsets = self._pending_offsets
        self._drop_pending()
        if blob is None and not offsets:
            return
        self._flushing = asyncio.create_task(self._ack_save_commit(blob, offsets))
        if wait:
            await self._await_flush()

    async def _ack_save_commit(self, blob: bytes | None, offsets: dict[TopicPartition, int]) -> None:
        await self.producer.wait_acked()
        await self.store.save_packed(blob)
        await self.consumer.commit(offsets)

    async def _await_flush(self) -> None:
        task, self._flushing = self._flushing, None
        if task is not None:
            await task  # re-raises its error: the loop then reloads from the store

    def _drop_pending(self) -> None:
        self._pending_states = {}
        self._pending_events = []
        self._pending_new = defaultdict(list)
        self._pending_offsets = {}
        self._flushed_at = time.monotonic()

    # ------------------------------------------------------------ the loop

    async def run(self) -> None:
        self.running = True
        backoff = 0.5
        while self.running:
            try:
                batches = await self.consumer.getmany(timeout_ms=100, max_records=self.max_records)
                async with self.consumer.lock:
                    if self._next_index is not None:
                        self.index, self._next_index = self._next_index, None
                        await self._publish_reevaluation(reevaluate_all(self.index, self.states))
                    assigned = set(self.consumer.assignment())
                    batches = {tp: r for tp, r in batches.items() if r and tp.partition in assigned}
                    if batches:
                        await self.handle(batches)
                    if time.monotonic() - self._flushed_at >= self.flush_interval:
                        await self.flush(wait=False)
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, StoreUnavailable):
                    self.metrics.store_errors.inc()
                elif isinstance(exc, BrokerUnavailable):
                    self.metrics.broker_errors.inc()
                else:
                    log.exception("unexpected error in the processing loop")
                log.warning("%s; dropping cached state and retrying in %.1f s", exc, backoff)
                # The batch was not committed: it is read again. State is reloaded from Redis,
                # which holds exactly what was saved, so no fix is wrongly taken as stale.
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                await self._reload_after_error()

    async def _reload_after_error(self) -> None:
        try:
            await self._await_flush()
        except Exception:  # noqa: BLE001 - its offsets were not committed: they are read again
            pass
        self._drop_pending()
        self.states.clear()
        self.device_partition.clear()
        try:
            await self.consumer.seek_to_committed()
            await self._on_assign(self.consumer.assignment())
            self.metrics.reconnects.labels("redis").inc()
        except (Unavailable, Exception) as exc:  # noqa: BLE001 - the loop retries
            log.warning("reload failed: %s", exc)

    async def handle(self, batches: dict[TopicPartition, list]) -> None:
        """Parse and apply a batch from ``getmany``, in chunks of at most ``chunk_fixes``
        fixes with a yield between them, so heartbeats and /metrics stay served."""
        started = time.perf_counter()
        fixes: list[Fix] = []
        fix_partition: list[int] = []
        rejected: list[Rejected] = []
        dead: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []
        records = 0
        reroute: list[Fix] = []
        received_ms = int(time.time() * 1000)
        for tp, recs in batches.items():
            p = tp.partition
            for r in recs:
                n, nrej = len(fixes), len(rejected)
                parse_record(r.value if r.value is not None else b"", fixes, rejected, received_ms)
                if len(fixes) > n:
                    key = r.key.decode("utf-8", "replace") if r.key is not None else None
                    if key is None or any(f.device_id != key for f in fixes[n:]):
                        # A device's fixes must all arrive on its own key's partition, or two workers
                        # could hold its state at once. Fixes packed under another key (a gateway's,
                        # or none) go back to the topic under their device's key, then count there.
                        mine = [f for f in fixes[n:] if f.device_id == key]
                        reroute.extend(f for f in fixes[n:] if f.device_id != key)
                        del fixes[n:]
                        fixes.extend(mine)
                fix_partition.extend([p] * (len(fixes) - n))
                for rj in rejected[nrej:]:
                    dead.append(
                        (
                            r.key,
                            rj.raw,
                            [
                                ("reason", rj.reason.encode()),
                                ("detail", rj.detail.encode()),
                                ("source", f"{tp.topic}/{p}/{r.offset}".encode()),
                            ],
                        )
                    )
                if len(fixes) >= self.chunk_fixes:
                    await self._apply(fixes, fix_partition, rejected, dead)
                    fixes, fix_partition, rejected, dead = [], [], [], []
                    await asyncio.sleep(0)
            records += len(recs)
        await self._apply(fixes, fix_partition, rejected, dead)
        if reroute:
            await self.producer.send(
                self.topics.locations, ((f.device_id.encode(), fix_json(f), None) for f in reroute)
            )
            self.metrics.rerouted.inc(len(reroute))
        # only now is the whole batch applied: its offsets join the next commit
        for tp, recs in batches.items():
            self._pending_offsets[tp] = recs[-1].offset + 1
        self.metrics.records.inc(records)
        elapsed = time.perf_counter() - started
        self.metrics.batch_seconds.observe(elapsed)
        if log.isEnabledFor(logging.DEBUG):
            oldest = min(r[0].timestamp for r in batches.values())
            log.debug(
                "batch: %d records, oldest %.0f ms old, handled in %.1f ms",
                records,
                time.time() * 1000 - oldest,
                elapsed * 1000,
            )

    async def _apply(self, fixes: list[Fix], fix_partition: list[int], rejected: list[Rejected], dead: list) -> None:
        # Devices never seen by this worker: the store may know them (e.g. after a restart).
        missing = list({f.device_id for f in fixes if f.device_id not in self.states})
        if missing:
            self.states.update(await self.store.load_states(missing))
            unknown = set(missing) - self.states.keys()
            for f, p in zip(fixes, fix_partition):
                if f.device_id in unknown:
                    unknown.discard(f.device_id)
                    self._pending_new[(self.topics.locations, p)].append(f.device_id)
        for f, p in zip(fixes, fix_partition):
            self.device_partition[f.device_id] = p
        tenants = self.follower.tenants
        default = self.default_tenant
        out = process(fixes, self.index, self.states, lambda d: tenants.get(d, default))
        await self._publish(out.events, dead)
        self._pending_states.update(out.dirty)
        self._pending_events.extend(out.events)
        m = self.metrics
        m.fixes_consumed.inc(len(fixes))
        m.fixes_processed.inc(out.fixes)
        if out.stale:
            m.fixes_dropped.labels("out_of_order").inc(out.stale)
        for rj in rejected:
            m.fixes_dropped.labels(rj.reason).inc()
            m.dlq.labels(rj.reason).inc()
        m.intersections.inc(out.inside)
        m.point_tests.inc(out.candidates)
        m.batch.observe(len(fixes))

    async def _publish(self, events: list[Event], dead: list) -> None:
        """Queue events and dead letters; :meth:`flush` waits for their acks before committing."""
        now_ms = time.time() * 1000.0
        if events:
            await self.producer.send(
                self.topics.events, ((e.device_id.encode(), e.to_json(now_ms), None) for e in events)
            )
            counter, observe, now = self.metrics.events, self.metrics.latency.observe, now_ms / 1000.0
            per_fence = self.fence_events
            for e in events:
                counter.labels(e.type).inc()
                observe(max(now - e.ts_ms / 1000.0, 0.0))
                per_fence[(e.tenant, e.fence_id)] += 1
        if dead:
            await self.producer.send(self.topics.dlq, dead)

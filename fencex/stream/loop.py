"""The push path's worker loop: Kafka batches in, fence events out.

One loop per worker process, in this order for every batch, so that a worker
killed at any moment loses no event (at least once):

1. read a batch of records (``getmany``) from the assigned partitions;
2. split it into fixes, reroutes and dead letters (:func:`fencex.stream.batch.split`, pure),
   run the pipeline against cached device state with the farms' herd rules (``rules_of``,
   ``mob_of``: the follower's; setting ``herd_rules`` off: the fence rules alone), queue
   the events and dead letters; every ``silence_sweep_s``, sweep the held devices for
   silent ones (:mod:`fencex.stream.silence`); when the clock passes a scheduled fence's
   opening or closing, re-evaluate that farm's devices at it (:mod:`fencex.stream.rotation`);
3. add the changed states, events and next offsets to the :class:`Checkpoint`;
4. every ``flush_interval`` (and before partitions are given up, and before fences are
   re-evaluated: :mod:`fencex.stream.changes`) take the checkpoint as one snapshot, serialised at once; then, in the
   background while the next batches are processed, wait for the broker's acks of
   everything queued, save the snapshot to Redis (one atomic script, fenced by the
   partitions' generations), and commit its offsets. One flush runs at a time.

A crash before the commit replays what was not committed: fixes whose state was
saved are stale and skipped, the others give the same events again, with the same
``event_id``. Every event id is a function of saved inputs: re-evaluation after a
fence change runs only on states just saved (the checkpoint is flushed first).

Errors: a server that does not answer (``Unavailable``) is retried with backoff
(:func:`fencex.retrying.retrying`): a save, in place for up to ``save_retry_s``; anything
else, or a save still refused then, after a reload (committed offsets, states from Redis).
Anything else raised while a batch was applied is the batch's fault: after the reload its
records are applied one by one and the one that raises is dead-lettered
(``processing_error``). A save refused because the partitions have a newer owner
(``Fenced``) drops the pending work and waits for the rebalance.

Locking: ``self.lock`` guards the checkpoint, the device states and the index. It is
held by each :meth:`Processor.step` (after ``getmany``), by the rebalance callbacks
(awaited by the consumer's coordinator task), by the reload after an error and by
:meth:`stop`. The background flush task touches only its own snapshot; it is awaited,
under the lock, before the next flush starts (a save Redis refuses: up to ``save_retry_s``).
A batch fetched across a rebalance is dropped (``_epoch`` moved) and the consumer sent back
to the committed offsets.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from typing import Any

from fencex.detector import DeviceState
from fencex.errors import BrokerUnavailable, Fenced, GenerationsLost, StoreUnavailable
from fencex.fix import Fix
from fencex.index import FenceIndex
from fencex.metrics import PushMetrics
from fencex.pipeline import Processed, RulesOf, process, reevaluate_all
from fencex.retrying import retrying
from fencex.store.base import SaveWrites
from fencex.stream import adoption, batch, cache, changes, isolation, latefixes, rebalance, rotation, silence
from fencex.stream.checkpoint import Checkpoint, Pending
from fencex.stream.config import LoopSettings, Topics
from fencex.stream.gauges import worker_gauges
from fencex.stream.outbox import Outbox
from fencex.stream.ports import Consumer, DeviceStore, Follower, Producer, Record
from fencex.stream.silence import SilenceWatch
from fencex.stream.tracks import TrackKeeper, window_of

log = logging.getLogger(__name__)
Batches = Mapping[int, Sequence[Record]]


class Processor:
    def __init__(
        self,
        store: DeviceStore,
        consumer: Consumer,
        producer: Producer,
        follower: Follower,
        metrics: PushMetrics,
        topics: Topics = Topics(),
        settings: LoopSettings = LoopSettings(),
        clock: Callable[[], float] = time.time,
        rules_of: RulesOf | None = None,
    ) -> None:
        self.store, self.consumer, self.producer, self.follower = store, consumer, producer, follower
        self.metrics = metrics
        self.topics = topics
        self.settings = settings
        self.clock = clock
        self.lock = asyncio.Lock()
        self.checkpoint = Checkpoint(settings.flush_interval)
        self.index = FenceIndex([])
        self.cache = cache.StateCache(settings.state_cache_max)  # at most this many states (:mod:`.cache`)
        self.states: dict[str, DeviceState] = self.cache.states
        self._saving: Mapping[str, DeviceState] = {}  # the states of the snapshot being saved (pinned)
        self.device_partition: dict[str, int] = {}
        self.generations: dict[int, int] = {}  # partition -> the generation this worker holds
        self.running = False
        self.outbox = Outbox(producer, topics, metrics, clock, settings.dead_max_bytes)
        self.rules_of = (rules_of or follower.rules_of) if settings.herd_rules else None
        self.mob_of = follower.mob_of if settings.herd_rules else None
        self.silence = SilenceWatch(self.rules_of)
        self.rotation = rotation.TransitionHeap()  # the scheduled farms' next transitions
        self.tracks = (
            TrackKeeper(settings.track_cap, trims_per_flush=settings.trims_per_flush) if settings.tracks else None
        )
        self.late = latefixes.LateFixes(settings.late_budget_ms, settings.late_max)
        self._swept = 0.0  # monotonic time of the last silence sweep
        self._fetched = -1  # the epoch of the last getmany since an assignment or a reload
        self._next_index: FenceIndex | None = None
        self._index_farms: set[str] | None = set()  # farms changed in the indexes handed over (None: all)
        self._mobs_changed: set[str] = set()  # farms whose mobs changed: their devices re-evaluated next step
        self._rules_changed: set[str] = set()  # farms whose herd settings changed: their silences re-timed
        self._flushing: asyncio.Task[dict[int, int]] | None = None
        self._epoch = 0  # moved by every rebalance
        self._reload_needed = False
        self._fenced = False
        self._reclaim = False  # the partitions' generations were lost: claim them again at the reload
        self._inflight: dict[int, tuple[int, int]] = {}  # the batch being applied: partition -> offsets
        self._suspect: dict[int, tuple[int, int]] = {}  # offset ranges to apply record by record
        follower.on_index = self._new_index
        follower.on_mobs = self._mobs_changed.update
        follower.on_rules = self._rules_changed.update
        consumer.listen(functools.partial(rebalance.assigned, self), functools.partial(rebalance.revoked, self))

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Connect to Redis, load fences and device registrations, join the group."""
        await self.store.connect()
        self.index = await self.follower.load()
        self.rotation.rebuild(self.index, int(self.clock() * 1000))
        self.metrics.index_rebuild.observe(self.index.build_seconds)
        log.info("loaded %d fences and %d device registrations", len(self.index), len(self.follower.tenants))
        await self.producer.start()
        await self.consumer.start()

    async def stop(self) -> None:
        self.running = False
        try:
            async with self.lock:
                await self.flush()
        except Exception as exc:  # noqa: BLE001 - what was not committed is read again
            log.warning("final flush failed: %s", exc)
        await self.consumer.stop()
        await self.producer.stop()
        await self.store.close()

    def snapshot(self, occupancy: Counter[tuple[str, str]] | None = None) -> dict[str, Any]:
        """What the metrics collector reads at scrape time (:func:`fencex.stream.gauges.worker_gauges`)."""
        return worker_gauges(self, occupancy)

    def _new_index(self, index: FenceIndex) -> None:
        self.metrics.index_rebuild.observe(index.build_seconds)
        if index.changed is None:
            self._index_farms = None  # a full load: every farm may have changed
        elif self._index_farms is not None:
            self._index_farms |= index.changed  # those of every index handed over since the last swap
        self._next_index = index  # swapped in by the loop, between batches

    async def watch_changes(self) -> None:
        """Follow the change feed; new indexes are swapped in by the loop."""
        await self.follower.follow()

    # ------------------------------------------------------------ the loop

    async def run(self) -> None:
        self.running = True
        while self.running:
            try:
                async for attempt in retrying("the processing loop", on_error=self._count_error, logger=log):
                    with attempt:
                        await self._attempt()
            except asyncio.CancelledError:
                raise
            except GenerationsLost as exc:
                self.metrics.saves_fenced.inc()
                log.warning("%s; claiming the partitions again", exc)
                self._reclaim = True
                self._reload_needed = True
            except Fenced as exc:
                self.metrics.saves_fenced.inc()
                log.warning("%s; dropping pending work until the rebalance", exc)
                self._fenced = True
                self._reload_needed = True
            except Exception:
                log.exception("a step failed; reloading, then applying the batch record by record")
                inflight, self._inflight = self._inflight, {}
                self._suspect.update(inflight)
                self._reload_needed = True
                await asyncio.sleep(0.1 if inflight else 1.0)  # not a batch's fault: do not spin

    def _count_error(self, exc: BaseException) -> None:
        if isinstance(exc, StoreUnavailable):
            self.metrics.store_errors.inc()
        elif isinstance(exc, BrokerUnavailable):
            self.metrics.broker_errors.inc()

    async def _attempt(self) -> None:
        try:
            if self._reload_needed:
                await self._reload()
            await self.step()
        except BaseException:
            self._reload_needed = True
            raise

    async def step(self) -> None:
        """One batch: fetch, then (under the lock) swap the index, apply, start a due flush."""
        epoch = self._epoch
        batches = await self.consumer.getmany(self.settings.poll_ms, self.settings.max_records)
        async with self.lock:
            if self._fenced:
                return  # not ours any more: wait for the rebalance
            if self._next_index is not None:
                await changes.swap_index(self)
            elif self._mobs_changed or self._rules_changed:
                await changes.herd_changed(self)
            if epoch != self._epoch:  # fetched across a rebalance: read it again from the committed offsets
                await self.consumer.seek_to_committed()
            else:
                self._fetched = epoch
                assigned = set(self.consumer.assignment())
                batches = {p: rs for p, rs in batches.items() if rs and p in assigned}
                if batches:
                    self._inflight = {p: (rs[0].offset, rs[-1].offset) for p, rs in batches.items()}
                    if self._suspect:
                        await isolation.apply_isolated(self, batches)
                    else:
                        await self._apply_batches(batches)
                    self._inflight = {}
            due = self.rotation.next_due()
            if due is not None and due <= self.clock() * 1000:
                await rotation.apply_due(self)
            if self.rules_of is not None and time.monotonic() - self._swept >= self.settings.silence_sweep_s:
                await silence.sweep(self)
            if self.late.due(self.checkpoint.due()):
                await latefixes.merge_due(self)
            if self.checkpoint.due():
                await self.flush(wait=False)
            cache.evict(self)

    async def _reload(self) -> None:
        """After an error: back to the committed offsets, device states from Redis."""
        async with self.lock:
            try:
                await self._await_flush()
            except Exception:  # noqa: BLE001 - its offsets were not committed: they are read again
                pass
            self.checkpoint.drop()
            self.late.drop()
            self.checkpoint.holds = {}
            self.cache.clear()
            self.device_partition.clear()
            self._saving = {}
            self._fetched = -1  # positions moved back: the lag is known again after the next fetch
            await self.consumer.seek_to_committed()
            if self._reclaim:  # Redis lost the generations (and the states): this worker's partitions are its own
                self.generations = await self.store.claim_partitions(self.topics.locations, self.consumer.assignment())
                self._reclaim = False
            if not self._fenced:
                await rebalance.load(self, self.consumer.assignment())
            self._reload_needed = False
            self.metrics.reconnects.labels("redis").inc()

    # ---------------------------------------------------------- fence changes

    def _reevaluate(self, devices: list[str] | None) -> Processed:
        return reevaluate_all(self.index, self.states, devices, self.mob_of, herd=self.rules_of is not None)

    async def _publish_reevaluation(self, out: Processed) -> None:
        await self.outbox.events(out.events)
        self.checkpoint.add(out.dirty, out.events, out.grazing)
        if self.tracks is not None:
            self.tracks.published(self.checkpoint.pending, out.events, self.states)

    # ------------------------------------------------------------ flushing

    async def flush(self, wait: bool = True) -> None:
        """Take the checkpoint, then ack, save and commit it (in the background if not ``wait``).

        The snapshot is serialised here, synchronously, so it holds exactly the fixes whose
        offsets it commits. Called with the lock held; the next call waits for this one first.
        """
        await self._await_flush()
        if self.tracks is not None:
            await self.tracks.trim_due(self)  # no save in flight: the stored tracks are all saved
        if self.checkpoint.empty():
            self.checkpoint.take()  # restart the interval
            return
        pending: Pending = self.checkpoint.take()
        loc = self.topics.locations
        long_bytes = self.tracks.long_bytes if self.tracks is not None else 1 << 62
        # a merge's memberships are set from the device's latest state: fixes applied after the merge
        # in this snapshot changed them again (their events' rows come first, the resets' last)
        resets = {d: (before, pending.states.get(d, after)) for d, (before, after) in pending.resets.items()}
        blob = self.store.pack_save(
            pending.states,
            pending.events,
            {(loc, p): ds for p, ds in pending.new_devices.items()},
            {(loc, p): g for p, g in self.generations.items()},
            SaveWrites(pending.tracks, pending.rewrites, pending.anchors, resets, pending.grazing, long_bytes),
            self.device_partition,
        )
        self._saving = pending.states
        self._flushing = asyncio.create_task(self._ack_save_commit(blob, pending.offsets))
        if wait:
            await self._await_flush()

    async def _ack_save_commit(self, blob: bytes | None, offsets: dict[int, int]) -> dict[int, int]:
        undelivered = await self.producer.wait_acked()
        if undelivered:
            await self.outbox.undelivered(undelivered)
        # Redis refusing the save for a while (at its maxmemory, restarting) only delays it: the snapshot
        # is sent again (it writes once: its token), not replayed from the committed offsets, which would
        # publish every event since then again at each attempt. The loop waits at its next flush.
        async for attempt in retrying(
            "saving a checkpoint", on_error=self._count_error, logger=log, give_up_after=self.settings.save_retry_s
        ):
            with attempt:
                long = await self.store.save_packed(blob)
        if self.tracks is not None:
            self.tracks.saved(long)
        await self.consumer.commit(offsets)
        return offsets

    async def _await_flush(self) -> None:
        task, self._flushing = self._flushing, None
        if task is not None:
            self.checkpoint.committed(await task)  # re-raises its error: the loop then reloads
            self._saving = {}  # saved: its states may be evicted

    # ------------------------------------------------------------ applying

    async def _apply_batches(self, batches: Batches) -> None:
        """Split, apply in chunks of at most ``chunk_fixes`` (yielding between them, so heartbeats
        and /metrics stay served), queue reroutes and dead letters, then store the offsets."""
        started = time.perf_counter()
        received_ms = int(self.clock() * 1000)
        s = self.settings
        out = batch.split(chain.from_iterable(batches.values()), received_ms, s.max_clock_skew_ms, s.dead_max_bytes)
        step = s.chunk_fixes
        for i in range(0, len(out.fixes), step):
            if i:
                await asyncio.sleep(0)
            await self._apply(out.fixes[i : i + step], out.partitions[i : i + step], received_ms)
        await self.outbox.reroutes(out.reroutes)
        await self.outbox.dead_letters(out.dead, out.dead_reasons)
        m = self.metrics
        for rj in out.rejected:
            m.fixes_dropped.labels(rj.reason).inc()
        for p, rs in batches.items():  # only now is the whole batch applied
            self.checkpoint.store_offset(p, rs[-1].offset + 1)
        m.records.inc(out.records)
        m.batch_seconds.observe(time.perf_counter() - started)

    async def _apply(self, fixes: list[Fix], partitions: list[int], now_ms: int) -> None:
        if not fixes:
            return
        # Devices not cached (evicted, or never seen by this worker): the store may know them.
        missing = list({f.device_id for f in fixes if f.device_id not in self.states})
        new: dict[int, list[str]] = {}
        fresh: list[str] = []
        if missing:  # (the fixes of devices moved to another partition are taken out: adoption)
            fresh = [d for d in missing if d not in self.device_partition]  # not held: watched for silence
            new = await cache.load_missing(self, missing, fixes, partitions)
        adoption.place(self, fixes, partitions)  # devices whose fixes come on another partition now move there
        fresh = [d for d in fresh if d in self.device_partition]  # (not those held by another partition now)
        tenants, default = self.follower.tenants, self.settings.default_tenant
        out = process(
            fixes, self.index, self.states, lambda d: tenants.get(d, default), self.rules_of, self.mob_of, now_ms
        )
        cache.index_batch(self, missing, out.events)  # devices new to the cache or moved farm: under their farms
        if self.cache.ordered():
            self.cache.touch(out.dirty)  # used: to the recent end
        await self.outbox.events(out.events)
        silence.watch_new(self, fresh, out.events, now_ms)
        self.checkpoint.add(out.dirty, out.events, out.grazing)
        if self.tracks is not None:
            win = lambda t: window_of(self, t)  # noqa: E731
            self.tracks.record(self.checkpoint.pending, fixes, out.applied, out.prev, self.states, out.events, win)
            latefixes.hold(self, fixes, partitions, out.late)
        for p, ds in new.items():
            self.checkpoint.register(p, ds)
        m = self.metrics
        m.fixes_consumed.inc(len(fixes))
        m.state_cache_hits.inc(len(fixes) - len(missing))
        m.fixes_processed.inc(out.fixes)
        duplicates = out.stale - (len(out.late) if self.tracks is not None else 0)
        if duplicates:
            m.fixes_dropped.labels("out_of_order").inc(duplicates)
        for reason, n in out.untrusted.items():
            m.fixes_untrusted.labels(reason).inc(n)
        m.intersections.inc(out.inside)
        m.point_tests.inc(out.candidates)
        m.batch.observe(len(fixes))

"""The devices' tracks on the live path (issue 12): every applied fix appended to its device's
stored track (:mod:`fencex.track` bytes) in the worker's atomic save, and long tracks trimmed.

Per batch (:meth:`TrackKeeper.record`, called by the loop after the pipeline): the applied fixes'
records, encoded at once (:func:`fencex.trackbytes.encode_fixes`), go to the checkpoint's bytes to
append for their devices, each fix's time relative to the fix before; the time before a device's
first fix in a snapshot is its anchor, which the save puts first if the track is not there (lost,
or a device older than tracks: the track starts as an orphan). A device new to fencex, or moved
to another farm, starts a new track (written whole: its old farm's fixes are not the new farm's; for a
moved one, an orphan, so that no late fix from before the move is merged into it).
The ids of the events published at a fix follow it, and every ``snap_every`` fixes the device's
state (a snapshot: what a late merge replays from, and where a trim may cut).

Trims: the save names the tracks that grew past ``long_bytes`` (about twice the cap's bytes);
before the next snapshot is taken (no save in flight, so the stored track is all there is before
the pending bytes), at most ``trims_per_flush`` of them are read, trimmed to the farm's window and
the cap (:meth:`fencex.track.Track.trim`, at a snapshot) and written whole, the pending bytes
appended after. A device is also trimmed by time, at a snapshot when half its farm's window has
passed (in fix time) since its last trim here, so a slow collar's track does not keep weeks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from fencex.detector import DeviceState
from fencex.errors import CorruptRecord
from fencex.event import Event
from fencex.fix import Fix
from fencex.herd import HerdRules
from fencex.track import CAP, REPLAYED, SNAP_EVERY, WINDOW_MS, Track
from fencex.trackbytes import MAGIC, ORPHAN, SNAP, anchor, encode_blob, ids_bytes, state_record

if TYPE_CHECKING:
    from fencex.stream.checkpoint import Pending
    from fencex.stream.loop import Processor

log = logging.getLogger(__name__)
BYTES_PER_FIX = 17  # a fix with accuracy and battery, as collars send them


def window_ms(rules: HerdRules | None) -> int:
    """The farm's track window: late fixes older than this behind the newest are dropped."""
    if rules is None:
        return WINDOW_MS
    return int(rules.track_window_s * 1000)


class TrackKeeper:
    def __init__(self, cap: int = CAP, snap_every: int = SNAP_EVERY, trims_per_flush: int = 20) -> None:
        self.cap, self.snap_every, self.trims_per_flush = cap, snap_every, trims_per_flush
        self.long_bytes = 2 * cap * BYTES_PER_FIX + 4096
        self.since: dict[str, int] = {}  # device -> fixes appended since its last snapshot (here)
        self.trimmed: dict[str, tuple[int, int]] = {}  # device -> (fix time, stored length) at its last trim here
        self.due: dict[str, int] = {}  # devices to trim before the next snapshot -> their stored length

    def forget(self, devices: Iterable[str]) -> None:
        for d in devices:
            self.since.pop(d, None)
            self.trimmed.pop(d, None)
            self.due.pop(d, None)

    def record(
        self,
        pending: Pending,
        fixes: Sequence[Fix],
        applied: Sequence[int],
        prev: Sequence[int],
        states: Mapping[str, DeviceState],
        events: Sequence[Event],
        window_of: Callable[[str], int],
    ) -> None:
        """Add the applied fixes (``applied``: positions in ``fixes``; ``prev``: each one's device's fix
        time before it, -1 for a track that starts again), the ids of ``events`` and the snapshots due
        to ``pending``'s track bytes."""
        if not applied:
            return
        tracks, anchors, since = pending.tracks, pending.anchors, self.since
        fx = [fixes[i] for i in applied]
        devs = [f.device_id for f in fx]
        blob, ends = encode_blob(fx, prev)
        ready: list[str] = []  # devices with snap_every fixes since their last snapshot
        get, count, snap_every = tracks.get, since.get, self.snap_every
        moved = {e.device_id for e in events if e.type == "transferred"}
        i, n, start = 0, len(fx), 0
        while i < n:  # a run of one device's fixes (a packed record's) at a time: one slice
            d = devs[i]
            j = i + 1
            while j < n and devs[j] == d:
                j += 1
            before = prev[i]
            buf = get(d)
            if before < 0:  # new to fencex or to its farm: a new track, written whole
                # moved from another farm: an orphan (no replay from before its first fix: the old farm's)
                pending.rewrites[d] = MAGIC + bytes((ORPHAN,)) if d in moved else MAGIC
                buf = tracks[d] = bytearray()
                anchors[d] = -1
                since[d] = 0
            elif buf is None:  # the device's first fix in this snapshot: relative to its fix before
                buf = tracks[d] = bytearray()
                anchors[d] = before
            if d not in since:  # this worker's first append: the fix before named, for the reader to check
                buf += anchor(before)
            end = ends[j - 1]
            buf += blob[start:end]
            start = end
            had = count(d, 0)
            since[d] = had + j - i
            if had < snap_every <= had + j - i:
                ready.append(d)
            i = j
        for e in events:
            if e.type in REPLAYED:
                st = states.get(e.device_id)
                # a fix's (not the old farm's exits of a moved collar, nor a silence's)
                if st is not None and st.tenant == e.tenant and e.device_id in tracks:
                    ids_bytes(tracks[e.device_id], e.ts_ms, (bytes.fromhex(e.event_id),))
        for d in ready:  # the state after the batch is the one after its last fix (every applied one is here)
            st = states.get(d)
            if st is None:
                continue
            state_record(tracks[d], SNAP, st)
            since[d] = 0
            ts = st.last_ts
            at, _ = self.trimmed.setdefault(d, (ts, 0))
            if ts - at >= window_of(st.tenant) // 2:
                self.due.setdefault(d, 0)

    def published(self, pending: Pending, events: Iterable[Event], states: Mapping[str, DeviceState]) -> None:
        """Events published with no new fix (a fence or mob change re-deciding a device's last fix):
        their ids, at that fix, go to the track too, so a merge over it does not publish them again.
        (The bytes' anchor: the device's last fix, which the next fix appended follows.)"""
        for e in events:
            st = states.get(e.device_id)
            if e.type in REPLAYED and st is not None:
                buf = pending.tracks.get(e.device_id)
                if buf is None:
                    buf = pending.tracks[e.device_id] = bytearray()
                    pending.anchors[e.device_id] = st.last_ts
                ids_bytes(buf, e.ts_ms, (bytes.fromhex(e.event_id),))

    def saved(self, long: Iterable[tuple[str, int]]) -> None:
        """The save's answer: these tracks are long; trim them unless trimmed at about that length already
        (a track within the cap and window that its records make long: tried again when it grew further)."""
        for d, size in long:
            _, was = self.trimmed.get(d, (0, 0))
            if size >= was + self.long_bytes // 2:
                self.due[d] = size

    async def trim_due(self, p: Processor) -> None:
        """Trim up to ``trims_per_flush`` due tracks into the checkpoint (called with no save in flight)."""
        if not self.due:
            return
        pending = p.checkpoint.pending
        picked: list[str] = []
        for d in list(self.due):
            if len(picked) >= self.trims_per_flush:
                break
            del self.due[d]
            if d in p.states and d not in pending.rewrites:  # a merge's rewrite is newer than the stored track
                picked.append(d)
        raws = await p.store.load_tracks(picked, p.device_partition)
        for d in picked:
            raw = raws.get(d)
            st = p.states[d]
            if raw is None:
                continue
            try:
                track = Track.from_bytes(raw)
            except CorruptRecord as exc:
                log.warning("track of %s does not read (%s): started again", d, exc)
                p.metrics.tracks_corrupt.inc()
                # an orphan at the fix the pending bytes (and the next appends) are relative to
                pending.rewrites[d] = MAGIC + bytes((ORPHAN,)) + anchor(pending.anchors.get(d, st.last_ts))
                self.trimmed[d] = (st.last_ts, len(pending.rewrites[d]))
                continue
            before = len(track)
            track.trim(window_of(p, st.tenant), self.cap)
            self.trimmed[d] = (track.newest, len(raw))
            if len(track) == before and track.ts:
                continue  # nothing to cut yet (no snapshot past the window's start)
            pending.rewrites[d] = track.to_bytes()
            self.trimmed[d] = (track.newest, len(pending.rewrites[d]))
            p.metrics.tracks_trimmed.inc()


def window_of(p: Processor, tenant: str) -> int:
    return window_ms(p.rules_of(tenant) if p.rules_of is not None else None)

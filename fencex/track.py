"""A device's track: its recent fixes, what was published for each, and states to replay from.

What the late-fix merge (:mod:`fencex.late`) needs to replay a device's fixes through the
detector as if they had arrived in order, and nothing else:

- per fix (ascending, distinct times): ``ts``, ``lon``, ``lat`` and the extras the herd rules
  read (``accuracy_m``, ``battery``; None when the fix had none);
- the ids of the events published at each fix's time (of the types a replay gives again,
  :data:`REPLAYED`), 16 bytes each;
- ``base``: the device's state before its first fix held (None: the device had none), and
  ``snaps``: states after some fixes (every ``snap_every`` fixes), so a merge replays from the
  nearest state before its first late fix, not from the base; and so trimming moves the base
  to a state the device really had, not one recomputed with today's fences;
- ``retracted``: ids withdrawn so far (with how many times), so a second retraction of an
  id that came back gets another retract id.

Bounded by a window of fix time relative to the newest fix (default 24 h) and a cap on fixes
(default 2,000), both applied at snapshot boundaries: the oldest fixes are dropped up to the
newest snapshot that leaves the track within both, which becomes the base (so at most the cap
plus ``snap_every`` fixes are held, and a late fix older than the base cannot be merged).

Bytes: a log of records, so the live path can append a batch's records to a stored string
(Redis ``APPEND``) without reading it, and :meth:`Track.to_bytes` rewrites it whole after a merge
or a trim. A fix is 1 tag byte, its time as milliseconds after the previous fix (4 bytes), its
place as two int32 of 1e-7 degree when that gives the float back exactly (as for every fix sent
with up to 7 decimals), else two float64, and its extras as uint16 hundredths when that is exact
(as for 3.7 m or 87 %), else float64: 13 bytes a fix, 17 with accuracy and battery. A reader skips
fixes no newer than the newest it holds.
"""

from __future__ import annotations

import bisect
import itertools
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import orjson

from fencex import trackbytes as tb
from fencex.detector import DeviceState
from fencex.errors import CorruptRecord
from fencex.event import FENCE_TYPES, Event
from fencex.fix import Fix

WINDOW_MS = 24 * 3600 * 1000
CAP = 2_000
SNAP_EVERY = 100
# the types a replay of fixes gives again (not silent / resumed, of the worker's clock; not transferred, retract)
REPLAYED: frozenset[str] = frozenset((*FENCE_TYPES, "escape", "return", "battery_low", "battery_ok"))


@dataclass(slots=True)
class Track:
    base: DeviceState | None = None
    ts: list[int] = field(default_factory=list)
    lon: list[float] = field(default_factory=list)
    lat: list[float] = field(default_factory=list)
    acc: list[float | None] = field(default_factory=list)
    bat: list[float | None] = field(default_factory=list)
    ids: dict[int, tuple[bytes, ...]] = field(default_factory=dict)  # fix ts -> published event ids
    snaps: list[DeviceState] = field(default_factory=list)  # states after the fix at their last_ts, ascending
    retracted: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # id -> (its fix ts, times retracted)
    orphan: bool = False  # no base, and the state before the first fix is not known: see :meth:`adopted`

    def __post_init__(self) -> None:
        if self.base is not None and (self.base.seen_ms or self.base.silent):
            self.base = frozen(self.base)  # a replay starts without the worker's clock

    @property
    def newest(self) -> int:
        """The newest fix's time; the base's when no fix is held; -1 when neither."""
        if self.ts:
            return self.ts[-1]
        return self.base.last_ts if self.base is not None else -1

    @property
    def floor(self) -> int:
        """The base's last fix time: a late fix must be newer to be merged (-1: no base)."""
        return self.base.last_ts if self.base is not None else -1

    def __len__(self) -> int:
        return len(self.ts)

    def fixes(self, device_id: str, start: int = 0) -> list[Fix]:
        """The held fixes from position ``start``, as the detector takes them."""
        out = []
        for i in range(start, len(self.ts)):
            a, b = self.acc[i], self.bat[i]
            extra = None
            if a is not None or b is not None:
                extra = {}
                if a is not None:
                    extra["accuracy_m"] = a
                if b is not None:
                    extra["battery"] = b
            out.append(Fix(device_id, self.ts[i], self.lon[i], self.lat[i], extra))
        return out

    def add_fix(self, fix: Fix) -> None:
        """Append one fix newer than every held one."""
        if fix.ts_ms <= self.newest:
            raise ValueError(f"fix at {fix.ts_ms} is not newer than the track's newest ({self.newest})")
        extra = fix.extra or {}
        self.ts.append(fix.ts_ms)
        self.lon.append(fix.lon)
        self.lat.append(fix.lat)
        self.acc.append(extra.get("accuracy_m"))
        self.bat.append(extra.get("battery"))

    def record(self, events: Iterable[Event]) -> None:
        """Keep the ids of published events of the :data:`REPLAYED` types at a held fix's time."""
        ts = self.ts
        for e in events:
            if e.type not in REPLAYED:
                continue
            k = bisect.bisect_left(ts, e.ts_ms)
            if k < len(ts) and ts[k] == e.ts_ms:
                self.ids[e.ts_ms] = (*self.ids.get(e.ts_ms, ()), bytes.fromhex(e.event_id))

    def since_snap(self) -> int:
        """Fixes held after the newest snapshot (or the base)."""
        last = self.snaps[-1].last_ts if self.snaps else self.floor
        return len(self.ts) - bisect.bisect_right(self.ts, last)

    def snapshot(self, state: DeviceState) -> None:
        """Keep ``state`` as the state after the newest fix (a copy: the live path moves states in place)."""
        if not self.ts or state.last_ts != self.ts[-1]:
            raise ValueError("a snapshot is the state after the newest fix")
        self.snaps.append(frozen(state))

    def extend(
        self, fixes: Sequence[Fix], events: Iterable[Event], state: DeviceState, snap_every: int = SNAP_EVERY
    ) -> None:
        """The live path: ``fixes`` (in order, newer than the track's) applied, ``events`` published,
        ``state`` the device's state after them. A snapshot when ``snap_every`` fixes came since the last."""
        for fix in fixes:
            self.add_fix(fix)
        self.record(events)
        if fixes and self.since_snap() >= snap_every and state.last_ts == self.ts[-1]:
            self.snapshot(state)

    def trim(self, window_ms: int = WINDOW_MS, cap: int = CAP) -> None:
        """Drop the oldest fixes up to the newest snapshot that leaves the rest within the window
        (of the newest fix) and the cap; that snapshot becomes the base."""
        if not self.ts:
            return
        cut = max(bisect.bisect_left(self.ts, self.ts[-1] - window_ms), len(self.ts) - cap)
        if cut <= 0:
            return
        k = bisect.bisect_right([s.last_ts for s in self.snaps], self.ts[cut - 1])
        if k == 0:
            return  # no snapshot to move the base to yet
        base = self.snaps[k - 1]
        n = bisect.bisect_right(self.ts, base.last_ts)
        self.base, self.snaps = base, self.snaps[k:]
        del self.ts[:n], self.lon[:n], self.lat[:n], self.acc[:n], self.bat[:n]
        floor = base.last_ts
        self.ids = {t: v for t, v in self.ids.items() if t > floor}
        self.retracted = {i: v for i, v in self.retracted.items() if v[0] > floor}

    # -- bytes --------------------------------------------------------------------------------

    def adopted(self) -> Track:
        """A track a replay can start from: this one, or, when it is an orphan, the part after its
        first snapshot (which becomes its base); with no snapshot, an empty track (a merge then
        starts again from the device's state)."""
        if not self.orphan or self.base is not None:
            return self
        if not self.snaps:
            return Track()
        base = self.snaps[0]
        n = bisect.bisect_right(self.ts, base.last_ts)
        floor = base.last_ts
        return Track(
            base,
            self.ts[n:],
            self.lon[n:],
            self.lat[n:],
            self.acc[n:],
            self.bat[n:],
            {t: v for t, v in self.ids.items() if t > floor},
            self.snaps[1:],
            {i: v for i, v in self.retracted.items() if v[0] > floor},
        )

    def to_bytes(self) -> bytes:
        out = bytearray(tb.MAGIC)
        if self.base is not None:
            tb.state_record(out, tb.BASE, self.base)
        elif self.orphan:
            out.append(tb.ORPHAN)
        out += fix_records(self, 0, self.floor)
        for gone, (t, count) in self.retracted.items():
            out.append(tb.GONE)
            out += tb.GONE_REC.pack(t, count, gone)
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> Track:
        """The track stored as ``data``; :class:`~fencex.errors.CorruptRecord` if it does not read (cut
        short, damaged: fixes out of time order or a record that does not parse), never another error."""
        if data[:2] != tb.MAGIC:
            raise CorruptRecord("not a track")
        try:
            track = cls._read(data)
        except CorruptRecord:
            raise
        except (struct.error, IndexError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptRecord(f"a track that does not read: {type(exc).__name__}: {exc}"[:200]) from None
        ts = track.ts
        if any(a >= b for a, b in itertools.pairwise(ts)) or (ts and ts[0] <= track.floor):
            raise CorruptRecord("a track whose fixes are not in time order")
        return track

    @classmethod
    def _read(cls, data: bytes) -> Track:
        track = cls()
        view = memoryview(data)
        pos, end, prev, top = 2, len(data), -1, -1  # prev: the record before; top: the newest fix held
        ts, lon, lat, acc, bat, ids = track.ts, track.lon, track.lat, track.acc, track.bat, track.ids
        while pos < end:
            tag = data[pos]
            pos += 1
            if tag < 32:
                if tag & tb.ABS:
                    t = tb.I64.unpack_from(view, pos)[0]
                    pos += 8
                else:
                    t = prev + tb.U32.unpack_from(view, pos)[0]
                    pos += 4
                if tag & tb.F64:
                    x, y = tb.LL64.unpack_from(view, pos)
                    pos += 16
                else:
                    xi, yi = tb.LL32.unpack_from(view, pos)
                    x, y = xi / tb.SCALE, yi / tb.SCALE
                    pos += 8
                a = b = None
                wide = tag & tb.X64
                if tag & tb.ACC:
                    a = tb.F64S.unpack_from(view, pos)[0] if wide else tb.U16.unpack_from(view, pos)[0] / 100.0
                    pos += 8 if wide else 2
                if tag & tb.BAT:
                    b = tb.F64S.unpack_from(view, pos)[0] if wide else tb.U16.unpack_from(view, pos)[0] / 100.0
                    pos += 8 if wide else 2
                prev = t  # the next record's time is relative to this one, read or skipped
                if t <= top:
                    continue  # not newer than one held: not a fix of this track's (as after a lost save)
                top = t
                ts.append(t)
                lon.append(x)
                lat.append(y)
                acc.append(a)
                bat.append(b)
            elif tag == tb.IDS:
                t = tb.I64.unpack_from(view, pos)[0]
                n = data[pos + 8]
                pos += 9
                had = ids.get(t, ())
                got = tuple(bytes(view[pos + 16 * j : pos + 16 * j + 16]) for j in range(n))
                ids[t] = (*had, *(i for i in got if i not in had))  # a replayed append names them again
                pos += 16 * n
            elif tag in (tb.SNAP, tb.BASE):
                size = tb.U32.unpack_from(view, pos)[0]
                state = DeviceState.from_obj(orjson.loads(view[pos + 4 : pos + 4 + size]))
                pos += 4 + size
                if tag == tb.BASE:
                    track.base = state
                    prev = top = state.last_ts
                elif not track.snaps or state.last_ts > track.snaps[-1].last_ts:  # else an append replayed
                    track.snaps.append(state)
            elif tag == tb.ORPHAN:
                track.orphan = True
            elif tag == tb.ANCHOR:
                prev = tb.I64.unpack_from(view, pos)[0]
                pos += 8
            elif tag == tb.GONE:
                t, count, gone = tb.GONE_REC.unpack_from(view, pos)
                pos += tb.GONE_REC.size
                track.retracted[bytes(gone)] = (t, count)
            else:
                raise CorruptRecord(f"unknown track record {tag} at byte {pos - 1}")
        held = set(ts)
        if any(t not in held for t in ids):  # appended for a fix since trimmed or never held: not for a replay
            track.ids = {t: v for t, v in ids.items() if t in held}
        return track


def frozen(state: DeviceState) -> DeviceState:
    """A copy without the worker's clock (seen, silent): what a replay starts from."""
    obj = state.to_obj()
    obj.pop("seen", None)
    obj.pop("sil", None)
    return DeviceState.from_obj(obj)


def fix_records(track: Track, start: int, prev: int) -> bytes:
    """The records of the fixes from position ``start`` (``prev``: the fix time before them, -1: none),
    with the ids published at them and the snapshots taken after them: what :meth:`Track.to_bytes`
    holds for them."""
    out = bytearray()
    snaps = {s.last_ts: s for s in track.snaps}
    ts, lon, lat, acc, bat, ids = track.ts, track.lon, track.lat, track.acc, track.bat, track.ids
    for i in range(start, len(ts)):
        t = ts[i]
        out += tb.fix_bytes(t, prev, lon[i], lat[i], acc[i], bat[i])
        got = ids.get(t)
        if got:
            tb.ids_bytes(out, t, got)
        snap = snaps.get(t)
        if snap is not None:
            tb.state_record(out, tb.SNAP, snap)
        prev = t
    return bytes(out)


def append_bytes(
    newest: int,
    fixes: Sequence[Fix],
    events: Iterable[Event],
    snapshot: DeviceState | None = None,
    records: Sequence[bytes] | None = None,
) -> bytes:
    """What the live path appends to a stored track (``newest``: its newest fix time, -1 for none) after
    applying ``fixes`` (in order, newer) and publishing ``events`` (the device's): the records
    :meth:`Track.extend` then :meth:`Track.to_bytes` would hold, without reading the stored track.
    ``snapshot``: the state after the last of ``fixes``, when the worker keeps one (every
    :data:`SNAP_EVERY` fixes or so). ``records``: the fixes' records when encoded already (a batch of
    many devices at once: :func:`fencex.trackbytes.encode_fixes`, the first with no fix before it).

    The first fix's time is relative to ``newest``: the worker's save sends ``anchor(newest)`` with
    it, which the save script puts first when the track is not there (an orphan); a save runs once
    (its token), so an append is never applied twice."""
    by_ts: dict[int, list[bytes]] = {}
    for e in events:
        if e.type in REPLAYED:
            by_ts.setdefault(e.ts_ms, []).append(bytes.fromhex(e.event_id))
    out = bytearray()
    prev = newest
    for k, f in enumerate(fixes):
        t = f.ts_ms
        if t <= prev:
            raise ValueError(f"fix at {t} is not newer than the one before ({prev})")
        extra = f.extra
        rel = prev
        if records is not None:
            out += records[k]
        elif extra is None:
            out += tb.fix_bytes(t, rel, f.lon, f.lat, None, None)
        else:
            out += tb.fix_bytes(t, rel, f.lon, f.lat, extra.get("accuracy_m"), extra.get("battery"))
        if by_ts:
            got = by_ts.pop(t, None)
            if got:
                tb.ids_bytes(out, t, got)
        prev = t
    if snapshot is not None:
        if not fixes or snapshot.last_ts != prev:
            raise ValueError("a snapshot is the state after the newest fix")
        tb.state_record(out, tb.SNAP, snapshot)
    for t, got in by_ts.items():  # published at an older fix (a fence change re-deciding the last accepted one)
        if t <= newest:
            tb.ids_bytes(out, t, got)
    return bytes(out)

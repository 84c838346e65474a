"""The bytes of a track (:mod:`fencex.track`): its records, one at a time or a batch of fixes at once.

A track is ``MAGIC`` and then records, each a tag byte and its fields (little-endian):

- a fix (tags 0..31, flags): ``ABS``: its time as int64 milliseconds, else as uint32 milliseconds after
  the fix before; ``F64``: its place as two float64, else as two int32 of 1e-7 degree (exact: the float
  is given back bit for bit); ``ACC``, ``BAT``: accuracy_m and battery follow, as uint16 hundredths,
  or ``X64``: as float64;
- ``IDS``: int64 fix time, uint8 n, n ids of 16 bytes: events published at that fix;
- ``SNAP``, ``BASE``: uint32 length and the state's JSON (:meth:`DeviceState.to_obj`, without the
  worker's clock): the state after the fix at its time, or before the first fix held;
- ``GONE``: int64 fix time, uint32 times, 16-byte id: an id retracted (so many times);
- ``ORPHAN`` (no fields, first): the track starts at a fix whose state before is not known (the
  device had fixes before its track was kept, or its track was lost): no replay from its start;
- ``ANCHOR``: int64 time: the time the next fix's is relative to (what an append to a track that is
  not there starts with: the save script puts ``ORPHAN`` and the append's anchor first).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np
import orjson

from fencex.detector import DeviceState
from fencex.fix import Fix

MAGIC = b"\xfe\x01"
ABS, F64, ACC, BAT, X64 = 1, 2, 4, 8, 16  # fix record flags (tags 0..31)
IDS, SNAP, BASE, GONE, ORPHAN, ANCHOR = 64, 65, 66, 67, 68, 69  # other records
SCALE = 1e7
I64 = struct.Struct("<q")
U32 = struct.Struct("<I")
U16 = struct.Struct("<H")
LL32 = struct.Struct("<ii")
LL64 = struct.Struct("<dd")
F64S = struct.Struct("<d")
GONE_REC = struct.Struct("<qI16s")  # uint32 times: a uint16 overflowed at 65,536 retractions


def centi_exact(x: float) -> bool:
    """Whether ``x`` is a whole number of hundredths in 0..655.35 (as 3.7 m or 87 %): two bytes."""
    return 0.0 <= x <= 655.35 and round(x * 100.0) / 100.0 == x


def state_record(out: bytearray, tag: int, state: DeviceState) -> None:
    obj = state.to_obj()
    obj.pop("seen", None)
    obj.pop("sil", None)
    packed = orjson.dumps(obj)
    out.append(tag)
    out += U32.pack(len(packed))  # a device in thousands of fences: over 64 KiB
    out += packed


COMPACT = [struct.Struct("<BIii"), struct.Struct("<BIiiH"), struct.Struct("<BIiiH"), struct.Struct("<BIiiHH")]
LIMIT = 1 << 31


def fix_bytes(t: int, prev: int, x: float, y: float, a: float | None, b: float | None) -> bytes:
    """One fix record. The common case (a time gap below 2**32 ms, a place in 1e-7 degrees, extras in
    hundredths) is one struct.pack; the rest is built field by field."""
    dt = t - prev
    xi, yi = round(x * SCALE), round(y * SCALE)
    exact = xi / SCALE == x and yi / SCALE == y and -LIMIT <= xi < LIMIT and -LIMIT <= yi < LIMIT
    if prev >= 0 and 0 < dt < 1 << 32 and exact:
        if a is None and b is None:
            return COMPACT[0].pack(0, dt, xi, yi)
        if (a is None or centi_exact(a)) and (b is None or centi_exact(b)):
            if b is None:
                return COMPACT[1].pack(ACC, dt, xi, yi, round(a * 100.0))  # type: ignore[operator]
            if a is None:
                return COMPACT[2].pack(BAT, dt, xi, yi, round(b * 100.0))
            return COMPACT[3].pack(ACC | BAT, dt, xi, yi, round(a * 100.0), round(b * 100.0))
    tag = 0
    if prev < 0 or not 0 < dt < 1 << 32:
        tag |= ABS
    if not exact:
        tag |= F64
    if a is not None:
        tag |= ACC
    if b is not None:
        tag |= BAT
    if (a is not None and not centi_exact(a)) or (b is not None and not centi_exact(b)):
        tag |= X64
    out = bytearray((tag,))
    out += I64.pack(t) if tag & ABS else U32.pack(dt)
    out += LL64.pack(x, y) if tag & F64 else LL32.pack(xi, yi)
    if a is not None:
        out += F64S.pack(a) if tag & X64 else U16.pack(round(a * 100.0))
    if b is not None:
        out += F64S.pack(b) if tag & X64 else U16.pack(round(b * 100.0))
    return bytes(out)


def anchor(t: int) -> bytes:
    """An ``ANCHOR`` record: the fix after it is relative to ``t``."""
    return bytes((ANCHOR,)) + I64.pack(t)


def ids_bytes(out: bytearray, t: int, got: Sequence[bytes]) -> None:
    for j in range(0, len(got), 255):
        chunk = got[j : j + 255]
        out.append(IDS)
        out += I64.pack(t)
        out.append(len(chunk))
        out += b"".join(chunk)


def encode_fixes(fixes: Sequence[Fix], prev: Sequence[int]) -> list[bytes]:
    """Each fix's record (as :func:`fix_bytes`), a batch at once: ``prev[i]`` is the time of the fix before
    ``fixes[i]`` of its device (-1: none). The checks run over the batch's columns with numpy, the common
    records are packed by layout in one structured array each; only the rest one by one."""
    n = len(fixes)
    if n == 0:
        return []
    ts = np.array([f.ts_ms for f in fixes], dtype=np.int64)  # list comprehensions: faster than fromiter
    pv = np.asarray(prev, dtype=np.int64)
    x = np.array([f.lon for f in fixes], dtype=np.float64)
    y = np.array([f.lat for f in fixes], dtype=np.float64)
    nan = math.nan
    extras = [f.extra for f in fixes]
    if any(extras):
        a = np.array([(e or _NONE).get("accuracy_m", nan) for e in extras], dtype=np.float64)
        b = np.array([(e or _NONE).get("battery", nan) for e in extras], dtype=np.float64)
    else:
        a = b = np.full(n, nan)
    dt = ts - pv
    xi, yi = np.rint(x * SCALE), np.rint(y * SCALE)
    a100, b100 = np.rint(a * 100.0), np.rint(b * 100.0)
    has_a, has_b = ~np.isnan(a), ~np.isnan(b)
    with np.errstate(invalid="ignore"):
        ok = (pv >= 0) & (dt > 0) & (dt < 1 << 32) & (xi / SCALE == x) & (yi / SCALE == y)
        ok &= (np.abs(xi) < LIMIT) & (np.abs(yi) < LIMIT)
        ok &= ~has_a | ((a100 / 100.0 == a) & (a100 >= 0) & (a100 <= 65535))
        ok &= ~has_b | ((b100 / 100.0 == b) & (b100 >= 0) & (b100 <= 65535))
    out: list[bytes] = [b""] * n
    layout = has_a.astype(np.int8) + 2 * has_b.astype(np.int8)
    for k, fields in enumerate(_LAYOUTS):
        rows = np.flatnonzero(ok & (layout == k))
        if not len(rows):
            continue
        rec = np.empty(len(rows), dtype=np.dtype(fields))
        rec["tag"] = (ACC if k & 1 else 0) | (BAT if k & 2 else 0)
        rec["dt"], rec["x"], rec["y"] = dt[rows], xi[rows], yi[rows]
        if k & 1:
            rec["a"] = a100[rows]
        if k & 2:
            rec["b"] = b100[rows]
        blob, size = rec.tobytes(), rec.dtype.itemsize
        for j, i in enumerate(rows.tolist()):
            out[i] = blob[j * size : (j + 1) * size]
    for i in np.flatnonzero(~ok).tolist():
        extra = fixes[i].extra or _NONE
        out[i] = fix_bytes(
            int(ts[i]), int(pv[i]), fixes[i].lon, fixes[i].lat, extra.get("accuracy_m"), extra.get("battery")
        )
    return out


_NONE: dict[str, float] = {}
_HEAD = [("tag", "u1"), ("dt", "<u4"), ("x", "<i4"), ("y", "<i4")]
_LAYOUTS = [_HEAD, [*_HEAD, ("a", "<u2")], [*_HEAD, ("b", "<u2")], [*_HEAD, ("a", "<u2"), ("b", "<u2")]]

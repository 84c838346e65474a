"""GPS fixes: the records collars and gateways publish on ``locations``.

A record is one JSON object ``{"device_id", "ts", "lon", "lat"}`` (plus optional
``accuracy_m``, ``speed_mps``, ``battery``) or a JSON list of such objects, so a
gateway can pack many fixes into one record. ``ts`` is RFC 3339 or epoch
milliseconds, and must lie between 2000-01-01 and the receiving clock plus a
tolerated skew (``max_skew_ms``, 10 minutes by default): a time in seconds,
microseconds or far in the future is refused (``bad_ts``) rather than freezing
the device (every later real fix would be stale). The receiving time is an
argument, so parsing stays a pure function.

Parsing is hand-rolled over orjson rather than a pydantic model: it runs once
per fix on the hot path, and this is several times cheaper per fix.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from fencex.errors import InvalidFix

OPTIONAL_FIELDS = ("accuracy_m", "speed_mps", "battery")
MAX_DEVICE_ID = 128
MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: anything older is a unit or clock error
DEFAULT_MAX_SKEW_MS = 600_000  # how far ahead of the receiving clock a fix's time may be


@dataclass(slots=True)
class Fix:
    device_id: str
    ts_ms: int
    lon: float
    lat: float
    extra: dict[str, float] | None = None


@dataclass(slots=True)
class Rejected:
    """A record, or one fix inside a packed record, that cannot be processed."""

    reason: str  # short, low-cardinality: the metric label
    detail: str  # what exactly is wrong, for the dead-letter record
    raw: bytes
    index: int | None = None  # which element of a packed record (None: the record itself)


def parse_ts(value: Any) -> int:
    """Epoch milliseconds from epoch milliseconds (int or float) or an RFC 3339 string."""
    if isinstance(value, bool):
        raise InvalidFix("ts must be RFC 3339 or epoch milliseconds, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidFix(f"ts is not a finite number: {value!r}")
        return int(value)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidFix(f"ts {value!r} is neither RFC 3339 nor epoch milliseconds") from None
        if dt.tzinfo is None:
            raise InvalidFix(f"ts {value!r} has no time zone offset (RFC 3339 needs one, e.g. Z)")
        try:
            return int(dt.timestamp() * 1000)
        except (OverflowError, ValueError):
            raise InvalidFix(f"ts {value!r} is out of range") from None
    raise InvalidFix(f"ts must be RFC 3339 or epoch milliseconds, got {type(value).__name__}")


def check_ts(ts_ms: int, latest_ms: int) -> int:
    """``ts_ms`` if it lies in [2000-01-01, ``latest_ms``]; InvalidFix otherwise."""
    if ts_ms < MIN_TS_MS:
        raise InvalidFix(f"ts {ts_ms} ms is before 2000-01-01 (epoch milliseconds expected)")
    if ts_ms > latest_ms:
        raise InvalidFix(f"ts {ts_ms} ms is ahead of the receiving clock by more than the tolerated skew")
    return ts_ms


def latest_ts(received_ms: int | None, max_skew_ms: int = DEFAULT_MAX_SKEW_MS) -> int:
    """The latest acceptable fix time for a fix received at ``received_ms`` (now if None)."""
    return (int(time.time() * 1000) if received_ms is None else received_ms) + max_skew_ms


def _coordinate(obj: dict[str, Any], name: str, limit: float) -> float:
    value = obj.get(name)
    if value is None:
        raise InvalidFix(f"{name} is missing")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidFix(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidFix(f"{name} is not a finite number: {value!r}")
    if not -limit <= value <= limit:
        raise InvalidFix(f"{name} {value} is outside [-{limit:g}, {limit:g}]")
    return value


_NUMBER = (float, int)


def fix_from_obj(obj: Any, received_ms: int | None = None, max_skew_ms: int = DEFAULT_MAX_SKEW_MS) -> Fix:
    """One fix from a decoded JSON object; raises InvalidFix saying why not.

    ``received_ms``: when the fix was received (epoch ms; now if None), for the range check of ``ts``.
    """
    latest = latest_ts(received_ms, max_skew_ms)
    # Fast path: the common, well-formed fix. NaN fails the range comparisons; a
    # bool is not float or int by type(); anything unusual takes the checked path.
    if type(obj) is dict and len(obj) == 4:
        d, ts, lon, lat = obj.get("device_id"), obj.get("ts"), obj.get("lon"), obj.get("lat")
        if (
            type(d) is str
            and 0 < len(d) <= MAX_DEVICE_ID
            and type(ts) is int
            and MIN_TS_MS <= ts <= latest
            and type(lon) in _NUMBER
            and type(lat) in _NUMBER
            and -180.0 <= lon <= 180.0
            and -90.0 <= lat <= 90.0
        ):
            return Fix(d, ts, float(lon), float(lat), None)
    return _checked_fix(obj, latest)


def _checked_fix(obj: Any, latest_ms: int) -> Fix:
    if not isinstance(obj, dict):
        raise InvalidFix(f"a fix is a JSON object, got {type(obj).__name__}")
    device_id = obj.get("device_id")
    if not isinstance(device_id, str) or not device_id:
        raise InvalidFix("device_id is missing or not a non-empty string")
    if len(device_id) > MAX_DEVICE_ID:
        raise InvalidFix(f"device_id is longer than {MAX_DEVICE_ID} characters")
    if "ts" not in obj:
        raise InvalidFix("ts is missing")
    ts_ms = check_ts(parse_ts(obj["ts"]), latest_ms)
    lon = _coordinate(obj, "lon", 180.0)
    lat = _coordinate(obj, "lat", 90.0)
    extra = None
    for name in OPTIONAL_FIELDS:
        value = obj.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidFix(f"{name} must be a finite number, got {value!r}")
            if extra is None:
                extra = {}
            extra[name] = float(value)
    return Fix(device_id, ts_ms, lon, lat, extra)


def reason_of(detail: str) -> str:
    """The low-cardinality reason (a metric label) for a fix error message."""
    for key in ("device_id", "ts", "lon", "lat"):
        if detail.startswith(key):
            return f"bad_{key}"
    return "bad_fix"


def parse_record(
    raw: bytes,
    fixes: list[Fix],
    rejected: list[Rejected],
    received_ms: int,
    max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
) -> None:
    """Append the good fixes of one record to ``fixes`` and each bad one to ``rejected``.

    A bad fix inside a packed list rejects only itself: the good ones go on.
    ``received_ms`` (epoch ms) is the receiving clock: ``ts`` may be at most ``max_skew_ms`` ahead of it.
    """
    latest = received_ms + max_skew_ms
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        rejected.append(Rejected("not_json", f"not JSON: {exc}", raw))
        return
    if isinstance(obj, list):
        if not obj:
            rejected.append(Rejected("bad_fix", "an empty list holds no fix", raw))
        append = fixes.append
        for i, item in enumerate(obj):
            # fix_from_obj's fast path, inlined: a packed record holds many fixes
            if type(item) is dict and len(item) == 4:
                d, ts, lon, lat = item.get("device_id"), item.get("ts"), item.get("lon"), item.get("lat")
                if (
                    type(d) is str
                    and 0 < len(d) <= MAX_DEVICE_ID
                    and type(ts) is int
                    and MIN_TS_MS <= ts <= latest
                    and type(lon) in _NUMBER
                    and type(lat) in _NUMBER
                    and -180.0 <= lon <= 180.0
                    and -90.0 <= lat <= 90.0
                ):
                    append(Fix(d, ts, float(lon), float(lat), None))
                    continue
            try:
                append(_checked_fix(item, latest))
            except InvalidFix as exc:
                rejected.append(Rejected(reason_of(str(exc)), f"fix {i} of {len(obj)}: {exc}", raw, i))
        return
    try:
        fixes.append(fix_from_obj(obj, received_ms, max_skew_ms))
    except InvalidFix as exc:
        rejected.append(Rejected(reason_of(str(exc)), str(exc), raw))


def fix_json(fix: Fix) -> bytes:
    """One fix as a record value (epoch milliseconds), for sending it on."""
    obj: dict[str, Any] = {"device_id": fix.device_id, "ts": fix.ts_ms, "lon": fix.lon, "lat": fix.lat}
    if fix.extra:
        obj.update(fix.extra)
    return orjson.dumps(obj)

"""The herd's rules beside the fence detector: escapes, collar batteries, fixes not to trust.

Pure functions over a device's state and a fix, with the farm's :class:`HerdRules` and
the device's :class:`Mob` (which fence ids are its pastures and exclusion zones) given by
the caller: the detector knows nothing of where rules and mobs are stored.

- *out*: a device is out when it is a member of none of its mob's pastures (the exit
  buffer holds a member, as for exits) while the mob has one, or a member of one of its
  exclusion zones. ``confirm_fixes`` consecutive fixes must agree before ``escape`` (or
  ``return``) fires, so one jittery fix raises no alarm. A fence change decides at once.
- *battery*: ``battery_low`` once when a reading falls below ``battery_low_pct``,
  ``battery_ok`` once it is above ``battery_low_pct + battery_margin_pct``: no flapping.
- *silence*: ``silent`` when no fix has arrived for ``silence_s`` on the worker's clock
  (the sweep is the worker's; the rule is :func:`fencex.detector.silence_due`), ``resumed``
  with the next fix.
- *trust*: a fix with ``accuracy_m`` worse than ``accuracy_limit_m`` moves the device
  (last position and time) but not its fences; a fix implying more than ``max_speed_mps``
  from the last accepted fix (a *jump*) is held back; the next fix that agrees with it
  (no jump between them) is accepted.
- *time*: ``timezone`` (an IANA name) is the farm's day, for grazing time per day; ``track_window_s``
  is how far behind a device's newest fix a late fix is still merged (older ones are dropped).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from fencex.fence import Fence
from fencex.fix import Fix

if TYPE_CHECKING:
    from fencex.detector import DeviceState

METRES_PER_DEGREE_LAT = 110_574.0
METRES_PER_DEGREE_LON_EQUATOR = 111_320.0

# Verdicts on a fix (the metric labels of fixes not trusted, besides ACCEPTED)
ACCEPTED = ""
INACCURATE = "inaccurate"
JUMP = "jump"
UNTRUSTED_REASONS: tuple[str, ...] = (INACCURATE, JUMP)

NO_FIX: tuple[int, float, float] = (-1, 0.0, 0.0)  # a device with no accepted fix yet


@dataclass(frozen=True, slots=True)
class HerdRules:
    """One farm's settings for the herd rules (defaults: the issue's)."""

    confirm_fixes: int = 2
    battery_low_pct: float = 20.0
    battery_margin_pct: float = 5.0
    accuracy_limit_m: float = 25.0
    max_speed_mps: float = 20.0
    silence_s: float = 3600.0  # no fix arrived for this long (worker's clock): silent
    timezone: str = "UTC"  # IANA name: the farm's day (grazing time is kept per day of the farm)
    track_window_s: float = 86_400.0  # late fixes further than this behind the device's newest are dropped

    def __post_init__(self) -> None:
        # a record read back from the store is checked here too: a string or null would raise in the worker
        if type(self.confirm_fixes) is not int:
            raise TypeError("confirm_fixes must be an integer")
        if type(self.timezone) is not str:
            raise TypeError("timezone must be a string")
        zone(self.timezone)
        numbers = ("battery_low_pct", "battery_margin_pct", "accuracy_limit_m", "max_speed_mps", "silence_s")
        for name in (*numbers, "track_window_s"):
            value = getattr(self, name)
            if type(value) not in (int, float) or math.isnan(value):
                raise TypeError(f"{name} must be a number")
        if self.confirm_fixes < 1:
            raise ValueError("confirm_fixes must be at least 1")
        if self.battery_margin_pct < 0 or self.accuracy_limit_m < 0 or self.max_speed_mps <= 0:
            raise ValueError("battery_margin_pct and accuracy_limit_m must be >= 0, max_speed_mps > 0")
        if self.silence_s <= 0 or self.track_window_s <= 0:
            raise ValueError("silence_s and track_window_s must be > 0")


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (cached by zoneinfo); ValueError if there is none, as for a schedule's."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Europe/Stockholm)") from None


DEFAULT_RULES = HerdRules()
# The fence detector alone, as before the herd rules: no fix distrusted, no battery alarm
# (and, with NO_MOB, no escape). What the detector and pipeline do unless given rules.
NO_HERD = HerdRules(1, -math.inf, 0.0, math.inf, math.inf, math.inf)


@dataclass(frozen=True, slots=True)
class Mob:
    """The fence ids that count as a device's pastures and exclusion zones, and the mob's id."""

    pastures: frozenset[str] = frozenset()
    exclusions: frozenset[str] = frozenset()
    id: str = ""  # the mob's id: grazing time is kept per mob ("": the farm's default mob)


NO_MOB = Mob()  # no pasture, no exclusion zone: never out


def first(members: Collection[str], ids: frozenset[str]) -> str:
    """The smallest id of ``members`` in ``ids``, or ``""``."""
    hits = [m for m in members if m in ids]
    return min(hits) if hits else ""


def is_out(members: Collection[str], mob: Mob, fences: Mapping[str, Fence]) -> bool:
    """Out: in one of the mob's exclusion zones, or in none of its pastures while one exists."""
    exclusions = mob.exclusions
    if exclusions:
        for m in members:
            if m in exclusions:
                return True
    pastures = mob.pastures
    if not pastures:
        return False
    for m in members:
        if m in pastures:
            return False
    return any(p in fences for p in pastures)  # no pasture (left): never out for want of one


def distance_m(lon0: float, lat0: float, lon1: float, lat1: float) -> float:
    """Metres between two points (equirectangular: exact enough for the speeds of a herd)."""
    kx = METRES_PER_DEGREE_LON_EQUATOR * math.cos(math.radians((lat0 + lat1) * 0.5))
    return math.hypot((lon1 - lon0) * kx, (lat1 - lat0) * METRES_PER_DEGREE_LAT)


def boundary_distance_m(geom: BaseGeometry, lon: float, lat: float) -> float:
    """Metres from a point to a fence's boundary (inside or out), in a projection local to the point."""
    kx = METRES_PER_DEGREE_LON_EQUATOR * max(math.cos(math.radians(lat)), 1e-6)

    def to_m(xy: np.ndarray) -> np.ndarray:
        return np.column_stack(((xy[:, 0] - lon) * kx, (xy[:, 1] - lat) * METRES_PER_DEGREE_LAT))

    return float(shapely.distance(shapely.transform(geom.boundary, to_m), shapely.Point(0.0, 0.0)))


def too_fast(a: tuple[int, float, float], ts: int, lon: float, lat: float, rules: HerdRules) -> bool:
    """Whether going from ``a`` (ts, lon, lat) to (ts, lon, lat) is faster than ``max_speed_mps``."""
    return distance_m(a[1], a[2], lon, lat) > rules.max_speed_mps * (ts - a[0]) / 1000.0


def verdict(state: DeviceState | None, fix: Fix, rules: HerdRules) -> str:
    """ACCEPTED, INACCURATE or JUMP for a fresh (not stale) fix."""
    extra = fix.extra
    if extra is not None:
        accuracy = extra.get("accuracy_m")
        if accuracy is not None and accuracy > rules.accuracy_limit_m:
            return INACCURATE
    if state is None:
        return ACCEPTED
    ref = state.accepted
    if ref[0] < 0 or not too_fast(ref, fix.ts_ms, fix.lon, fix.lat, rules):
        return ACCEPTED
    pending = state.pending
    if pending is not None and fix.ts_ms > pending[0] and not too_fast(pending, fix.ts_ms, fix.lon, fix.lat, rules):
        return ACCEPTED  # two fixes agree after a jump: the collar really moved
    return JUMP


def battery_step(low: bool, reading: float, rules: HerdRules) -> bool | None:
    """The new low state if ``reading`` crosses a threshold (hysteresis), else None."""
    if not low:
        return True if reading < rules.battery_low_pct else None
    return False if reading > rules.battery_low_pct + rules.battery_margin_pct else None


def steady(state: DeviceState, fix: Fix, rules: HerdRules) -> bool:
    """Whether the herd rules have nothing to say about a fresh fix beyond moving the device
    (and keeping its battery reading): not silent, accurate enough, no battery crossing, no jump pending,
    and surely no jump (a bound without the cosine: it never calls a jump steady).
    The fence rules are :func:`fencex.detector.unchanged`'s."""
    if state.acc is not None or state.pending is not None or state.silent:
        return False  # a fence decision or a jump under way, or a silent collar to resume
    extra = fix.extra
    if extra is not None:
        accuracy = extra.get("accuracy_m")
        if accuracy is not None and accuracy > rules.accuracy_limit_m:
            return False
        reading = extra.get("battery")
        if reading is not None and battery_step(state.low, reading, rules) is not None:
            return False
    dx = (fix.lon - state.lon) * METRES_PER_DEGREE_LON_EQUATOR
    dy = (fix.lat - state.lat) * METRES_PER_DEGREE_LAT
    reach = rules.max_speed_mps * (fix.ts_ms - state.last_ts) / 1000.0
    return dx * dx + dy * dy <= reach * reach * 0.999999  # a hair inside: rounding never calls a jump steady

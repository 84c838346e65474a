"""Per-device enter / exit / dwell detection: a pure function over sets of fence ids.

As in traccar's geofence handler: ``enter = now - before``, ``exit = before - now``, and a fix no newer
than the device's last accepted fix is stale and skipped. On top of that:

- *dwell*: once a device has been inside a fence for the fence's ``dwell_s`` (measured in fix time),
  one ``dwell`` event, and no more until it exits;
- *exit buffer*: a member stays a member while the fix is within the fence's outer (grown) geometry,
  so GPS jitter on the border does not flap;
- *fence changes*: :func:`reevaluate` applies the same rules to the device's last fix when fences
  are reshaped or deleted.

The herd's rules (escape and return, battery, fixes not to trust) are in :mod:`fencex.herd`;
:func:`detect` applies them after the fence rules. :func:`is_stale`, :func:`unchanged` and
:func:`fencex.herd.steady` are the batch pipeline's fast path's predicates: the detector's own
rules, not copies (a property test holds them to :func:`detect`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from fencex.event import Event
from fencex.fence import Fence
from fencex.fix import Fix
from fencex.herd import (
    ACCEPTED,
    JUMP,
    NO_FIX,
    NO_HERD,
    NO_MOB,
    HerdRules,
    Mob,
    battery_step,
    first,
    is_out,
    verdict,
)

Distance = Callable[[Collection[str], float, float], float | None]


@dataclass(slots=True)
class Membership:
    since_ms: int
    version: int
    dwelled: bool = False


@dataclass(slots=True)
class DeviceState:
    """A device's state. ``last_ts``/``lon``/``lat``: its last fix that was not stale (last seen); ``acc``: its
    last *accepted* fix (ts, lon, lat) when that is another one (None: the same), the place its fences were decided
    and the jump rule's reference; ``pending``: a jump fix waiting for a second that agrees; ``out``/``streak``: out
    of its pastures, and how many consecutive fixes said otherwise; ``pasture``: the last pasture it left;
    ``low``/``battery``: the battery alarm and the last reading; ``seen_ms``: when its last fix arrived, on the
    worker's clock (0: unknown), and ``silent``: a ``silent`` event was sent since (no fix for the farm's
    ``silence_s``); ``turns``: its escapes and returns so far (each one's id holds it: distinct at one fix, the
    same on a replay from the saved state); ``sched_ms``: the last schedule transition it was re-evaluated at
    (:mod:`fencex.schedule`: its fences' activity is judged at the later of that and its fix's time)."""

    tenant: str
    last_ts: int
    lon: float
    lat: float
    members: dict[str, Membership] = field(default_factory=dict)
    acc: tuple[int, float, float] | None = None
    pending: tuple[int, float, float] | None = None
    out: bool = False
    streak: int = 0
    pasture: str = ""
    low: bool = False
    battery: float | None = None
    seen_ms: int = 0
    silent: bool = False
    turns: int = 0
    sched_ms: int = 0

    @property
    def accepted(self) -> tuple[int, float, float]:
        """The last accepted fix (ts, lon, lat); ts -1: none yet."""
        acc = self.acc
        return (self.last_ts, self.lon, self.lat) if acc is None else acc

    def to_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "tenant": self.tenant,
            "ts": self.last_ts,
            "lon": self.lon,
            "lat": self.lat,
            "in": {k: [m.since_ms, m.version, int(m.dwelled)] for k, m in self.members.items()},
        }
        # the herd's fields only when set: a state saved by an older version reads as defaults
        if self.acc is not None:
            obj["acc"] = list(self.acc)
        if self.pending is not None:
            obj["pend"] = list(self.pending)
        if self.pasture:
            obj["pas"] = self.pasture
        if self.battery is not None:
            obj["bat"] = self.battery
        counts = (("out", int(self.out)), ("streak", self.streak), ("low", int(self.low)), ("seen", self.seen_ms))
        for key, value in (*counts, ("sil", int(self.silent)), ("turns", self.turns), ("sched", self.sched_ms)):
            if value:
                obj[key] = value
        return obj

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> DeviceState:
        acc, pend = obj.get("acc"), obj.get("pend")
        return cls(
            sys.intern(obj["tenant"]),  # one string a farm in a worker's cache, not one a state (60 bytes)
            obj["ts"],
            obj["lon"],
            obj["lat"],
            {k: Membership(v[0], v[1], bool(v[2])) for k, v in obj["in"].items()},
            (int(acc[0]), float(acc[1]), float(acc[2])) if acc else None,
            (int(pend[0]), float(pend[1]), float(pend[2])) if pend else None,
            bool(obj.get("out", 0)),
            int(obj.get("streak", 0)),
            str(obj.get("pas", "")),
            bool(obj.get("low", 0)),
            obj.get("bat"),
            int(obj.get("seen", 0)),
            bool(obj.get("sil", 0)),
            int(obj.get("turns", 0)),
            int(obj.get("sched", 0)),
        )


@dataclass(slots=True)
class Outcome:
    state: DeviceState | None
    events: list[Event]
    stale: bool = False
    untrusted: str = ""  # INACCURATE or JUMP: the fix was not applied to the device's fences


def is_stale(state: DeviceState | None, ts_ms: int) -> bool:
    """A fix no newer than the device's last accepted fix is stale: skipped, counted."""
    return state is not None and ts_ms <= state.last_ts


def silence_due(state: DeviceState, now_ms: int, rules: HerdRules) -> bool:
    """The one silence rule: no fix has arrived for the farm's ``silence_s`` on the worker's clock
    (from ``seen_ms``, when the last one arrived: 0, unknown, is never due), and none sent since."""
    return not state.silent and 0 < state.seen_ms <= now_ms - rules.silence_s * 1000.0


def silent_event(device_id: str, state: DeviceState) -> Event:
    """``silent`` at the last fix's time and place: its id is a function of the device and that fix."""
    return Event("silent", state.tenant, device_id, "", 0, state.last_ts, state.lon, state.lat)


def dwell_due(member: Membership, fence: Fence, ts_ms: int) -> bool:
    """The one dwell rule: ``dwell_s`` of fix time inside, and not fired yet since the enter."""
    dwell_s = fence.dwell_s
    return bool(dwell_s) and not member.dwelled and ts_ms - member.since_ms >= (dwell_s or 0.0) * 1000.0


def unchanged(
    state: DeviceState,
    ts_ms: int,
    inside: Collection[str],
    near: Collection[str],
    fences: Mapping[str, Fence],
    mob: Mob = NO_MOB,
    fresh: bool = True,
) -> bool:
    """Whether a fresh fix at ``ts_ms`` (``fresh``) or a fence change (not ``fresh``: the
    accepted fix again) changes nothing but the device's position and time: the same set of
    fences (those held by an exit buffer included), none of them reshaped or deleted, no
    dwell due, and no escape or return under way. Then :func:`detect` (or :func:`reevaluate`)
    gives no event and the same memberships. The fix's own herd rules are :func:`steady`'s."""
    members = state.members
    for fid in inside:
        if fid not in members:
            return False  # enter
    if len(inside) != len(members):
        for fid in members:
            if fid not in inside and fid not in near:
                return False  # exit
    for fid, m in members.items():
        fence = fences.get(fid)
        if fence is None or fence.version != m.version or dwell_due(m, fence, ts_ms):
            return False  # deleted, reshaped, or a dwell to fire
    out = is_out(members, mob, fences)
    if fresh:
        return out == state.out and state.streak == 0  # else a confirmation counts on
    return out == (state.out != (state.streak > 0))  # the fence change leaves the verdict as it was


def _memberships(
    before: dict[str, Membership],
    tenant: str,
    device_id: str,
    ts: int,
    lon: float,
    lat: float,
    inside: Collection[str],
    near: Collection[str],
    fences: Mapping[str, Fence],
) -> tuple[dict[str, Membership], list[Event]]:
    now_ids = set(inside)
    now_ids.update(fid for fid in near if fid in before)  # still within the exit buffer
    events: list[Event] = []
    members: dict[str, Membership] = {}
    for fid in sorted(before.keys() - now_ids):
        fence = fences.get(fid)
        version = fence.version if fence is not None else before[fid].version
        events.append(Event("exit", tenant, device_id, fid, version, ts, lon, lat))
    for fid in sorted(now_ids):
        fence = fences[fid]
        member = before.get(fid)
        if member is None:
            member = Membership(ts, fence.version)
            events.append(Event("enter", tenant, device_id, fid, fence.version, ts, lon, lat))
        else:
            member = Membership(member.since_ms, fence.version, member.dwelled)
        if dwell_due(member, fence, ts):
            member.dwelled = True
            events.append(Event("dwell", tenant, device_id, fid, fence.version, ts, lon, lat, fence.dwell_s))
        members[fid] = member
    return members, events


def _copy(s: DeviceState, members: dict[str, Membership]) -> DeviceState:  # dataclasses.replace: 7x slower
    return DeviceState(
        s.tenant,
        s.last_ts,
        s.lon,
        s.lat,
        members,
        s.acc,
        s.pending,
        s.out,
        s.streak,
        s.pasture,
        s.low,
        s.battery,
        s.seen_ms,
        s.silent,
        s.turns,
        s.sched_ms,
    )


def _herd(
    before: Mapping[str, Membership],
    new: DeviceState,
    device_id: str,
    ts: int,
    lon: float,
    lat: float,
    mob: Mob,
    fences: Mapping[str, Fence],
    confirm: int,
    distance: Distance | None,
    events: list[Event],
    fresh: bool,
) -> None:
    """Escape and return: ``confirm`` consecutive fixes (``fresh``), or at once when a fence change turns it."""
    if not (mob.pastures or mob.exclusions or new.out or new.streak):
        return  # no herd to keep: the fence detector alone, and a state saved as before
    members = new.members
    here = first(members, mob.pastures)
    gone = [fid for fid in before if fid not in members]
    if gone:  # the pasture it left (or a deleted fence, whatever it was): named by a later escape
        left = first(gone, mob.pastures) or min((fid for fid in gone if fid not in fences), default="")
        if left:
            new.pasture = left
    out = is_out(members, mob, fences)
    if fresh:
        if out == new.out:
            new.streak = 0
            return
        new.streak += 1
        if new.streak < confirm:
            return
    else:
        if out == (new.out != (new.streak > 0)):
            return  # the fence change did not turn the verdict: a confirmation under way goes on
        new.streak = 0
        if out == new.out:
            return
    new.out, new.streak, new.turns = out, 0, new.turns + 1
    if out:
        fid = first(members, mob.exclusions) or new.pasture
        d = distance(mob.pastures, lon, lat) if distance is not None else None
    else:
        fid, d = here, None
    version = fence.version if (fence := fences.get(fid)) is not None else 0
    kind = "escape" if out else "return"
    events.append(Event(kind, new.tenant, device_id, fid, version, ts, lon, lat, None, d, turn=new.turns))


def detect(
    state: DeviceState | None,
    fix: Fix,
    tenant: str,
    inside: Collection[str],
    near: Collection[str],
    fences: Mapping[str, Fence],
    rules: HerdRules = NO_HERD,
    mob: Mob = NO_MOB,
    distance: Distance | None = None,
    now_ms: int = 0,
) -> Outcome:
    """Apply one fix to a device's state.

    ``inside``: ids of the tenant's fences containing the fix (boundary included);
    ``near``: ids of buffered fences whose outer geometry contains it;
    ``fences``: the current fences by id (deleted ones are absent);
    ``rules``: the farm's herd rules; ``mob``: the device's pastures and exclusion zones;
    ``distance``: metres from a point to the nearest boundary of the named pastures;
    ``now_ms``: when the fix arrived, on the worker's clock (0: not told): the device's ``seen_ms``.
    A silent device's next fresh fix, trusted or not, first gives ``resumed``.
    """
    ts, lon, lat = fix.ts_ms, fix.lon, fix.lat
    if is_stale(state, ts):
        return Outcome(state, [], stale=True)
    why = verdict(state, fix, rules)
    if why == ACCEPTED:
        members, events = _memberships(
            state.members if state is not None else {}, tenant, fix.device_id, ts, lon, lat, inside, near, fences
        )
        new = DeviceState(tenant, ts, lon, lat, members) if state is None else _copy(state, members)
        new.last_ts, new.lon, new.lat, new.acc, new.pending = ts, lon, lat, None, None
        before = state.members if state is not None else {}
        _herd(before, new, fix.device_id, ts, lon, lat, mob, fences, rules.confirm_fixes, distance, events, True)
    else:
        events = []
        if state is None:  # a first fix too inaccurate to place the device in its fences
            new = DeviceState(tenant, ts, lon, lat, {}, NO_FIX)
        else:
            new = _copy(state, dict(state.members))
            new.acc = state.accepted
            new.last_ts = ts
            if why == JUMP:
                new.pending = (ts, lon, lat)  # held back; the device stays where it was
            else:
                new.lon, new.lat = lon, lat  # seen here, roughly: its fences stay
    if now_ms:
        new.seen_ms = now_ms
    if new.silent:
        new.silent = False
        events.insert(0, Event("resumed", tenant, fix.device_id, "", 0, ts, lon, lat))
    extra = fix.extra
    if extra is not None:
        reading = extra.get("battery")
        if reading is not None:
            new.battery = reading
            low = battery_step(new.low, reading, rules)
            if low is not None:
                new.low = low
                kind = "battery_low" if low else "battery_ok"
                events.append(Event(kind, tenant, fix.device_id, "", 0, ts, lon, lat, battery=reading))
    return Outcome(new, events, untrusted=why)


def move(state: DeviceState, fix: Fix, now_ms: int = 0) -> None:
    """What a fix that is :func:`unchanged` and :func:`steady` does: moves the device
    (and keeps its battery reading and arrival time). The pipeline's fast path."""
    state.last_ts, state.lon, state.lat = fix.ts_ms, fix.lon, fix.lat
    if now_ms:
        state.seen_ms = now_ms
    extra = fix.extra
    if extra is not None:
        reading = extra.get("battery")
        if reading is not None:
            state.battery = reading


def reevaluate(
    state: DeviceState,
    device_id: str,
    inside: Collection[str],
    near: Collection[str],
    fences: Mapping[str, Fence],
    mob: Mob = NO_MOB,
    distance: Distance | None = None,
    at_ms: int = 0,
) -> Outcome:
    """Re-apply a device's last accepted fix after fences changed: exits from deleted or
    shrunk fences, enters into new or grown ones, escapes and returns (at once: no
    confirmation), at the accepted fix's time and place. ``inside``/``near`` are of that place.
    ``at_ms``: a schedule's transition: the events are at that instant, kept as ``sched_ms``."""
    ts, lon, lat = state.accepted
    if ts < 0:
        return Outcome(state, [])  # never placed in its fences
    ts = at_ms or ts
    members, events = _memberships(state.members, state.tenant, device_id, ts, lon, lat, inside, near, fences)
    new = _copy(state, members)
    new.sched_ms = max(new.sched_ms, at_ms)
    _herd(state.members, new, device_id, ts, lon, lat, mob, fences, 1, distance, events, False)
    return Outcome(new, events)

"""The push path's configuration values: its topic names (defined once) and the loop's knobs.

The services build these from their settings (``FENCEX_LOCATIONS_TOPIC``, ``FENCEX_EVENTS_TOPIC``,
``FENCEX_DLQ_TOPIC``, ...); the defaults here are the settings' defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from fencex.fence import DEFAULT_TENANT
from fencex.fix import DEFAULT_MAX_SKEW_MS

DEFAULT_DEAD_MAX_BYTES = 64 * 1024

LOCATIONS = "locations"
EVENTS = "fence-events"
DLQ = "locations.dlq"


@dataclass(frozen=True, slots=True)
class Topics:
    locations: str = LOCATIONS  # fixes in, keyed by device id
    events: str = EVENTS  # fence events out, keyed by device id
    dlq: str = DLQ  # dead letters: one per bad record, with its reason

    def partitions(self, n: int) -> dict[str, int]:
        """Each topic's partition count, for creating them: events follow locations; one for the DLQ."""
        return {self.locations: n, self.events: n, self.dlq: 1}


@dataclass(frozen=True, slots=True)
class LoopSettings:
    max_records: int = 20_000  # records per getmany
    poll_ms: int = 100  # getmany's wait when nothing is there
    flush_interval: float = 0.2  # seconds between checkpoints
    chunk_fixes: int = 20_000  # fixes applied between two yields to the event loop
    default_tenant: str = DEFAULT_TENANT  # the tenant of unregistered devices
    max_clock_skew_ms: int = DEFAULT_MAX_SKEW_MS  # how far a fix's time may be ahead of the receiving clock
    dead_max_bytes: int = DEFAULT_DEAD_MAX_BYTES  # a dead letter's value is cut to this
    herd_rules: bool = True  # escapes, batteries, fixes not to trust and silence, per farm (off: fences alone)
    silence_sweep_s: float = 5.0  # seconds between two sweeps for silent devices
    silence_max_lag: int = 20_000  # a partition further behind than this (records) is not swept
    schedule_catchup_s: float = 7 * 86_400  # transitions missed while down: applied this far back at most
    tracks: bool = True  # keep each device's recent track and merge late fixes (off: late fixes dropped, as before)
    track_cap: int = 2_000  # fixes kept per device's track at most (and its farm's window)
    trims_per_flush: int = 20  # long tracks read, trimmed and rewritten per flush at most
    late_budget_ms: float = 20.0  # time spent merging held late fixes per flush (the rest wait for the next)
    late_max: int = 100_000  # late fixes held at most: past it, all are merged at the next step
    save_retry_s: float = 30.0  # a save Redis refuses is sent again for this long before the worker reloads
    state_cache_max: int = 1_000_000  # device states cached at most (~0.7 GB); the rest in Redis (stream.cache)

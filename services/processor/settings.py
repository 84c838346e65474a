"""The processor's settings: environment variables with the FENCEX_ prefix."""

from __future__ import annotations

import dataclasses

from pydantic import Field, NonNegativeInt

from fencex.fix import DEFAULT_MAX_SKEW_MS
from fencex.herd import DEFAULT_RULES, HerdRules
from fencex.metrics import FARMS_MAX
from fencex.stream.config import DEFAULT_DEAD_MAX_BYTES, DLQ, EVENTS, LoopSettings, Topics
from services.settings import ServiceSettings


class Settings(ServiceSettings):
    events_topic: str = EVENTS
    dlq_topic: str = DLQ
    partitions: int = 24  # docs/design/partitions.md: the sizing rule at 170,000 fixes/s
    group_id: str = "fencex-processor"
    history_group: str = "fencex-history"
    max_records: int = 20_000
    flush_interval_s: float = 0.2
    session_timeout_s: float = 10.0
    heartbeat_s: float = 1.0
    web_host: str = "0.0.0.0"
    web_port: int = 6066
    default_tenant: str = "default"
    history_maxlen: int = 10_000
    datadir: str = "/tmp/fencex-processor"
    max_clock_skew_s: float = DEFAULT_MAX_SKEW_MS / 1000  # a fix's time may be this far ahead of the clock
    dlq_max_bytes: int = DEFAULT_DEAD_MAX_BYTES  # a dead letter's value is cut to this (hash and size in headers)
    # Per-key order: idempotent producers (librdkafka's InitProducerId works against the local
    # broker, Tansu); off, one request in flight per connection instead.
    producer_idempotence: bool = True
    # The herd rules (escapes, batteries, fixes not to trust, silence) per farm; off: the fence rules alone.
    herd_rules: bool = True
    silence_sweep_s: float = Field(default=5.0, gt=0)  # seconds between two sweeps for silent collars
    silence_max_lag: int = Field(default=20_000, ge=0)  # a partition further behind (records) is not swept yet
    # Rotation schedules: transitions missed while no worker held a device are applied this far back at most
    schedule_catchup_s: float = Field(default=7 * 86_400, gt=0)
    # Tracks (each collar's recent fixes) and late fixes merged into them, as if they had come in order;
    # off: a fix older than its collar's newest is dropped, as before tracks were kept.
    tracks: bool = True
    track_cap: int = Field(default=2_000, ge=100, le=100_000)  # fixes kept per collar at most
    late_budget_ms: float = Field(default=20.0, gt=0)  # merging late fixes per flush at most (the rest wait)
    late_max: int = Field(default=100_000, ge=1)  # late fixes held at most before all are merged at once
    # A save Redis refuses (at its maxmemory, restarting) is sent again for this long, the worker waiting,
    # before it goes back to its committed offsets (which publishes the events since then again); 0: at once
    save_retry_s: float = Field(default=30.0, ge=0)
    # Device states a worker caches at most (about 0.7 KB each: 1,000,000 is ~0.7 GB); the least recently
    # used are evicted once saved and loaded from Redis again when their collars report
    state_cache_max: int = Field(default=1_000_000, ge=1)
    # The silence time of a farm without its own herd settings (the API's PUT /herd/settings)
    default_silence_s: float = Field(default=DEFAULT_RULES.silence_s, gt=0)
    # The herd metrics carry a farm label for the first this many farms a worker sees; the
    # rest share the label "_other", so the number of series is bounded whatever the farms.
    metrics_farms_max: NonNegativeInt = FARMS_MAX

    @property
    def default_rules(self) -> HerdRules:
        """The herd rules of a farm that has not set its own."""
        return dataclasses.replace(DEFAULT_RULES, silence_s=self.default_silence_s)

    @property
    def topics(self) -> Topics:
        return Topics(self.locations_topic, self.events_topic, self.dlq_topic)

    @property
    def loop(self) -> LoopSettings:
        return LoopSettings(
            max_records=self.max_records,
            flush_interval=self.flush_interval_s,
            default_tenant=self.default_tenant,
            max_clock_skew_ms=int(self.max_clock_skew_s * 1000),
            dead_max_bytes=self.dlq_max_bytes,
            herd_rules=self.herd_rules,
            silence_sweep_s=self.silence_sweep_s,
            silence_max_lag=self.silence_max_lag,
            schedule_catchup_s=self.schedule_catchup_s,
            tracks=self.tracks,
            track_cap=self.track_cap,
            late_budget_ms=self.late_budget_ms,
            late_max=self.late_max,
            save_retry_s=self.save_retry_s,
            state_cache_max=self.state_cache_max,
        )

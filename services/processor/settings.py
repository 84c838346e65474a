"""The processor's settings: environment variables with the FENCEX_ prefix."""

from __future__ import annotations

from pydantic import NonNegativeInt

from fencex.fix import DEFAULT_MAX_SKEW_MS
from fencex.metrics import FARMS_MAX
from fencex.stream.config import DEFAULT_DEAD_MAX_BYTES, DLQ, EVENTS, LoopSettings, Topics
from services.settings import ServiceSettings


class Settings(ServiceSettings):
    events_topic: str = EVENTS
    dlq_topic: str = DLQ
    partitions: int = 12
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
    # The herd metrics carry a farm label for the first this many farms a worker sees; the
    # rest share the label "_other", so the number of series is bounded whatever the farms.
    metrics_farms_max: NonNegativeInt = FARMS_MAX

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
        )

"""The processor's settings: environment variables with the FENCEX_ prefix."""

from __future__ import annotations

from services.settings import ServiceSettings


class Settings(ServiceSettings):
    events_topic: str = "fence-events"
    dlq_topic: str = "locations.dlq"
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

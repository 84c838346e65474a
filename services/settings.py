"""What every service's settings share: where the broker and Redis are, and the topics.

Each service has its own frozen ``Settings`` (``services/*/settings.py``) built on this one,
read from ``FENCEX_``-prefixed environment variables.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

from fencex.stream.config import LOCATIONS


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FENCEX_", frozen=True)

    kafka_bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "fx"
    locations_topic: str = LOCATIONS
    log_level: str = "info"

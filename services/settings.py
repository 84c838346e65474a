"""What every service's settings share: where the broker and Redis are, and the topics.

Each service has its own frozen ``Settings`` (``services/*/settings.py``) built on this one,
read from ``FENCEX_``-prefixed environment variables.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from fencex.store.base import DEFAULT_GROUPS
from fencex.stream.config import LOCATIONS


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FENCEX_", frozen=True)

    kafka_bootstrap: str = "127.0.0.1:9092"
    # redis:// (or rediss://) one Redis; redis+cluster://host:port[,host:port...] a Redis Cluster (seeds)
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "fx"
    # groups of farms and devices, each with its change feed (one slot each on a cluster): fixed for a
    # store, the same in every service (docs/design/redis-cluster.md)
    store_groups: int = Field(default=DEFAULT_GROUPS, ge=1, le=1024)
    locations_topic: str = LOCATIONS
    log_level: str = "info"

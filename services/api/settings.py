"""The API's settings: environment variables with the FENCEX_ prefix."""

from __future__ import annotations

from pydantic import SecretStr

from services.settings import ServiceSettings


class Settings(ServiceSettings):
    admin_key: SecretStr = SecretStr("")  # empty: the admin endpoints are off
    default_tenant: str = "default"
    max_vertices: int = 10_000
    max_body_bytes: int = 20 * 1024 * 1024
    max_batch_points: int = 100_000
    max_fixes_per_request: int = 10_000
    page_limit: int = 100
    key_cache_s: float = 10.0
    host: str = "0.0.0.0"
    port: int = 8000
    workers: int = 1  # API processes (granian workers)

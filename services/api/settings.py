"""The API's settings: environment variables with the FENCEX_ prefix."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from services.settings import ServiceSettings


class Settings(ServiceSettings):
    admin_key: SecretStr = SecretStr("")  # empty: the admin endpoints are off
    # Limits (each refusal is a problem that names the setting)
    max_body_bytes: int = 20 * 1024 * 1024  # a request body, counted as it streams in (413)
    max_vertices: int = 10_000  # positions in one fence (422)
    max_fence_bytes: int = 1_000_000  # one stored fence, as JSON (413)
    max_fences_per_tenant: int = 10_000  # fences one farm may hold (422)
    max_mobs_per_tenant: int = 1_000  # mobs one farm may hold (422)
    max_devices_per_mob: int = 10_000  # collars one mob may name (422)
    max_fences_per_mob: int = 1_000  # pastures and exclusion zones one mob may name (422)
    max_batch_points: int = 100_000
    max_batch_matches: int = 1_000_000  # point-in-fence pairs one batch point query may answer (422)
    max_fixes_per_request: int = 10_000
    ingest_ack_timeout_s: float = 5.0  # ingest answers 503 when the broker has not acknowledged by then
    sse_max_per_tenant: int = 10  # live event streams one farm may hold open on one API process (429)
    sse_max_per_process: int = 500  # live event streams on one API process, all farms (429)
    rate_limit_per_s: float = 50_000.0  # requests a second per API key per process; 0 turns it off (429)
    rate_limit_burst: float = 50_000.0
    key_cache_s: float = 10.0  # a revoked key may still work this long on other API processes
    host: str = "0.0.0.0"
    port: int = 8000
    # granian's interface to the app: asgi, or rsgi (its own, cheaper: the point query answered there, the rest
    # through the ASGI app; services/api/rsgi.py)
    interface: Literal["asgi", "rsgi"] = "asgi"
    workers: int = 1  # API processes (granian workers); over 1, one scrape of /metrics answers for all of them
    # Where the processes share their metrics (workers > 1): a folder of this API's own (emptied at start), best
    # on a tmpfs; empty: a new temporary folder. python -m services.api hands it to its processes.
    metrics_dir: str = ""
    metrics_flush_s: float = Field(default=1.0, gt=0)  # a scrape sees the other processes' counts this old at most
    # The web app's background map (/app): a raster tile URL ({z}/{x}/{y}) and its attribution; empty: a plain
    # background (fences, animals and a scale still show). Satellite imagery: see the README.
    app_tiles_url: str = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
    app_tiles_attribution: str = (
        '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors'
    )
    app_tiles_max_zoom: int = 19
    # The web app drops its event stream and reconnects (with Last-Event-ID) after this long with no byte
    # from it, keep-alives included (sent every 15 s): a phone in a dead spot gets no error, only silence.
    app_stream_stall_s: float = Field(default=45.0, gt=0)

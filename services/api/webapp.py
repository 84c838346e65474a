"""The farmers' web app under ``/app``: the files ``webapp/`` builds (``npm ci && npm run build``,
run by ``./dev``'s setup) into ``services/api/static/app``, and ``/app/config.json``, the map's
background from the settings.

Bundles carry a content hash in their names and are cached for good; ``index.html`` and the
config are revalidated each time, so a new build is seen at the next load. Without a build,
``/app`` answers 503 with a problem that says how to build it (the JSON routes work regardless).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from services.api.problem import problem
from services.api.settings import Settings

BUILT = Path(__file__).parent / "static" / "app"
HASHED = re.compile(r"-[A-Z0-9]{8}\.(js|css)$")  # esbuild's [name]-[hash]: the content decides the name
NOT_BUILT = (
    "the web app is not built: run `npm ci && npm run build` in webapp/ (./dev setup does it when node and npm "
    "are installed: apt-get install nodejs npm)"
)


def app_config(settings: Settings) -> dict[str, Any]:
    """What the page reads at start: the background map's tiles (empty: a plain background), and how
    long its event stream may stay silent before the page takes it for dead and reconnects."""
    return {
        "tiles": {
            "url": settings.app_tiles_url,
            "attribution": settings.app_tiles_attribution,
            "max_zoom": settings.app_tiles_max_zoom,
        },
        "stream": {"stall_s": settings.app_stream_stall_s},
    }


def tile_origin(url: str) -> str:
    """Where the map's tiles come from, as a CSP source: scheme and host of the URL template
    (its ``{s}`` subdomain a wildcard), or nothing for no tiles."""
    if not url:
        return ""
    parts = urlsplit(url.replace("{s}", "tiles-subdomain"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ""
    host = parts.netloc.replace("tiles-subdomain", "*")
    return f"{parts.scheme}://{host}"


def content_security_policy(settings: Settings) -> str:
    """The page may load only its own files, its API and the configured tiles: nothing from a CDN
    (the browser refuses it, and the tests fail on the console error it logs)."""
    tiles = tile_origin(settings.app_tiles_url)
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self' 'unsafe-inline'",  # the map library positions its layers with inline styles
            f"img-src 'self' data: blob:{' ' + tiles if tiles else ''}",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


class AppFiles(StaticFiles):
    """StaticFiles for the built app, with cache headers, the config, and a clear 503 when unbuilt."""

    def __init__(self, settings: Settings, directory: Path = BUILT) -> None:
        super().__init__(directory=directory, html=True, check_dir=False)
        self.built = directory
        self.config = orjson.dumps(app_config(settings))
        self.csp = content_security_policy(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = self.get_path(scope)
        if path == "config.json":
            response: Response = Response(
                self.config, media_type="application/json", headers={"Cache-Control": "no-cache"}
            )
        elif not (self.built / "index.html").is_file():
            response = problem(503, NOT_BUILT, scope.get("path"))
        else:
            await super().__call__(scope, receive, send)
            return
        await response(scope, receive, send)

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code in (200, 304):
            hashed = HASHED.search(path) is not None
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable" if hashed else "no-cache"
            response.headers["X-Content-Type-Options"] = "nosniff"
            if path.endswith(".html") or path in ("", "."):
                response.headers["Content-Security-Policy"] = self.csp
        return response


def web_app(settings: Settings, directory: Path = BUILT) -> ASGIApp:
    """The app's files, compressed for browsers that take gzip (the bundles shrink to a quarter: a
    phone on a farm's slow connection loads about 150 KB, not 540 KB). Only here: never the event stream."""
    return _without_pathsend(GZipMiddleware(AppFiles(settings, directory), minimum_size=1024))


def _without_pathsend(app: ASGIApp) -> ASGIApp:
    """Hide the server's ``http.response.pathsend`` (granian offers it): a file sent by its path
    bypasses GZipMiddleware, so the bundles went uncompressed; sent as a body, they are compressed."""

    async def call(scope: Scope, receive: Receive, send: Send) -> None:
        extensions = scope.get("extensions") or {}
        if "http.response.pathsend" in extensions:
            scope = {**scope, "extensions": {k: v for k, v in extensions.items() if k != "http.response.pathsend"}}
        await app(scope, receive, send)

    return call

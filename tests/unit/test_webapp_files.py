"""The web app's files under /app, through the API's edge: cached for good when their names carry
the build's content hash, revalidated otherwise (index.html, the config); the map's background
from the settings; a clear problem when the app is not built; the JSON routes unchanged."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.api.app import create_app
from services.api.settings import Settings
from services.api.webapp import tile_origin, web_app


def edge_with(built: Path, **settings: Any) -> Any:
    """The API's edge with its /app mount pointed at ``built``."""
    edge = create_app(Settings(**settings))
    app: FastAPI = edge.app
    for route in app.routes:
        if getattr(route, "path", None) == "/app":
            route.app = web_app(Settings(**settings), built)  # type: ignore[attr-defined]
    return edge


def get(app: Any, url: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.get(url)

    return asyncio.run(go())


@pytest.fixture
def built(tmp_path: Path) -> Path:
    (tmp_path / "index.html").write_text('<script src="/app/main-AB12CD34.js"></script>')
    (tmp_path / "main-AB12CD34.js").write_text("console.log(1);\n" * 1000)
    (tmp_path / "main-AB12CD34.js.LEGAL.txt").write_text("MIT")
    return tmp_path


def test_index_is_revalidated_and_hashed_bundles_are_cached_for_good(built):
    edge = edge_with(built)
    page = get(edge, "/app/")
    assert page.status_code == 200 and "main-AB12CD34.js" in page.text
    assert page.headers["cache-control"] == "no-cache" and page.headers["content-type"].startswith("text/html")
    js = get(edge, "/app/main-AB12CD34.js")
    assert js.status_code == 200 and js.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert js.headers["content-encoding"] == "gzip" and js.text == "console.log(1);\n" * 1000
    assert get(edge, "/app/main-AB12CD34.js.LEGAL.txt").headers["cache-control"] == "no-cache"
    assert get(edge, "/app/nothing-here.js").status_code == 404
    assert get(edge, "/app").status_code in (307, 308)  # to /app/, where the page's paths resolve


def test_the_config_carries_the_background_map_from_the_settings(built):
    default = get(edge_with(built), "/app/config.json").json()["tiles"]
    assert default["url"].startswith("https://tile.openstreetmap.org/") and "OpenStreetMap" in default["attribution"]
    tiles = "https://tiles.example/{z}/{x}/{y}.jpg"
    r = get(edge_with(built, app_tiles_url=tiles, app_tiles_attribution="Example imagery"), "/app/config.json")
    assert r.headers["cache-control"] == "no-cache"
    assert r.json()["tiles"] == {"url": tiles, "attribution": "Example imagery", "max_zoom": 19}
    assert get(edge_with(built, app_tiles_url=""), "/app/config.json").json()["tiles"]["url"] == ""


def test_the_config_carries_how_long_a_silent_stream_is_trusted(built):
    assert get(edge_with(built), "/app/config.json").json()["stream"] == {"stall_s": 45.0}  # three keep-alives
    assert get(edge_with(built, app_stream_stall_s=3), "/app/config.json").json()["stream"] == {"stall_s": 3.0}


def test_an_unbuilt_app_says_how_to_build_it(tmp_path):
    r = get(edge_with(tmp_path / "missing"), "/app/")
    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
    assert "npm ci && npm run build" in r.json()["detail"]


def test_the_json_routes_are_unchanged(built):
    edge = edge_with(built)
    assert get(edge, "/healthz").json() == {"status": "ok"}
    assert not any(p.startswith("/app") for p in edge.app.openapi()["paths"])  # the app is not the API's contract


def test_the_page_may_load_only_its_own_files_and_the_tiles():
    built = Path(__file__).parents[2] / "services" / "api" / "static" / "app"
    if not (built / "index.html").is_file():
        pytest.skip("the web app is not built")
    page = get(edge_with(built), "/app/")
    csp = dict(d.strip().split(" ", 1) for d in page.headers["content-security-policy"].split(";"))
    assert csp["script-src"] == "'self'" and csp["connect-src"] == "'self'" and csp["default-src"] == "'self'"
    assert "https://tile.openstreetmap.org" in csp["img-src"].split()
    assert '<script src="/app/' in page.text and "http" not in page.text.split("<body>")[1]  # no CDN


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://tile.openstreetmap.org/{z}/{x}/{y}.png", "https://tile.openstreetmap.org"),
        ("https://{s}.tile.example.org:8443/{z}/{x}/{y}.png", "https://*.tile.example.org:8443"),
        ("", ""),
        ("/tiles/{z}/{x}/{y}.png", ""),  # the API's own origin: 'self' covers it
        ("javascript:alert(1)", ""),
    ],
)
def test_the_tiles_origin(url, origin):
    assert tile_origin(url) == origin


def test_the_first_load_is_under_a_megabyte():
    """The issue's budget: the page's first load under 1 MB of JavaScript and CSS (544 KB at this writing)."""
    built = Path(__file__).parents[2] / "services" / "api" / "static" / "app"
    if not (built / "index.html").is_file():
        pytest.skip("the web app is not built")
    index = (built / "index.html").read_text()
    loaded = [built / name for name in re.findall(r'(?:src|href)="/app/([^"]+\.(?:js|css))"', index)]
    assert len(loaded) == 2 and all(p.is_file() for p in loaded)
    assert sum(p.stat().st_size for p in loaded) < 1_000_000


def test_compressed_even_where_the_server_sends_files_by_path(built):
    """granian offers http.response.pathsend; a file sent by path skipped the gzip middleware."""
    app = web_app(Settings(), built)
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "server": ("api", 80),
        "path": "/main-AB12CD34.js",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"accept-encoding", b"gzip")],
        "extensions": {"http.response.pathsend": {}},
    }

    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if requested:
            await asyncio.sleep(3600)  # the client stays: FileResponse listens for a disconnect meanwhile
        requested = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    assert sent[0]["type"] == "http.response.start"
    assert (b"content-encoding", b"gzip") in sent[0]["headers"]
    assert "http.response.pathsend" not in [m["type"] for m in sent]

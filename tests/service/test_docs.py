"""The OpenAPI page at /docs works with no network beyond the service: Swagger UI's assets come
from the app itself, never a CDN. Checked statically (every URL the page loads is same-origin
and answers), and in a real headless Chromium whose every outside request goes to a recording
proxy that refuses it."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient

from scribe_service.app import create_app
from scribe_service.settings import Settings
from support import FakeEmbedder, FakeJudge, uvicorn_in_thread

# Operations the rendered page must list: the scoring routes a trainer calls.
OPERATIONS = ("/v1/score", "/v1/score/batch", "/get_reward")


class _Loads(HTMLParser):
    """URLs the page makes the browser fetch: script sources, stylesheets, icons."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in {"script", "img", "iframe"} and values.get("src"):
            self.urls.append(str(values["src"]))
        if tag == "link" and values.get("href"):
            self.urls.append(str(values["href"]))


def _loads(html: str) -> list[str]:
    parser = _Loads()
    parser.feed(html)
    # The spec Swagger UI fetches is named in its inline script, not in an attribute.
    return parser.urls + re.findall(r"url: '([^']+)'", html)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, embedder=FakeEmbedder(), judge_backend=FakeJudge())) as c:
        yield c


def test_docs_page_loads_only_same_origin_assets(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    urls = _loads(page.text)
    assert any(u.endswith("swagger-ui-bundle.js") for u in urls)
    assert any(u.endswith("swagger-ui.css") for u in urls)
    assert any(u.endswith("/openapi.json") for u in urls)
    for url in urls:
        absolute = urlsplit(urljoin("http://testserver/docs", url))
        assert absolute.netloc == "testserver", f"/docs loads {url} from another origin"
        asset = client.get(absolute.path)
        assert asset.status_code == 200, url
        assert asset.content, url


def test_no_page_refers_to_a_cdn(client: TestClient) -> None:
    text = client.get("/docs").text
    for host in ("cdn.jsdelivr.net", "unpkg.com", "fastapi.tiangolo.com", "fonts.googleapis"):
        assert host not in text
    # ReDoc's bundle fetches from its CDN as it renders: the page is not served.
    assert client.get("/redoc").status_code == 404


def test_spec_lists_the_scoring_operations(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in OPERATIONS:
        assert "post" in paths[path]


# --- a real browser ------------------------------------------------------------------------


class _RefusingProxy(BaseHTTPRequestHandler):
    """Stands in for the outside world: records each request sent to it and refuses it."""

    seen: list[str]

    def _refuse(self) -> None:
        type(self).seen.append(f"{self.command} {self.path}")
        self.send_response(502)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_HEAD = do_CONNECT = _refuse

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _refusing_proxy() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_RefusingProxy,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "headless Chromium not installed (Debian: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must render /docs")
        pytest.skip(message)
    return found


# Chromium's own services (component updates, network time, sign-in, safe browsing) would
# call out on their own; they are turned off or pointed at a closed loopback port, so any
# request the proxy records came from the page.
_QUIET = (
    "--headless",
    "--no-sandbox",  # root in CI
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--component-updater=url-source=http://127.0.0.1:9",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-sync",
    "--disable-breakpad",
    "--disable-client-side-phishing-detection",
    "--disable-domain-reliability",
    "--no-pings",
    "--metrics-recording-only",
    "--safebrowsing-disable-auto-update",
    "--google-base-url=http://127.0.0.1:9",
    "--gaia-url=http://127.0.0.1:9",
    "--lso-url=http://127.0.0.1:9",
    "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,OptimizationHintsFetching,"
    "OptimizationGuideModelDownloading,MediaRouter,Translate,AutofillServerCommunication,"
    "CertificateTransparencyComponentUpdater",
)


def render(chromium: str, url: str, *, proxy: str, profile: Path) -> str:
    """The page's DOM once its scripts ran, every request off loopback sent to `proxy`."""
    result = subprocess.run(
        [
            chromium,
            *_QUIET,
            f"--user-data-dir={profile}",
            f"--proxy-server={proxy}",
            # Loopback goes direct (the service); everything else, the proxy.
            "--proxy-bypass-list=127.0.0.1",
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.browser
def test_docs_render_in_chromium_with_no_outside_request(
    settings: Settings, tmp_path: Path
) -> None:
    chromium = _chromium()
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=FakeJudge())
    with uvicorn_in_thread(app) as base, _refusing_proxy() as (proxy, seen):
        dom = render(chromium, f"{base}/docs", proxy=proxy, profile=tmp_path / "profile")
    assert seen == [], f"the page reached outside the service: {seen}"
    # Swagger UI rendered the spec: one operation block per route, tagged with its path.
    for path in OPERATIONS:
        assert f'data-path="{path}"' in dom, f"{path} not listed on the rendered page"
    assert "scribe-reward" in dom

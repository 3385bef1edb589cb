"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) render in a real headless browser with no
network: Debian's Chromium, driven by Playwright, may reach the API server and nothing else.

Skipped only when ``/usr/bin/chromium`` is missing (``.ci/run`` installs it).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Milliseconds the pages get to render.
RENDER_MS = 30_000
#: Off-site fetches a page may try without depending on them: ReDoc's "API docs by Redocly"
#: badge (an image; the page renders the same without it).
DECORATIVE = {"https://cdn.redoc.ly/redoc/logo-mini.svg"}

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's Chromium is not installed (apt-get install chromium; .ci/run does)")


@pytest.fixture(scope="module")
def api(make_gateway, make_server):
    return make_server(make_gateway())


@pytest.fixture
def browser(tmp_path):
    """A page in a fresh Chromium profile whose every request off the API server is refused
    and recorded (``page.offsite``: what it needed, ``page.decorative``: the known badges),
    as are the page's script errors (``page.script_errors``)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
            args=FLAGS, viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            page.offsite, page.decorative, page.script_errors = [], [], []
            page.on("pageerror", lambda error: page.script_errors.append(str(error)))
            yield page
        finally:
            context.close()


def only_local(page, server_url: str) -> None:
    home = urlsplit(server_url).netloc

    def route(route):
        url = route.request.url
        if urlsplit(url).netloc == home or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            kind = route.request.resource_type
            (page.decorative if kind == "image" and url in DECORATIVE else page.offsite).append(
                f"{kind} {url}")
            route.abort()
    page.context.route("**/*", route)


def operations(server_url: str) -> list[tuple[str, str]]:
    """(method, path) of every operation the OpenAPI document lists."""
    spec = httpx.get(server_url + "/openapi.json", timeout=30).json()
    return [(method, path) for path, item in spec["paths"].items() for method in item]


def assert_painted(shot: Path) -> None:
    """The screenshot is a page with content: not one flat colour."""
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.shape[0] > 400 and pixels.shape[1] >= 1280
    assert pixels[..., :3].std() > 0.05, "the page is blank"


def test_swagger_ui_renders_offline(api, browser, tmp_path):
    only_local(browser, api.url)
    browser.goto(api.url + "/docs", wait_until="load")
    browser.wait_for_selector(".opblock-summary", timeout=RENDER_MS)
    expected = operations(api.url)
    blocks = browser.locator(".opblock")
    assert blocks.count() == len(expected) >= 8
    paths = [p.replace("\u200b", "") for p in
             browser.locator(".opblock-summary-path").all_inner_texts()]
    assert "/metrics" in paths and "/api/v1/data/{symbol}/{timeframe}" in paths
    assert "ktrdr API" in browser.locator(".info .title").inner_text()
    shot = tmp_path / "docs.png"
    browser.screenshot(path=str(shot), full_page=True)
    assert_painted(shot)
    assert browser.offsite == [] and browser.script_errors == []


def test_redoc_renders_offline(api, browser, tmp_path):
    only_local(browser, api.url)
    browser.goto(api.url + "/redoc", wait_until="load")
    browser.wait_for_selector("[data-section-id^='operation/']", timeout=RENDER_MS)
    sections = browser.locator("[data-section-id^='operation/']")
    assert sections.count() == len(operations(api.url))
    assert "Stored bars" in browser.locator(".api-content").inner_text()
    shot = tmp_path / "redoc.png"
    browser.screenshot(path=str(shot))
    assert_painted(shot)
    assert browser.offsite == [] and browser.script_errors == []

"""The real web page through the gateway in a real browser: it asks for the token, shows
the wake phases while the VM boots, retries by itself, and gets through once ready."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.fakes.asgi_server import serve_in_thread
from tests.fakes.compute import FakeCompute
from tests.gateway.gateway_support import TOKEN, VM, Upstream
from text2img.gateway.app import create_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def browser_page() -> Iterator[object]:
    playwright = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_page_wakes_the_vm_and_retries_until_ready(
    fake: FakeCompute, upstream: Upstream, browser_page: object
) -> None:
    from playwright.sync_api import Page, expect

    page = browser_page
    assert isinstance(page, Page)
    fake.boot_delay_s = None  # the VM boots when the test says so
    settings = fake.gateway_settings(
        TOKEN, VM, upstream_url=upstream.url, typical_wake_s=8.0, state_cache_s=0.0
    )
    with serve_in_thread(create_app(settings)) as url:
        page.goto(url + "/")
        # no token yet: the page asks for it, and nothing woke the VM
        expect(page.locator("#token-form")).to_be_visible()
        assert fake.calls["start"] == 0
        page.fill("#token-input", TOKEN)
        page.locator("#token-form").evaluate("form => form.requestSubmit()")
        # the page's first authenticated request wakes the VM; the banner says so
        expect(page.locator("#banner-text")).to_contain_text(
            "GPU サーバーを起動しています", timeout=10_000
        )
        expect(page.locator("#banner-text")).to_contain_text("秒後に自動で再試行します")
        assert fake.calls["start"] == 1
        fake.finish_boot(VM)
        # it retries by itself after Retry-After and gets through
        expect(page.locator("#model-badge")).to_be_visible(timeout=20_000)
        expect(page.locator("#model-badge")).to_contain_text("tiny")
        expect(page.locator("#banner")).to_be_hidden()
    assert fake.calls["start"] == 1

"""The web UI in a real browser (Debian chromium via Playwright) against the real service
with the tiny engine and the fake Translation server."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from api_support import AUTH, TOKEN, FakeTranslate

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not at /usr/bin/chromium"),
]


def test_japanese_prompt_to_images(live: Callable[..., str], translate_ok: FakeTranslate) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    url = live(translation="on", translate_project="demo", translate_endpoint=translate_ok.url)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1100}, locale="ja-JP")
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url)

            # the token is asked for once and kept
            page.wait_for_selector("#token-form:not([hidden])")
            page.fill("#token-input", TOKEN)
            page.click("#token-form button[type=submit]")
            page.wait_for_selector("#tiny-warning:not([hidden])")  # random weights labelled
            assert page.inner_text("#model-name") == "tiny"  # short; the rest on tap
            page.click("#model-name")
            assert "ランダム" in page.inner_text("#model-details")
            page.click("#prompt")  # a tap elsewhere folds the details away
            assert page.is_hidden("#model-details")

            # Japanese -> editable English
            page.fill("#prompt", "テディベアがバタフライで泳いでいる")
            page.click("#translate-btn")
            expect = sync_api.expect
            expect(page.locator("#english")).to_have_value(re.compile("^A teddy bear"))
            assert "ja" in page.inner_text("#detected")
            page.fill("#english", "A teddy bear swimming the butterfly stroke, watercolor")

            # generate 2 images with live progress
            page.click("#options summary")
            page.select_option("#n", "2")
            page.select_option("#size", "64x64")
            page.fill("#steps", "12")
            page.fill("#seed", "123")
            page.click("#generate-btn")
            seen: set[int] = set()
            end = time.monotonic() + 90
            while page.is_hidden("#results") or not page.query_selector_all("#grid img"):
                assert time.monotonic() < end, "no images"
                seen.add(int(page.get_attribute("#progress", "aria-valuenow") or 0))
                time.sleep(0.03)
            expect(page.locator("#progress-text")).to_have_text("完了")
            assert len({v for v in seen if 0 < v < 100}) >= 2, f"progress never moved: {seen}"

            images = page.query_selector_all("#grid img")
            assert len(images) == 2
            for img in images:
                assert page.evaluate("(el) => el.complete && el.naturalWidth", img) == 64
            links = page.query_selector_all("#grid a[download]")
            assert [a.get_attribute("download") for a in links] == [
                "text2img-123.png",
                "text2img-124.png",
            ]
            assert "watercolor" in page.inner_text("#result-prompt")  # the edited English
            assert page.inner_text("#grid .label") == "ランダムな重み"
            assert "テディベア" in page.inner_text("#gallery")
            assert page.is_hidden("#banner")
            page.screenshot(path=str(ARTIFACTS / "web-ui-desktop.png"), full_page=True)

            # reload: token and gallery are remembered
            page.reload()
            page.wait_for_selector("#gallery-box:not([hidden])")
            assert page.is_hidden("#token-form")

            # a phone-sized screen gets one column and no horizontal scrolling
            phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
            phone.goto(url)
            phone.evaluate(f"localStorage.setItem('text2img.token', '{TOKEN}')")
            phone.reload()
            phone.wait_for_selector("#model-badge:not([hidden])")
            scroll_width = phone.evaluate("document.documentElement.scrollWidth")
            assert scroll_width <= 390
            phone.screenshot(path=str(ARTIFACTS / "web-ui-phone.png"), full_page=True)

            assert errors == []
            assert all(r.startswith(url) or r.startswith(("data:", "blob:")) for r in requests)
        finally:
            browser.close()


def test_waking_and_error_banners(live: Callable[..., str], translate_ok: FakeTranslate) -> None:
    """The gateway's 503 'waking' answer shows the phase and ETA and is retried by itself."""
    sync_api = pytest.importorskip("playwright.sync_api")
    url = live(translation="on", translate_project="demo", translate_endpoint=translate_ok.url)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            page.evaluate(f"localStorage.setItem('text2img.token', '{TOKEN}')")
            waking = {"left": 1}

            def gateway(route: object) -> None:
                # what the Cloud Run gateway answers while the VM boots (DEVELOPERS.md)
                if waking["left"] > 0:
                    waking["left"] -= 1
                    route.fulfill(  # type: ignore[attr-defined]
                        status=503,
                        headers={"Retry-After": "2", "Content-Type": "application/json"},
                        body='{"error": {"type": "unavailable", "code": "waking", "message": '
                        '"starting", "phase": "starting_vm", "retry_after": 2, '
                        '"eta_seconds": 75}}',
                    )
                else:
                    route.continue_()  # type: ignore[attr-defined]

            page.route("**/v1/status", gateway)
            page.reload()
            page.wait_for_selector("#banner:not([hidden])")
            text = page.inner_text("#banner-text")
            assert "GPU サーバーを起動しています" in text
            assert "75" in text
            page.screenshot(path=str(ARTIFACTS / "web-ui-waking.png"))
            # retried by itself after Retry-After: the model badge appears, the banner goes
            page.wait_for_selector("#model-badge:not([hidden])", timeout=10_000)
            page.wait_for_selector("#banner", state="hidden")

            # a translation failure shows a clear banner
            translate_ok.fail = True
            page.fill("#prompt", "猫")
            page.click("#translate-btn")
            page.wait_for_selector("#banner:not([hidden])")
            assert "翻訳サービス（Cloud Translation）が使えません" in page.inner_text(
                "#banner-text"
            )

            # a long generation can be cancelled from the page; the GPU is freed
            translate_ok.fail = False
            page.fill("#prompt", "a very long job")
            page.click("#options summary")
            page.fill("#steps", "250")
            page.click("#generate-btn")
            sync_api.expect(page.locator("#progress-text")).to_contain_text("ステップ")
            page.click("#cancel-btn")
            sync_api.expect(page.locator("#progress-text")).to_have_text("キャンセルしました")
            end = time.monotonic() + 10  # the page's DELETE reaches the worker within seconds
            while True:
                status = httpx.get(f"{url}/v1/status", headers=AUTH, timeout=10).json()
                if (status["jobs_in_flight"], status["queue_depth"]) == (0, 0):
                    break
                assert time.monotonic() < end, status
                time.sleep(0.1)
            assert page.is_enabled("#generate-btn")
        finally:
            browser.close()

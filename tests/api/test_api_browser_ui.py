"""The web UI keeps the user's own words, speaks Japanese in its errors, keeps a gallery,
and lays out on a phone and a desktop (Debian chromium via Playwright, the real service
with the tiny engine). Screenshots go to test-artifacts/ (printed), to be looked at."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from api_support import TOKEN
from browser_support import (
    CHROMIUM,
    QUICK,
    browser,
    generate,
    opened,
    settings,
    settled_top,
    shot,
)
from PIL import Image

__all__ = ["browser"]  # a fixture: imported for pytest to find it

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not at /usr/bin/chromium"),
]


def test_japanese_top_box_and_edited_english_with_translation_off_draws_the_english(
    live: Callable[..., str], browser: Any
) -> None:
    url = live(translation="off")
    with opened(browser, url) as page:
        page.fill("#prompt", "猫が空を飛んでいる")
        assert "翻訳" in page.inner_text("#will-draw")  # it says what will happen first
        settings(page, **QUICK)
        page.click("#generate-btn")
        # no translation here: the user is sent to the English box, not to a dead end
        page.wait_for_selector("#banner:not([hidden])")
        assert "英語のプロンプト」欄に英語で書いてください" in page.inner_text("#banner-text")
        assert page.evaluate("document.activeElement.id") == "english"
        assert "英語で書いてください" in page.inner_text("#will-draw")

        page.fill("#english", "a cat flying in the sky, watercolor")
        assert "a cat flying in the sky, watercolor" in page.inner_text("#will-draw")
        with page.expect_request(
            lambda r: r.url.endswith("/v1/jobs") and r.method == "POST"
        ) as sent:
            generate(page)
        body = json.loads(sent.value.post_data or "{}")
        assert body["prompt"] == "a cat flying in the sky, watercolor"
        assert body["translate"] == "never"
        assert "watercolor" in page.inner_text("#result-prompt")
        assert page.is_hidden("#banner")
        # the results were scrolled into view: their top in the upper half, not above it
        assert -4 <= settled_top(page, "#results") < 800 / 2


ROUTED_ERRORS = [
    # (status, code, headers, a phrase of the Japanese text)
    (429, "queue_full", {"Retry-After": "7"}, "混み合っています。7 秒ほど待ってから"),
    (424, "translation_failed", {}, "翻訳サービス（Cloud Translation）が使えません"),
    (503, "gpu_out_of_memory", {}, "GPU のメモリが足りません"),
    (504, "request_timeout", {}, "時間内に終わりませんでした"),
    (429, "auth_throttled", {"Retry-After": "60"}, "間違ったトークンが続いたため"),
    (503, "start_failed", {}, "GPU サーバーを起動できませんでした"),
    (418, "something_new", {}, "エラーが発生しました（HTTP 418）"),
]


def test_errors_are_japanese_per_code_with_the_detail_folded_away(
    live: Callable[..., str], browser: Any
) -> None:
    url = live()
    answer: dict[str, Any] = {}

    def jobs(route: Any) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        english = f"the English developer text for {answer['code']}"
        route.fulfill(
            status=answer["status"],
            headers={"Content-Type": "application/json", **answer["headers"]},
            body=json.dumps(
                {"error": {"message": english, "type": "x", "param": None, "code": answer["code"]}}
            ),
        )

    with opened(browser, url) as page:
        page.route("**/v1/jobs", jobs)
        page.fill("#prompt", "a cat")
        for status, code, headers, phrase in ROUTED_ERRORS:
            answer.update(status=status, code=code, headers=headers)
            page.click("#generate-btn")
            page.wait_for_selector("#banner:not([hidden])")
            text = page.inner_text("#banner-text")
            assert phrase in text, (code, text)
            assert "English developer text" not in text
            # the technical detail is there, folded away until asked for
            assert page.is_visible("#banner-details summary")
            assert not page.is_visible("#banner-detail")
            page.click("#banner-details summary")
            assert f"the English developer text for {code}" in page.inner_text("#banner-detail")
            assert code in page.inner_text("#banner-detail")
            page.click("#banner-close")
        page.set_viewport_size({"width": 390, "height": 844})
        page.click("#generate-btn")
        page.wait_for_selector("#banner:not([hidden])")
        box = page.locator("#banner").bounding_box()
        assert box["x"] >= 8, box  # not edge to edge
        assert box["x"] + box["width"] <= 390 - 8, box
        shot(page, "web-ui-error-phone.png")


def test_a_token_protected_page_asks_calmly_first(live: Callable[..., str], browser: Any) -> None:
    url = live()
    with opened(browser, url, token=None) as page:
        page.wait_for_selector("#token-form:not([hidden])")
        time.sleep(0.3)  # nothing else arrives later either
        assert page.is_hidden("#banner")  # no error before the user did anything
        assert "トークン" in page.inner_text("#token-help")
        page.fill("#token-input", "wrong-token-0123456789abcdef")
        page.click("#token-form button[type=submit]")
        page.wait_for_selector("#banner:not([hidden])")
        assert "トークンが違います" in page.inner_text("#banner-text")
        assert "pulumi stack output token --show-secrets" in page.inner_text("#banner-text")
        page.fill("#token-input", TOKEN)
        page.click("#token-form button[type=submit]")
        page.wait_for_selector("#model-badge:not([hidden])")
        assert page.is_hidden("#banner")
        assert page.is_hidden("#token-form")


def test_the_gallery_survives_a_reload_and_gives_everything_back(
    live: Callable[..., str], browser: Any, tmp_path: Path
) -> None:
    url = live()
    context_page = opened(browser, url)
    with context_page as page:
        page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
        page.fill("#prompt", "a lighthouse at dusk")
        settings(page, n="2", size="64x64", steps="3", seed="500")
        generate(page)
        page.click("#grid .copy-seed >> nth=1")
        assert page.evaluate("navigator.clipboard.readText()") == "501"

        page.reload()
        page.wait_for_selector("#gallery-box:not([hidden])")
        entries = page.locator("#gallery .entry")
        assert entries.count() == 1
        thumbs = page.locator("#gallery .entry img")
        assert thumbs.count() == 2
        page.wait_for_function(
            "() => [...document.querySelectorAll('#gallery img')].every(i => i.naturalWidth == 64)"
        )
        assert "a lighthouse at dusk" in entries.first.inner_text()

        # "use these settings again" fills in everything, with the seed that reproduces it
        page.fill("#prompt", "")
        page.click("#gallery .reuse")
        assert page.input_value("#prompt") == "a lighthouse at dusk"
        assert page.input_value("#seed") == "500"
        assert page.input_value("#n") == "2"
        assert page.input_value("#size") == "64x64"
        assert page.input_value("#steps") == "3"

        # every image of the job in one ZIP
        with page.expect_download() as download:
            page.click("#gallery .zip")
        path = tmp_path / "all.zip"
        download.value.save_as(path)
        with zipfile.ZipFile(path) as archive:
            assert archive.testzip() is None  # CRCs check out
            assert archive.namelist() == ["text2img-500.png", "text2img-501.png"]
            for name in archive.namelist():
                assert Image.open(io.BytesIO(archive.read(name))).size == (64, 64)


def test_layout_on_a_phone_and_a_desktop(live: Callable[..., str], browser: Any) -> None:
    url = live()
    for width, height, name in ((1280, 800, "desktop"), (390, 844, "phone")):
        with opened(browser, url, width=width, height=height) as page:
            page.fill("#prompt", "a red bicycle leaning on a wall " * 3)
            assert "/ 1000 文字" in page.inner_text("#prompt-count")
            settings(page, n="4", size="64x64", steps="2")
            generate(page)
            # scrolled to the results: their top in the upper half (at the top where the
            # page is long enough), never scrolled past
            top = settled_top(page, "#results")
            assert -4 <= top < height / 2, top
            if width < 1000:  # four full-width tiles below: room to put them at the top
                assert abs(top) <= 4, top
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            tile = page.locator("#grid .tile").first.bounding_box()
            assert tile["width"] >= (240 if width >= 1000 else 300), tile
            for link in page.locator("#grid .bar a, #grid .bar button").all():
                # one line each: no "ダウンロ / ード"
                assert link.evaluate("e => e.getClientRects().length") == 1
                box = link.bounding_box()
                assert box["height"] < 30, box
            shot(page, f"web-ui-{name}.png")
            # a 5000-character paste is not cut silently: the counter says so
            page.fill("#prompt", "あ" * 5000)
            assert "4000 文字多すぎます" in page.inner_text("#prompt-count")
            assert page.is_disabled("#generate-btn")


def test_without_a_job_api_the_page_streams_the_generation(
    live: Callable[..., str], browser: Any
) -> None:
    """The Cloud Run backend serves no /v1/jobs (a follow-up may reach another instance):
    the page falls back to one `stream: true` request and shows the same results."""
    url = live(job_api=False)
    with opened(browser, url) as page:
        page.fill("#prompt", "a red cube")
        settings(page, n="2", size="64x64", steps="2", seed="40")
        with page.expect_request(
            lambda r: r.url.endswith("/v1/images/generations") and r.method == "POST"
        ) as sent:
            generate(page)
        body = json.loads(sent.value.post_data or "{}")
        assert body["stream"] is True
        assert body["prompt"] == "a red cube"
        assert page.locator("#grid img").count() == 2
        assert page.is_hidden("#banner")
        page.wait_for_selector("#gallery-box:not([hidden])")
        assert page.locator("#gallery .entry").count() == 1

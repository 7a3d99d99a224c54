"""What the page knows at load and how it says it (Debian chromium via Playwright, the real
service with the tiny engine): translation status from GET /v1/models, a short model badge,
token help for both homes of the token, option and stage labels served by the model, and
the note on a cut prompt. Screenshots at 1280x800 and 390x844 go to test-artifacts/."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from api_support import TOKEN, FakeTranslate
from browser_support import CHROMIUM, QUICK, browser, generate, opened, settings, shot

__all__ = ["browser"]  # a fixture: imported for pytest to find it

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not at /usr/bin/chromium"),
]

PHONE = {"width": 390, "height": 844}


def requests_to(page: Any, path: str) -> list[str]:
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.method) if r.url.endswith(path) else None)
    return seen


@pytest.mark.parametrize("translation", ["off", "unconfigured"])
def test_the_page_knows_at_load_that_it_cannot_translate(
    live: Callable[..., str], browser: Any, translation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if translation == "unconfigured":  # on, but no credentials: known at start-up
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/adc.json")
        url = live(translation="on", translate_project="")
    else:
        url = live(translation="off")
    for size, name in (({"width": 1280, "height": 800}, "desktop"), (PHONE, "phone")):
        with opened(browser, url, **size) as page:
            translations = requests_to(page, "/v1/translations")
            page.wait_for_selector("#translation-note:not([hidden])")
            button = page.locator("#translate-btn")
            assert button.is_disabled()
            assert button.inner_text() == "翻訳は使えません"
            note = page.inner_text("#translation-note-text")
            assert note == "このサーバーでは翻訳を使えません。英語で書けば、そのまま描きます。"
            assert page.is_hidden("#banner")  # said once, calmly: not an error banner
            assert page.inner_text("#prompt-label") == "描きたいもの（英語で）"
            # the server's reason, folded away (English, for the operator)
            page.click("#translation-note-details summary")
            reason = page.inner_text("#translation-note-detail")
            expect = "TEXT2IMG_TRANSLATION=off" if translation == "off" else "application-default"
            assert expect in reason
            # the English box is empty and its hint cannot pass for a translation
            assert page.input_value("#english") == ""
            hint = page.get_attribute("#english", "placeholder") or ""
            assert hint.startswith("（空欄）")
            assert not any(c.isascii() and c.isalpha() for c in hint)
            shot(page, f"web-ui-no-translation-{translation}-{name}.png")

            # Japanese on top: the page says what to do without a request that can only fail
            page.fill("#prompt", "猫が空を飛んでいる")
            assert "英語で書いてください" in page.inner_text("#will-draw")
            page.click("#generate-btn")
            page.wait_for_selector("#banner:not([hidden])")
            assert "英語のプロンプト」欄に英語で書いてください" in page.inner_text("#banner-text")
            assert page.evaluate("document.activeElement.id") == "english"
            assert translations == []
            # English is drawn as written
            page.fill("#english", "a cat flying in the sky")
            settings(page, **QUICK)
            generate(page)
            assert "a cat flying in the sky" in page.inner_text("#result-prompt")
            assert translations == []


def test_the_translate_button_works_where_translation_does(
    live: Callable[..., str], browser: Any, translate_ok: FakeTranslate
) -> None:
    url = live(translation="on", translate_project="demo", translate_endpoint=translate_ok.url)
    with opened(browser, url) as page:
        assert page.is_hidden("#translation-note")
        assert page.is_enabled("#translate-btn")
        assert page.inner_text("#translate-btn") == "英語に翻訳"
        assert page.inner_text("#prompt-label") == "描きたいもの（日本語でも英語でも）"
        hint = page.get_attribute("#english", "placeholder") or ""
        assert hint.startswith("（空欄）翻訳するとここに英文が入ります")
        page.fill("#prompt", "赤いりんご")
        page.click("#translate-btn")
        page.wait_for_function("() => document.getElementById('english').value === 'a red apple'")
        assert page.is_enabled("#translate-btn")


def test_the_model_badge_is_one_short_line_with_details_on_tap(
    live: Callable[..., str], browser: Any
) -> None:
    url = live()
    with opened(browser, url, **PHONE) as page:
        name = page.locator("#model-name")
        assert name.inner_text() == "tiny"
        assert name.evaluate("e => e.getClientRects().length") == 1
        assert name.bounding_box()["height"] < 32
        # the whole header is one row on a 390 px phone
        middles = page.evaluate(
            "[...document.querySelectorAll('.top > :not([hidden])')]"
            ".map(e => { const r = e.getBoundingClientRect(); return r.top + r.height / 2; })"
        )
        assert len(middles) == 3, middles
        assert max(middles) - min(middles) < 12, middles
        assert page.get_attribute("#model-name", "title") == page.evaluate(
            "fetch('/v1/models', {headers: {Authorization: 'Bearer ' +"
            " localStorage.getItem('text2img.token')}}).then(r => r.json())"
            ".then(m => m.data[0].title)"
        )  # hover: the full title
        assert page.is_hidden("#model-details")
        name.click()
        details = page.inner_text("#model-details")
        assert "ランダム" in details
        assert "64×64" in details
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        shot(page, "web-ui-badge-open-phone.png")
        page.click("h1")
        assert page.is_hidden("#model-details")
        # the noise warning says "random weights" once, in Japanese only
        warning = page.inner_text("#tiny-warning")
        assert warning.count("ランダム") == 1
        assert "random" not in warning


def test_token_help_names_both_homes_and_banners_show_code_not_backticks(
    live: Callable[..., str], browser: Any
) -> None:
    url = live()
    with opened(browser, url, token=None, **PHONE) as page:
        page.wait_for_selector("#token-form:not([hidden])")
        where = page.inner_text("#token-where")
        for needle in ("TEXT2IMG_API_TOKEN", "make serve", "pulumi stack output token"):
            assert needle in where
        assert "`" not in where
        shot(page, "web-ui-token-phone.png")
        page.fill("#token-input", "wrong-token-0123456789abcdef")
        page.click("#token-form button[type=submit]")
        page.wait_for_selector("#banner:not([hidden])")
        text = page.inner_text("#banner-text")
        assert "`" not in text
        codes = page.locator("#banner-text code").all_inner_texts()
        assert codes == ["TEXT2IMG_API_TOKEN", "pulumi stack output token --show-secrets"]
        shot(page, "web-ui-wrong-token-phone.png")


def test_labels_and_stages_come_from_the_model(live: Callable[..., str], browser: Any) -> None:
    """A model whose /v1/models entry brings its own labels, a new option and stage names:
    the page shows them with no change to static/."""
    url = live()

    def models(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        entry = body["data"][0]
        entry["options"]["steps"]["label"] = "描画の歩数"
        entry["options"]["strength"] = {
            "default": 0.5, "minimum": 0.0, "maximum": 1.0, "description": "new", "label": "強さ",
        }  # fmt: skip
        entry["options"]["secret_knob"] = {"default": 1, "description": "no label: no control"}
        entry["stages"] = {"base": "下描き", "upsample": "仕上げ"}
        route.fulfill(response=response, body=json.dumps(body))

    with opened(browser, url, token=None) as page:
        page.route("**/v1/models", models)
        page.evaluate("t => localStorage.setItem('text2img.token', t)", TOKEN)
        page.reload()
        page.wait_for_selector("#model-badge:not([hidden])")
        settings(page)  # opens the options
        labels = page.locator("#grid-options .model-option").all_inner_texts()
        assert any(t.startswith("描画の歩数") for t in labels), labels
        assert any(t.startswith("強さ") for t in labels), labels
        assert page.locator("[data-option=secret_knob]").count() == 0
        assert page.get_attribute("#strength", "step") == "any"
        assert page.get_attribute("#steps", "step") == "1"
        # every progress line the page shows while it draws
        page.evaluate(
            "window.__seen = []; new MutationObserver(() => window.__seen.push("
            "document.getElementById('progress-text').textContent)).observe("
            "document.getElementById('progress-text'), {childList: true, characterData: true,"
            " subtree: true})"
        )
        page.fill("#prompt", "a lighthouse")
        settings(page, n="1", size="256x256", steps="2")
        page.fill("#upsample-steps", "2")
        generate(page)
        seen = " | ".join(page.evaluate("window.__seen"))
        assert "下描き" in seen, seen
        assert "仕上げ" in seen, seen
        assert "ベース" not in seen, seen


def test_a_cut_prompt_is_noted_under_the_result(live: Callable[..., str], browser: Any) -> None:
    url = live()

    def job(route: Any) -> None:
        if route.request.method != "GET" or route.request.url.endswith("/events"):
            route.continue_()
            return
        response = route.fetch()
        body = response.json()
        for item in body.get("data") or []:
            item["prompt_truncated"] = True
        route.fulfill(response=response, body=json.dumps(body))

    with opened(browser, url) as page:
        page.fill("#prompt", "a lighthouse")
        settings(page, **QUICK)
        generate(page)
        assert page.is_hidden("#result-note")  # a prompt that fit says nothing
        page.route("**/v1/jobs/job*", job)
        generate(page)
        page.wait_for_selector("#result-note:not([hidden])")
        assert "切って描きました" in page.inner_text("#result-note")
        shot(page, "web-ui-truncated-desktop.png")

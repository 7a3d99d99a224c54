"""Translators through the real google-cloud-translate client (REST, AnonymousCredentials)
against the local fake Translation server."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from api_support import AUTH, FAST64, FakeTranslate, make_settings
from fastapi.testclient import TestClient
from google.auth.credentials import AnonymousCredentials

from text2img.translate import (
    CloudTranslator,
    PassThroughTranslator,
    TranslationError,
    TranslationRefused,
    UnconfiguredTranslator,
    is_latin_text,
    make_translator,
    needs_translation,
)


def cloud(fake: FakeTranslate, **kwargs: object) -> CloudTranslator:
    return CloudTranslator(
        "demo-project", endpoint=fake.url, credentials=AnonymousCredentials(), **kwargs
    )  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "latin"),
    [
        ("a teddy bear", True),
        ("Crème brûlée, 2 pieces!", True),
        ("ＡＢＣ full width", True),
        ("🐻 + 🦋 = ?", True),
        ("テディベア", False),
        ("猫 cat", False),
        ("медведь", False),
        ("", True),
    ],
)
def test_latin_detection(text: str, latin: bool) -> None:
    assert is_latin_text(text) is latin


def test_japanese_is_translated_with_the_v3_request_shape(translate_ok: FakeTranslate) -> None:
    result = cloud(translate_ok).translate("テディベアがバタフライで泳いでいる")
    assert result.text == "A teddy bear swimming the butterfly stroke"
    assert result.detected_language == "ja"
    assert result.translated
    assert translate_ok.paths == ["/v3/projects/demo-project/locations/global:translateText"]
    sent = translate_ok.requests[0]
    assert sent["contents"] == ["テディベアがバタフライで泳いでいる"]
    assert sent["mimeType"] == "text/plain"
    assert sent["targetLanguageCode"] == "en"
    assert "sourceLanguageCode" not in sent  # the API detects the language


def test_auto_skips_the_api_for_latin_text_and_always_calls_it(
    translate_ok: FakeTranslate,
) -> None:
    translator = cloud(translate_ok)
    result = translator.translate("a red apple", "auto")
    assert (result.text, result.translated) == ("a red apple", False)
    assert translator.api_calls == 0
    result = translator.translate("une pomme rouge", "always")
    assert result.translated
    assert translator.api_calls == 1


def test_results_are_cached(translate_ok: FakeTranslate) -> None:
    translator = cloud(translate_ok, cache_size=2)
    for _ in range(3):
        assert translator.translate("赤いりんご").text == "a red apple"
    assert len(translate_ok.requests) == 1
    translator.translate("猫")
    translator.translate("テディベアがバタフライで泳いでいる")  # evicts 赤いりんご (LRU)
    translator.translate("赤いりんご")
    assert len(translate_ok.requests) == 4


def test_api_failure_is_a_clear_error_never_a_pass_through(translate_ok: FakeTranslate) -> None:
    translate_ok.fail = True
    with pytest.raises(TranslationError, match="Cloud Translation failed"):
        cloud(translate_ok).translate("猫")


def test_unreachable_endpoint_is_a_clear_error() -> None:
    translator = CloudTranslator(
        "p", endpoint="http://127.0.0.1:9", timeout_s=2, credentials=AnonymousCredentials()
    )
    with pytest.raises(TranslationError, match="Cloud Translation"):
        translator.translate("猫")


def test_never_refuses_non_latin_text(translate_ok: FakeTranslate) -> None:
    with pytest.raises(TranslationRefused, match="translate is 'never'"):
        cloud(translate_ok).translate("猫", "never")
    assert translate_ok.requests == []


def test_pass_through_translator() -> None:
    t = PassThroughTranslator()
    assert t.translate("a cat").text == "a cat"
    with pytest.raises(TranslationRefused, match="translation is off"):
        t.translate("猫", "auto")
    with pytest.raises(TranslationRefused, match="translation is off"):
        t.translate("猫", "always")
    # text that needs no translation is drawn as written, even when translation was asked for
    for mode in ("auto", "always", "never"):
        result = t.translate("Crème brûlée, 2 pieces!", mode)  # type: ignore[arg-type]
        assert (result.text, result.translated) == ("Crème brûlée, 2 pieces!", False)
    assert (t.available, "TEXT2IMG_TRANSLATION=off" in t.message) == (False, True)


def test_make_translator_uses_settings(translate_ok: FakeTranslate) -> None:
    assert isinstance(make_translator(make_settings(translation="off")), PassThroughTranslator)
    t = make_translator(
        make_settings(
            translation="on", translate_project="demo-project", translate_endpoint=translate_ok.url
        )
    )
    assert isinstance(t, CloudTranslator)
    assert t.translate("猫").text == "cat"


def test_unconfigured_translation_says_what_to_do() -> None:
    t = UnconfiguredTranslator("no project")
    for mode in ("auto", "always", "never"):
        assert t.translate("a cat", mode).text == "a cat"  # type: ignore[arg-type]
    with pytest.raises(TranslationError, match="TEXT2IMG_TRANSLATE_PROJECT"):
        t.translate("猫")
    with pytest.raises(TranslationError, match="TEXT2IMG_TRANSLATE_PROJECT"):
        t.translate("a cat 猫", "always")  # one letter outside Latin is enough
    with pytest.raises(TranslationRefused, match="translate is 'never'"):
        t.translate("猫", "never")
    assert not t.available
    assert "no project" in t.message
    assert "TEXT2IMG_TRANSLATE_PROJECT" in t.message


@pytest.mark.parametrize(
    ("text", "needed"),
    [
        ("a teddy bear", False),
        ("ＡＢＣ 123 🐻", False),
        ("Ελληνικά", True),
        ("한국어", True),
        ("中文", True),
        ("ｶﾀｶﾅ", True),  # half-width katakana
        ("bear ー", True),  # U+30FC, the long-vowel mark, is a letter (Lm) outside Latin
    ],
)
def test_needs_translation_is_any_letter_outside_latin(text: str, needed: bool) -> None:
    assert needs_translation(text) is needed


def test_missing_credentials_leave_english_working(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/adc.json")
    t = make_translator(make_settings(translation="on", translate_project="demo-project"))
    assert isinstance(t, UnconfiguredTranslator)
    assert t.translate("a cat").text == "a cat"
    with pytest.raises(TranslationError, match="application-default login"):
        t.translate("猫")


# -- over HTTP: POST /v1/translations, GET /v1/models, image generation ------------------------


@pytest.fixture
def no_adc(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Application Default Credentials: translation on, but not set up."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/adc.json")


@pytest.mark.parametrize("translation", ["on", "off"])
def test_english_comes_back_unchanged_where_translation_is_unavailable(
    make_client: Callable[..., TestClient], no_adc: None, translation: str
) -> None:
    client = make_client(translation=translation, translate_project="")
    for body in ({"text": "A red apple"}, {"text": "A red apple", "mode": "always"}):
        r = client.post("/v1/translations", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "text": "A red apple", "detected_language": None, "translated": False,
            "needs_translation": False,
        }  # fmt: skip
    r = client.post("/v1/translations", json={"text": "赤いりんご"}, headers=AUTH)
    assert r.status_code == (424 if translation == "on" else 400)
    # image generation follows the same rule: English with translate 'always' is drawn
    r = client.post(
        "/v1/images/generations",
        json={"prompt": "a red apple", "translate": "always", "n": 1, **FAST64},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["revised_prompt"] == "a red apple"
    model = client.get("/v1/models", headers=AUTH).json()["data"][0]
    assert model["translation"]["available"] is False
    expected = "TEXT2IMG_TRANSLATE_PROJECT" if translation == "on" else "TEXT2IMG_TRANSLATION=off"
    assert expected in model["translation"]["message"]


def test_configured_translation_is_announced_and_still_asked_when_always(
    make_client: Callable[..., TestClient], translate_ok: FakeTranslate
) -> None:
    client = make_client(
        translation="on", translate_project="demo", translate_endpoint=translate_ok.url
    )
    model = client.get("/v1/models", headers=AUTH).json()["data"][0]
    assert model["translation"]["available"] is True
    assert "Cloud Translation" in model["translation"]["message"]
    r = client.post("/v1/translations", json={"text": "赤いりんご"}, headers=AUTH)
    assert r.json() == {
        "text": "a red apple", "detected_language": "ja", "translated": True,
        "needs_translation": True,
    }  # fmt: skip
    # 'always' (the default) still asks the API for Latin text (French is Latin too)
    r = client.post("/v1/translations", json={"text": "a cat"}, headers=AUTH)
    assert (r.json()["translated"], r.json()["needs_translation"]) == (True, False)
    assert len(translate_ok.requests) == 2
    r = client.post("/v1/translations", json={"text": "a cat", "mode": "auto"}, headers=AUTH)
    assert r.json()["translated"] is False
    assert len(translate_ok.requests) == 2

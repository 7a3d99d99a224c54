"""Translators through the real google-cloud-translate client (REST, AnonymousCredentials)
against the local fake Translation server."""

from __future__ import annotations

import pytest
from api_support import FakeTranslate, make_settings
from google.auth.credentials import AnonymousCredentials

from text2img.translate import (
    CloudTranslator,
    PassThroughTranslator,
    TranslationError,
    TranslationRefused,
    UnconfiguredTranslator,
    is_latin_text,
    make_translator,
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


def test_a_403_before_the_first_success_is_waited_out(
    translate_ok: FakeTranslate, caplog: pytest.LogCaptureFixture
) -> None:
    translate_ok.denials = 2  # the grant applies after two refusals
    translator = cloud(translate_ok, iam_wait_s=30, iam_first_delay_s=0.05)
    with caplog.at_level("WARNING", logger="text2img.translate"):
        assert translator.translate("猫").text == "cat"
    assert translator.api_calls == 3
    waits = [r.getMessage() for r in caplog.records if "HTTP 403" in r.getMessage()]
    assert len(waits) == 2  # each wait is logged
    # once it has worked, a 403 is a real refusal: no more waiting
    translate_ok.denials = 1
    with pytest.raises(TranslationError, match=r"roles/cloudtranslate\.user"):
        translator.translate("赤いりんご")
    assert translator.api_calls == 4


def test_a_403_that_outlasts_the_wait_gives_up_naming_the_role(
    translate_ok: FakeTranslate,
) -> None:
    translate_ok.denials = 10**6
    translator = cloud(translate_ok, iam_wait_s=0.3, iam_first_delay_s=0.05)
    with pytest.raises(TranslationError, match=r"roles/cloudtranslate\.user"):
        translator.translate("猫")
    assert translator.api_calls >= 3  # it retried before giving up


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
        t.translate("a cat", "always")


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
    assert t.translate("a cat").text == "a cat"
    with pytest.raises(TranslationError, match="TEXT2IMG_TRANSLATE_PROJECT"):
        t.translate("猫")


def test_missing_credentials_leave_english_working(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/adc.json")
    t = make_translator(make_settings(translation="on", translate_project="demo-project"))
    assert isinstance(t, UnconfiguredTranslator)
    assert t.translate("a cat").text == "a cat"
    with pytest.raises(TranslationError, match="application-default login"):
        t.translate("猫")

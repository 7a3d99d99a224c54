"""`text2img generate` with a Japanese prompt: translated with the service's own settings
and translator (fake Cloud Translation server), or refused with the API's own message."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from api_support import AUTH, FakeTranslate

from text2img.cli import main

QUICK = ["--model", "tiny", "--size", "64", "--base-steps", "1", "--seed", "1"]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("TEXT2IMG_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no .env from the developer's checkout
    return monkeypatch


def test_japanese_is_translated_as_the_service_does(
    clean_env: pytest.MonkeyPatch, translate_ok: FakeTranslate, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    clean_env.setenv("TEXT2IMG_TRANSLATE_PROJECT", "demo")
    clean_env.setenv("TEXT2IMG_TRANSLATE_ENDPOINT", translate_ok.url)
    assert main(["generate", "赤いりんご", *QUICK, "-o", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "translated to English: a red apple" in captured.err
    assert (tmp_path / "out" / "a-red-apple_seed1.png").is_file()  # named after the English
    assert translate_ok.requests[0]["contents"] == ["赤いりんご"]
    assert translate_ok.paths == ["/v3/projects/demo/locations/global:translateText"]
    # English goes straight through, without asking the Translation API
    assert main(["generate", "a red apple", *QUICK, "-o", str(tmp_path / "out")]) == 0
    assert len(translate_ok.requests) == 1


def test_translation_off_refuses_with_the_api_message(
    clean_env: pytest.MonkeyPatch, make_client: Callable[..., Any], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    api = make_client(translation="off").post(
        "/v1/images/generations", json={"prompt": "猫", "size": "64x64"}, headers=AUTH
    )
    assert api.status_code == 400
    message = api.json()["error"]["message"]
    clean_env.setenv("TEXT2IMG_TRANSLATION", "off")
    assert main(["generate", "猫", *QUICK, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything was loaded or written


def test_a_translation_failure_draws_nothing(
    clean_env: pytest.MonkeyPatch, translate_ok: FakeTranslate, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    clean_env.setenv("TEXT2IMG_TRANSLATE_PROJECT", "demo")
    clean_env.setenv("TEXT2IMG_TRANSLATE_ENDPOINT", translate_ok.url)
    translate_ok.fail = True
    assert main(["generate", "猫", *QUICK, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Cloud Translation failed" in err
    assert not (tmp_path / "out").exists()  # refused before anything was loaded or written

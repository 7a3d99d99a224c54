"""`text2img generate` end to end with the tiny model (real engine, CPU)."""

from __future__ import annotations

import pytest
from PIL import Image

from text2img.cli import main
from text2img.engines.glide.spec import GLIDE


def test_generate_tiny_writes_pngs_and_a_grid(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "generate",
            "a corgi in a red hat",
            "-n",
            "2",
            "--seed",
            "5",
            "-o",
            str(out),
            "--model",
            "tiny",
            "--size",
            "64",
            "--base-steps",
            "3",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "a-corgi-in-a-red-hat_grid.png",
        "a-corgi-in-a-red-hat_seed5.png",
        "a-corgi-in-a-red-hat_seed6.png",
    ]
    with Image.open(out / "a-corgi-in-a-red-hat_seed5.png") as image:
        assert image.size == (64, 64)
        assert image.mode == "RGB"
    with Image.open(out / "a-corgi-in-a-red-hat_grid.png") as grid:
        assert grid.size == (128, 64)
    assert "3 model calls per image" in captured.out
    assert "RANDOM WEIGHTS" in captured.out
    assert "RANDOM WEIGHTS" in captured.err
    assert "base: 3 steps done (100%)" in captured.err


def test_generate_bad_input_is_a_one_line_error(tmp_path, capsys):
    assert main(["generate", "x", "--model", "tiny", "--base-steps", "0", "-o", str(tmp_path)]) == 2
    assert "--steps: steps must be from 1 to 250" in capsys.readouterr().err
    assert main(["generate", "  ", "--model", "tiny", "-o", str(tmp_path)]) == 2
    assert "prompt is empty" in capsys.readouterr().err
    code = main(["generate", "x", "--cache-dir", str(tmp_path / "none"), "-o", str(tmp_path)])
    assert code == 2
    assert "text2img download" in capsys.readouterr().err


def test_help_states_the_default_models_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    d = GLIDE.settings()
    assert f"(default {d.base_sampler} for glide" in text
    assert f"(default {d.base_steps} for glide" in text
    assert f"(default {d.upsample_steps} for glide" in text
    assert f"(default {d.guidance_scale} for glide" in text


def test_translation_advice_is_given_once(tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    monkeypatch.setenv("TEXT2IMG_TRANSLATION", "on")
    monkeypatch.delenv("TEXT2IMG_TRANSLATE_PROJECT", raising=False)
    monkeypatch.delenv("TEXT2IMG_TRANSLATE_ENDPOINT", raising=False)
    assert main(["generate", "赤いりんご", "--model", "tiny", "-o", str(tmp_path)]) == 2
    advice = "gcloud auth application-default login"
    assert capsys.readouterr().err.count(advice) == 1
    assert [r.getMessage() for r in caplog.records if advice in r.getMessage()] == []

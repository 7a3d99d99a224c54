"""The SDXL specs without torch: sizes, OpenAI aliases, options, licence."""

from __future__ import annotations

import subprocess
import sys

import pytest

from text2img.engines.base import InvalidSetting, parse_size
from text2img.engines.sdxl.spec import NATIVE_SIZES, SDXL_LIGHTNING, TINY_SDXL


def test_native_sizes_are_sdxl_training_buckets() -> None:
    for size in NATIVE_SIZES:
        w, h = parse_size(size)
        assert w % 64 == 0
        assert h % 64 == 0
        assert 0.9 < w * h / 1024**2 < 1.05  # about one megapixel each
    assert SDXL_LIGHTNING.default_size == "1024x1024"


@pytest.mark.parametrize(
    ("asked", "drawn"),
    [("1024x1024", "1024x1024"), ("1536x1024", "1216x832"), ("1024x1536", "832x1216"),
     ("auto", "1024x1024"), (None, "1024x1024")],
)  # fmt: skip
def test_openai_sizes_draw_the_nearest_native_size(asked: str | None, drawn: str) -> None:
    settings = SDXL_LIGHTNING.settings(size=asked)
    assert f"{settings.width}x{settings.height}" == drawn


def test_unknown_size_and_glide_only_fields_are_refused_by_name() -> None:
    with pytest.raises(InvalidSetting) as err:
        SDXL_LIGHTNING.settings(size="256x256")
    assert (err.value.param, err.value.code) == ("size", "unsupported_size")
    with pytest.raises(InvalidSetting) as err:
        SDXL_LIGHTNING.settings(upsample_steps=10)
    assert (err.value.param, err.value.code) == ("upsample_steps", "unsupported_parameter")
    with pytest.raises(InvalidSetting) as err:
        SDXL_LIGHTNING.settings(guidance_scale=5)
    assert err.value.param == "guidance_scale"


def test_settings_are_hashable_and_batch_only_when_equal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEXT2IMG_SDXL_STEPS", "2,4,8")
    a = SDXL_LIGHTNING.settings(size="1536x1024", steps=4)
    b = SDXL_LIGHTNING.settings(size="1216x832")
    assert a == b
    assert len({a, b, SDXL_LIGHTNING.settings(steps=8)}) == 2


def test_the_weights_key_is_the_step_count_each_unet_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the queue lets requests for the loaded UNet go first (api.batching): two sizes at
    # 4 steps share one UNet, 8 steps needs another; tiny-sdxl and GLIDE never swap
    from text2img.engines.registry import get_spec

    monkeypatch.setenv("TEXT2IMG_SDXL_STEPS", "2,4,8")
    key = SDXL_LIGHTNING.weights_key
    assert key(SDXL_LIGHTNING.settings(size="1216x832", steps=4)) == 4
    assert key(SDXL_LIGHTNING.settings(size="1024x1024", steps=4)) == 4
    assert key(SDXL_LIGHTNING.settings(steps=8)) == 8
    assert key(SDXL_LIGHTNING.settings(steps=2)) == 2
    assert TINY_SDXL.weights_key(TINY_SDXL.settings(steps=8)) is None
    glide = get_spec("glide")
    assert glide.weights_key(glide.settings()) is None


def test_public_view_names_licence_and_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEXT2IMG_SDXL_STEPS", "2,4,8")
    public = SDXL_LIGHTNING.public()
    assert "Open RAIL++-M" in public["licence"]
    assert "MIT" in public["licence"]
    assert public["options"]["steps"]["choices"] == [2, 4, 8]


def test_by_default_only_4_steps_are_served_and_downloaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from text2img.engines.sdxl import files
    from text2img.engines.sdxl.spec import STEPS_ENV, download_bytes_for, enabled_steps
    from text2img.errors import UserError

    monkeypatch.delenv(STEPS_ENV, raising=False)
    assert enabled_steps() == (4,)
    assert SDXL_LIGHTNING.public()["options"]["steps"]["choices"] == [4]
    with pytest.raises(InvalidSetting) as err:
        SDXL_LIGHTNING.settings(steps=8)
    assert err.value.param == "steps"
    assert f"{STEPS_ENV}=2,4,8" in str(err.value)
    assert TINY_SDXL.settings(steps=8).steps == 8  # the tiny twin has one UNet for all
    unets = [f.path for f in files.wanted(enabled_steps()) if f.part == "unet"]
    assert unets == ["sdxl_lightning_4step_unet.safetensors"]
    # the disk the infra sizes: one 5.1 GB UNet by default, three when 2 and 8 are served
    assert SDXL_LIGHTNING.download_bytes == download_bytes_for((4,)) < 7.2e9
    assert download_bytes_for((2, 4, 8)) - download_bytes_for((4,)) == 2 * 5_140_000_000
    monkeypatch.setenv(STEPS_ENV, "2,4")
    assert enabled_steps() == (2, 4)
    for bad in ("8", "3,4", "four"):
        monkeypatch.setenv(STEPS_ENV, bad)
        with pytest.raises(UserError, match=STEPS_ENV):
            enabled_steps()
    assert TINY_SDXL.public()["random_weights"] is True
    assert "NOISE" in TINY_SDXL.title


def test_spec_module_imports_neither_torch_nor_diffusers() -> None:
    code = (
        "import sys, text2img.engines.registry as r; r.get_spec('sdxl-lightning');"
        "r.get_spec('tiny-sdxl'); heavy = {'torch', 'diffusers', 'transformers'};"
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

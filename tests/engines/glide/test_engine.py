"""GLIDE behind the engine interface: the torch-free spec, the registry, GlideEngine and its
output guard (real tiny engine on the CPU)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from text2img.engines import registry
from text2img.engines.base import BadOutput, ImageRequest, InvalidSetting, OutOfMemory
from text2img.engines.glide.samplers import SAMPLERS
from text2img.engines.glide.spec import GLIDE, SAMPLER_NAMES, TINY, SamplingSettings
from text2img.errors import UserError


def test_the_spec_and_registry_never_import_torch():
    code = (
        "import sys, text2img.engines.registry as r\n"
        "for name in ('glide', 'tiny'): r.get_spec(name).settings(size='256x256')\n"
        "import text2img.commands.download, text2img.settings\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_sampler_names_are_the_samplers():
    assert set(SAMPLER_NAMES) == set(SAMPLERS)


def test_defaults_sizes_and_settings_equality():
    assert GLIDE.settings() == SamplingSettings()  # 256x256, 25 + 15 calls
    assert GLIDE.settings().model_calls_per_image == 40
    small = TINY.settings()
    assert (small.width, small.height, small.model_calls_per_image) == (64, 64, 4)
    assert TINY.settings(size="auto") == small
    # 64x64 never runs the upsampler: its steps do not split batches
    assert GLIDE.settings(size="64x64", upsample_steps=3) == GLIDE.settings(size="64x64")
    assert GLIDE.settings(upsample_steps=3) != GLIDE.settings()


@pytest.mark.parametrize(
    ("options", "param", "code"),
    [
        ({"size": "1024x1024"}, "size", "unsupported_size"),
        ({"steps": 0}, "steps", "invalid_settings"),
        ({"steps": True}, "steps", "invalid_type"),
        ({"steps": 2.0}, "steps", "invalid_type"),
        ({"guidance_scale": "3"}, "guidance_scale", "invalid_type"),
        ({"guidance_scale": float("nan")}, "guidance_scale", "invalid_settings"),
        ({"guidance_scale": 20.5}, "guidance_scale", "invalid_settings"),
        ({"sampler": "euler"}, "sampler", "invalid_settings"),
        ({"upsample_steps": 251}, "upsample_steps", "invalid_settings"),
        ({"width": 5}, "width", "unsupported_parameter"),
    ],
)
def test_invalid_options_name_the_field(options, param, code):
    with pytest.raises(InvalidSetting) as err:
        GLIDE.settings(**options)
    assert (err.value.param, err.value.code) == (param, code)
    assert param in str(err.value)


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return registry.load_engine("tiny", device="cpu")


def test_tiny_loads_through_the_registry_and_returns_seeds(tiny):
    assert (tiny.name, tiny.device, tiny.dtype) == ("tiny", "cpu", "float32")
    settings = TINY.settings(steps=2)
    out = tiny.generate([ImageRequest("a", 11), ImageRequest("b", 12)], settings)
    assert [g.seed for g in out] == [11, 12]
    assert [g.image.size for g in out] == [(64, 64), (64, 64)]
    with pytest.raises(InvalidSetting, match="settings from its own spec"):
        tiny.generate([ImageRequest("a", 1)], object())  # type: ignore[arg-type]


def test_progress_stages_are_the_specs_in_order(tiny):
    """The web UI labels stages from `spec.stages`: the engine reports exactly those."""
    stages: list[str] = []
    tiny.generate([ImageRequest("a", 1)], TINY.settings(size="256x256", steps=1,
                  upsample_steps=1), progress=lambda p: stages.append(p.stage))  # fmt: skip
    assert list(dict.fromkeys(stages)) == list(TINY.stages) == list(GLIDE.stages)


def test_out_of_memory_reaches_callers_as_the_engines_own_type(tiny, monkeypatch):
    """The service's queue never imports torch: CUDA's error arrives as OutOfMemory."""

    def boom(*args: object, **kwargs: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(tiny.pipeline, "generate", boom)
    with pytest.raises(OutOfMemory, match="Tried to allocate"):
        tiny.generate([ImageRequest("a", 1)], TINY.settings(steps=1))


def test_glide_without_weights_says_what_to_run(tmp_path):
    with pytest.raises(UserError, match="text2img download --model glide"):
        registry.load_engine("glide", device="cpu", cache_dir=tmp_path)


def test_nan_weights_are_bad_output_not_an_image():
    engine = registry.load_engine("tiny", device="cpu")  # its own copy: poisoned below
    with torch.no_grad():
        for p in engine.pipeline.base.parameters():
            p.fill_(float("nan"))
    with pytest.raises(BadOutput, match="NaN"):
        engine.generate([ImageRequest("a", 1)], TINY.settings(steps=2))


def test_service_settings_take_registry_names_only():
    from pydantic import ValidationError

    from text2img.settings import Settings

    for name in registry.MODEL_NAMES:
        assert Settings(_env_file=None, model=name).model == name  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="use one of glide, tiny, sdxl-lightning"):
        Settings(_env_file=None, model="dall-e-3")  # type: ignore[call-arg]

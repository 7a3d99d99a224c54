"""The pipeline on the tiny random-weight model: shapes, seeds, batching, progress,
cancellation and validation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.numerics.image_compare import drift, record
from text2img.engines.glide.pipeline import (
    Cancelled,
    ImageRequest,
    Progress,
    SamplingSettings,
    load_pipeline,
    respacing_for,
)
from text2img.errors import UserError

FAST64 = SamplingSettings(size=64, base_steps=4)
FAST256 = SamplingSettings(size=256, base_steps=3, upsample_steps=2)


@pytest.fixture(scope="module")
def pipeline():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_pipeline("tiny", device="cpu")
    torch.set_num_threads(threads)


def pixels(image) -> np.ndarray:
    return np.asarray(image)


def test_tiny_pipeline_draws_256_and_64_images(pipeline):
    assert pipeline.model_name == "tiny"
    assert pipeline.random_weights
    big = pipeline.generate([ImageRequest("a corgi", 1)], FAST256)
    small = pipeline.generate([ImageRequest("a corgi", 1)], FAST64)
    assert [im.size for im in big] == [(256, 256)]
    assert [im.size for im in small] == [(64, 64)]
    assert big[0].mode == "RGB"
    assert pixels(big[0]).std() > 5  # not a blank image


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["dpm++2m", "ancestral", "ddim"])
def test_seed_is_deterministic_and_position_independent(pipeline, sampler):
    settings = SamplingSettings(size=64, base_sampler=sampler, base_steps=4)
    a = pipeline.generate([ImageRequest("a cat", 7), ImageRequest("a dog", 8)], settings)
    b = pipeline.generate([ImageRequest("a dog", 8), ImageRequest("a cat", 7)], settings)
    assert np.array_equal(pixels(a[0]), pixels(b[1]))
    assert np.array_equal(pixels(a[1]), pixels(b[0]))
    assert not np.array_equal(pixels(a[0]), pixels(a[1]))
    # alone (batch of 1) the image is the same up to float rounding of batched kernels
    alone = pipeline.generate([ImageRequest("a cat", 7)], settings)
    same = drift(alone[0], a[0])
    record(f"pipeline_seed_{sampler}", "seed 7 alone vs in a batch of 2", same)
    assert same.same_picture(), same
    assert not drift(alone[0], a[1]).same_picture()


def test_different_seed_or_prompt_changes_the_image(pipeline):
    base = pipeline.generate([ImageRequest("a cat", 1)], FAST64)[0]
    other_seed = pipeline.generate([ImageRequest("a cat", 2)], FAST64)[0]
    other_prompt = pipeline.generate([ImageRequest("a red car", 1)], FAST64)[0]
    assert not np.array_equal(pixels(base), pixels(other_seed))
    assert not np.array_equal(pixels(base), pixels(other_prompt))


@pytest.mark.slow
def test_progress_reports_every_step_of_every_stage(pipeline):
    seen: list[Progress] = []
    pipeline.generate([ImageRequest("x", 1)], FAST256, progress=seen.append)
    assert [(p.stage, p.step, p.total) for p in seen] == [("base", i, 3) for i in (1, 2, 3)] + [
        ("upsample", i, 2) for i in (1, 2)
    ]
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions)
    assert fractions[-1] == pytest.approx(1.0)


def test_requests_beyond_max_batch_are_chunked(pipeline, monkeypatch):
    monkeypatch.setattr(pipeline, "max_batch", 2)
    seen: list[Progress] = []
    requests = [ImageRequest(f"p{i}", i) for i in range(5)]
    images = pipeline.generate(
        requests, SamplingSettings(size=64, base_steps=2), progress=seen.append
    )
    assert len(images) == 5
    assert {p.batch_index for p in seen} == {0, 1, 2}
    assert seen[-1].fraction == pytest.approx(1.0)


def test_cancellation_is_checked_before_every_model_call(pipeline):
    calls = {"n": 0}

    def should_cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(Cancelled):
        pipeline.generate([ImageRequest("x", 1)], FAST64, should_cancel=should_cancel)
    assert calls["n"] == 3  # two model calls ran, the third was refused


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("size", 128),
        ("guidance_scale", float("nan")),
        ("guidance_scale", -1.0),
        ("base_sampler", "euler"),
        ("base_steps", 0),
        ("upsample_steps", 1001),
        ("upsample_sampler", ""),
    ],
)
def test_invalid_settings_name_the_field(pipeline, field, value):
    settings = SamplingSettings(**{field: value})
    with pytest.raises(ValueError, match=field):
        pipeline.generate([ImageRequest("x", 1)], settings)


def test_invalid_seed_is_refused(pipeline):
    with pytest.raises(ValueError, match="seed"):
        pipeline.generate([ImageRequest("x", -1)], FAST64)


def test_default_settings_stay_within_forty_model_calls():
    assert SamplingSettings().model_calls_per_image <= 40
    assert SamplingSettings(size=64).model_calls_per_image == SamplingSettings().base_steps


def test_load_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="text2img download"):
        load_pipeline("glide", device="cpu", cache_dir=tmp_path)
    with pytest.raises(UserError, match="model"):
        load_pipeline("dalle")
    with pytest.raises(UserError, match="float16"):
        load_pipeline("tiny", device="cpu", dtype="float16")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="cuda"):
            load_pipeline("tiny", device="cuda")


@pytest.mark.slow
def test_engine_imports_nothing_from_the_service_or_the_cloud():
    code = (
        "import sys, text2img.engines.glide.pipeline, text2img.engines.glide.samplers\n"
        "import text2img.commands.generate\n"
        "bad = [m for m in sys.modules if m.startswith(('fastapi', 'google', 'text2img.api',"
        " 'text2img.gateway', 'uvicorn'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_generate_command_module_is_light_at_import_time():
    code = (
        "import sys, text2img.commands.generate\n"
        "assert 'torch' not in sys.modules and 'PIL.Image' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_respacing_per_sampler():
    assert respacing_for("dpm++2m", 25) == "logsnr25"
    assert respacing_for("ancestral", 100) == "100"
    assert respacing_for("ddim", 27, "upsample") == "fast27"  # upstream's documented upsampler
    assert respacing_for("ddim", 27, "base") == "27"

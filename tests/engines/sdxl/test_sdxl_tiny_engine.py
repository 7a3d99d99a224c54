"""`tiny-sdxl` end to end through the registry: real diffusers, seeds, progress, cancel, guard."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from text2img.engines.base import BadOutput, Cancelled, ImageRequest, InvalidSetting, Progress
from text2img.engines.registry import get_spec, load_engine
from text2img.engines.sdxl.engine import SdxlEngine


@pytest.fixture(scope="module")
def engine() -> SdxlEngine:
    loaded = load_engine("tiny-sdxl", device="cpu")
    assert isinstance(loaded, SdxlEngine)
    return loaded


def pixels(image: object) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def test_a_seed_draws_the_same_image_alone_or_in_a_batch(engine: SdxlEngine) -> None:
    settings = get_spec("tiny-sdxl").settings(size="1024x1024", steps=2)
    batch = engine.generate(
        [ImageRequest("a red fox", 11), ImageRequest("a red fox", 12)], settings
    )
    (alone,) = engine.generate([ImageRequest("a red fox", 12)], settings)
    assert [g.seed for g in batch] == [11, 12]
    assert batch[1].image.size == (1024, 1024)
    same = np.abs(pixels(batch[1].image) - pixels(alone.image))
    other = np.abs(pixels(batch[0].image) - pixels(alone.image))
    # float rounding moves a pixel by a level or two; another seed moves the whole image
    assert same.max() <= 3
    assert other.mean() > 20 * max(same.mean(), 0.05)
    assert other.mean() > 5


def test_progress_is_reported_per_step_and_per_chunk(engine: SdxlEngine) -> None:
    events: list[Progress] = []
    settings = get_spec("tiny-sdxl").settings(size="768x1344", steps=2)
    small = SdxlEngine(engine.spec, engine.pipe, device=engine.torch_device,
                       dtype=engine.torch_dtype, max_batch=1)  # fmt: skip
    out = small.generate(
        [ImageRequest("a", 1), ImageRequest("b", 2)], settings, progress=events.append
    )
    assert [(e.batch_index, e.step, e.total) for e in events] == [
        (0, 1, 2),
        (0, 2, 2),
        (1, 1, 2),
        (1, 2, 2),
    ]
    assert events[-1].fraction == 1.0
    assert [g.image.size for g in out] == [(768, 1344)] * 2


def test_cancellation_stops_between_steps(engine: SdxlEngine) -> None:
    calls: list[int] = []

    def cancel_after_first_step() -> bool:
        calls.append(1)
        return len(calls) > 1

    events: list[Progress] = []
    settings = get_spec("tiny-sdxl").settings(steps=4)
    with pytest.raises(Cancelled):
        engine.generate([ImageRequest("x", 3)], settings, progress=events.append,
                        should_cancel=cancel_after_first_step)  # fmt: skip
    assert [e.step for e in events] == [1]  # one UNet call ran, the other three did not
    with pytest.raises(Cancelled):
        engine.generate([ImageRequest("x", 3)], settings, should_cancel=lambda: True)


def test_steps_2_4_8_are_accepted_and_3_is_refused() -> None:
    spec = get_spec("tiny-sdxl")
    assert [spec.settings(steps=s).model_calls_per_image for s in (2, 4, 8)] == [2, 4, 8]
    assert spec.settings().steps == 4
    with pytest.raises(InvalidSetting) as err:
        spec.settings(steps=3)
    assert err.value.param == "steps"


def test_other_settings_and_bad_seeds_are_refused(engine: SdxlEngine) -> None:
    glide_like = type("S", (), {"width": 64, "height": 64, "model_calls_per_image": 1})()
    with pytest.raises(InvalidSetting):
        engine.generate([ImageRequest("x", 1)], glide_like)
    with pytest.raises(InvalidSetting) as err:
        engine.generate([ImageRequest("x", -1)], get_spec("tiny-sdxl").settings(steps=2))
    assert err.value.param == "seed"


@pytest.fixture
def vae_out(engine: SdxlEngine) -> Iterator[torch.nn.Conv2d]:
    """The tiny VAE's last layer, restored after the test poisons it."""
    conv = engine.pipe.vae.decoder.conv_out
    saved = {k: v.clone() for k, v in conv.state_dict().items()}
    yield conv
    conv.load_state_dict(saved)


def test_a_nan_or_blank_decode_raises_bad_output(
    engine: SdxlEngine, vae_out: torch.nn.Conv2d
) -> None:
    settings = get_spec("tiny-sdxl").settings(steps=2)
    with torch.no_grad():
        vae_out.weight.fill_(float("nan"))  # what an fp16 overflow in the VAE looks like
    with pytest.raises(BadOutput, match="NaN"):
        engine.generate([ImageRequest("x", 5)], settings)
    with torch.no_grad():  # all zeros: every pixel decodes to the same grey
        vae_out.weight.zero_()
        vae_out.bias.zero_()
    with pytest.raises(BadOutput, match="blank"):
        engine.generate([ImageRequest("x", 5)], settings)


def test_a_prompt_cut_by_clip_reports_what_was_drawn(engine: SdxlEngine) -> None:
    settings = get_spec("tiny-sdxl").settings(steps=2)
    long = " ".join(f"word{i}" for i in range(40))  # the tiny BPE: ~1 token per character
    short = "a red fox"
    cut, whole = engine.generate([ImageRequest(long, 1), ImageRequest(short, 2)], settings)
    assert whole.prompt_used is None  # nothing cut: nothing to say
    assert cut.prompt_used is not None
    assert long.startswith(cut.prompt_used)
    assert cut.prompt_used.endswith(tuple(long.split()))  # cut at a word boundary
    tok = engine.pipe.tokenizer
    drawn = tok(long, truncation=True, max_length=tok.model_max_length)["input_ids"][1:-1]
    kept = tok(cut.prompt_used, add_special_tokens=False)["input_ids"]
    assert drawn[: len(kept)] == kept  # every token shown was drawn ...
    assert len(drawn) - len(kept) <= len("word39")  # ... and at most one partial word not shown


def test_a_start_prints_no_torchvision_notices() -> None:
    import subprocess
    import sys

    code = (
        "from text2img.engines.registry import load_engine; load_engine('tiny-sdxl', device='cpu')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torchvision" not in out.stderr + out.stdout

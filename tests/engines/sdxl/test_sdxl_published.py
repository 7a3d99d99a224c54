"""The engine against SDXL-Lightning's published recipe, not against itself: a wrong
config value, a missing "trailing" spacing or classifier-free guidance fails here.

Pinned values: data/published_configs.json (with their source). The model card of
ByteDance/SDXL-Lightning: Euler with timestep_spacing="trailing", guidance_scale=0; with
SDXL's 1000 training steps, 4 steps are the timesteps [999, 749, 499, 249]."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.engines.sdxl.sdxl_support import FakeHub, published
from text2img.engines.base import ImageRequest
from text2img.engines.registry import get_spec, load_engine
from text2img.engines.sdxl import weights
from text2img.engines.sdxl.configs import SDXL_UNET_CONFIG, SDXL_VAE_CONFIG
from text2img.engines.sdxl.engine import SdxlEngine
from text2img.engines.sdxl.loading import expected_listing, load_components, meta_module
from text2img.engines.sdxl.tiny import TINY_UNET, TINY_VAE

TRAILING = {2: [999, 499], 4: [999, 749, 499, 249], 8: [999, 874, 749, 624, 499, 374, 249, 124]}


def without_meta(config: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def test_the_unet_config_is_the_published_one() -> None:
    assert without_meta(published("unet")) == SDXL_UNET_CONFIG
    built = meta_module("unet").config  # what diffusers made of it
    for key in ("attention_head_dim", "flip_sin_to_cos", "transformer_layers_per_block",
                "addition_time_embed_dim", "use_linear_projection", "freq_shift"):  # fmt: skip
        value = built[key]
        assert (list(value) if isinstance(value, tuple) else value) == published("unet")[key]


def test_the_vae_config_is_the_published_fp16_fix_one() -> None:
    assert without_meta(published("vae")) == SDXL_VAE_CONFIG
    built = meta_module("vae").config
    assert built["scaling_factor"] == 0.13025  # SDXL's latent scale, not SD 1.x's 0.18215
    assert built["force_upcast"] is False  # the fp16 fix: decode in fp16 without upcasting


def test_the_vae_listing_has_the_names_of_a_diffusers_autoencoder() -> None:
    listing = expected_listing(meta_module("vae"))
    names = set(listing)
    for half in ("encoder", "decoder"):
        assert f"{half}.mid_block.attentions.0.to_q.weight" in names
        assert f"{half}.conv_in.weight" in names
    assert listing["encoder.conv_out.weight"] == (8, 512, 3, 3)  # mean and logvar, 4 each
    assert listing["quant_conv.weight"] == (8, 8, 1, 1)
    # 4 up blocks x 3 ResNets x 8 tensors, + 2 channel-changing shortcuts (512->256,
    # 256->128) x 2, + 3 upsamplers x 2 = 96 + 4 + 6
    assert len([n for n in names if n.startswith("decoder.up_blocks.")]) == 106
    assert not [n for n in names if ".query." in n or ".proj_attn." in n]  # pre-0.14 names


@pytest.fixture
def loaded(hub: FakeHub, tmp_path: Path) -> dict[str, object]:
    weights.ensure(tmp_path, progress=False)
    return load_components(tmp_path, torch.device("cpu"), torch.float32, 4,
                           unet_config=TINY_UNET, vae_config=TINY_VAE)  # fmt: skip


@pytest.mark.parametrize("steps", [2, 4, 8])
def test_loading_gives_the_model_cards_trailing_timesteps(
    loaded: dict[str, object], steps: int
) -> None:
    scheduler = loaded["scheduler"]
    scheduler.set_timesteps(steps)  # type: ignore[attr-defined]
    assert scheduler.timesteps.tolist() == TRAILING[steps]  # type: ignore[attr-defined]
    # everything else is SDXL base's published schedule
    for key in ("beta_start", "beta_end", "beta_schedule", "prediction_type", "steps_offset"):
        assert scheduler.config[key] == published("scheduler")[key]  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def tiny() -> SdxlEngine:
    engine = load_engine("tiny-sdxl", device="cpu")
    assert isinstance(engine, SdxlEngine)
    return engine


def test_the_tiny_twin_draws_with_trailing_timesteps_and_no_guidance(tiny: SdxlEngine) -> None:
    rows: list[int] = []
    timesteps: list[float] = []

    def record(module: object, args: tuple[torch.Tensor, ...], kwargs: dict[str, object]) -> None:
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        rows.append(int(sample.shape[0]))  # type: ignore[union-attr]
        timesteps.append(float(t))  # type: ignore[arg-type]

    hook = tiny.pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        tiny.generate([ImageRequest("a", 1), ImageRequest("b", 2)],
                      get_spec("tiny-sdxl").settings(steps=4))  # fmt: skip
    finally:
        hook.remove()
    assert timesteps == TRAILING[4]
    # one UNet row per image per step: classifier-free guidance would double the rows
    assert rows == [2, 2, 2, 2]
    assert tiny.pipe.guidance_scale <= 1.0
    assert not tiny.pipe.do_classifier_free_guidance

"""Build the released GLIDE models and fill them from the weights cache (strict)."""

from __future__ import annotations

from pathlib import Path

import torch

from text2img.engines.glide.config import BASE_OPTIONS, UPSAMPLE_OPTIONS
from text2img.engines.glide.convert import load_state_dict
from text2img.engines.glide.unet import Text2ImUNet, build_model

RELEASED_OPTIONS = {"base": BASE_OPTIONS, "upsample": UPSAMPLE_OPTIONS}


def expected_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of the released model `name` ("base" | "upsample")."""
    model = build_model(RELEASED_OPTIONS[name], device="meta")
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def load_released(
    cache_dir: Path,
    name: str,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Text2ImUNet:
    """The released model `name`, ready on `device`.

    float16 follows upstream's half layout (`convert_to_fp16`); every tensor is cast from
    the fp16 cache straight to the dtype its parameter has in that layout.
    """
    model = build_model(RELEASED_OPTIONS[name], device="meta")
    if dtype == torch.float16:
        model.convert_to_fp16()
    layout = {key: value.dtype for key, value in model.state_dict().items()}
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    state = load_state_dict(cache_dir, name, expected)
    # copy=True: the state dict views the cache file's mapping (verified when it was
    # mapped); the model owns its own memory, whatever happens to the file later
    state = {k: v.to(device=device, dtype=layout[k], copy=True) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)

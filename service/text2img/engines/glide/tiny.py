"""`--model tiny`: a small base + upsampler pair with seeded random weights.

It exercises the whole pipeline (64x64 base, 256x256 upsampler, the real samplers) in a
few seconds on a CPU with no download. Its images are noise-like patterns, NOT pictures of
the prompt: everything that shows them must say so. The tokenizer is `ByteTokenizer`.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import torch
from torch import nn

from text2img.engines.glide.layers import GroupNorm32, LayerNorm32
from text2img.engines.glide.unet import Text2ImUNet, build_model

ModuleT = TypeVar("ModuleT", bound=nn.Module)

TINY_SEED = 20211220  # GLIDE's paper date; any fixed value works

_COMMON: dict[str, Any] = {
    "num_channels": 32,
    "num_res_blocks": 1,
    "num_heads": 1,
    "num_head_channels": 32,
    "num_heads_upsample": -1,
    "dropout": 0.0,
    "text_ctx": 32,
    "xf_width": 32,
    "xf_layers": 2,
    "xf_heads": 2,
    "xf_final_ln": True,
    "xf_padding": True,
    "diffusion_steps": 1000,
    "use_scale_shift_norm": True,
    "resblock_updown": True,
    "n_vocab": 257,
}
TINY_BASE_OPTIONS: dict[str, Any] = {
    **_COMMON,
    "image_size": 64,
    "channel_mult": "1,2,2",
    "attention_resolutions": "16",
    "noise_schedule": "squaredcos_cap_v2",
    "super_res": False,
}
TINY_UPSAMPLE_OPTIONS: dict[str, Any] = {
    **_COMMON,
    "image_size": 256,
    "channel_mult": "1,1,2,2",
    "attention_resolutions": "32",
    "noise_schedule": "linear",
    "super_res": True,
}


@torch.no_grad()
def randomize_(model: ModuleT, seed: int) -> ModuleT:
    """Seeded random weights, scaled so activations stay O(1) and no output is zero.

    Normalisation gains 1 + 0.1 z, normalisation biases 0.05 z, embeddings 0.3 z, other
    biases 0.02 z, other weights z / sqrt(fan_in) (z standard normal).
    """
    generator = torch.Generator().manual_seed(seed)
    norms = {
        name for name, module in model.named_modules()
        if isinstance(module, GroupNorm32 | LayerNorm32 | nn.GroupNorm | nn.LayerNorm)
    }  # fmt: skip
    for name, param in model.named_parameters():
        owner, _, kind = name.rpartition(".")
        z = torch.randn(param.shape, generator=generator, dtype=torch.float32)
        if owner in norms:
            value = 1 + 0.1 * z if kind == "weight" else 0.05 * z
        elif "embedding" in name:
            value = 0.3 * z
        elif kind == "bias":
            value = 0.02 * z
        else:
            value = z / math.sqrt(max(1, param[0].numel()))
        param.copy_(value.to(param.dtype))
    return model


def tiny_models(seed: int = TINY_SEED) -> tuple[Text2ImUNet, Text2ImUNet]:
    """The tiny (base, upsampler) pair on the CPU in float32, eval mode."""
    base = randomize_(build_model(TINY_BASE_OPTIONS), seed)
    upsample = randomize_(build_model(TINY_UPSAMPLE_OPTIONS), seed + 1)
    return base, upsample

"""`tiny-sdxl`: a small random-weight pipeline with SDXL's architecture, built in-process.

Same component classes as the real model (UNet2DConditionModel with "text_time" added
conditioning, CLIPTextModel + CLIPTextModelWithProjection, two CLIP BPE tokenizers,
AutoencoderKL with 8x downsampling, Euler with trailing spacing), shrunk so that a
1024x1024 image takes well under a second on a CPU: a 3-level UNet whose only attention
is at 1/4 of the latent resolution, and a 4-level VAE with 4 channels and no mid-block
attention. Weights are seeded, so its noise images are reproducible. No download.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

SEED = 0
TEXT_HIDDEN = 32
PROJECTION = 32
TIME_EMBED = 8

TINY_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (8, 16, 16),
    "down_block_types": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "attention_head_dim": 8,
    "transformer_layers_per_block": 1,
    "use_linear_projection": True,
    "cross_attention_dim": 2 * TEXT_HIDDEN,  # both encoders' hidden states, concatenated
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": TIME_EMBED,
    # 6 micro-conditioning numbers (sizes, crop) x TIME_EMBED + pooled text projection
    "projection_class_embeddings_input_dim": 6 * TIME_EMBED + PROJECTION,
}

TINY_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (4, 4, 4, 4),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 0,  # the decoder still has one ResNet block per level
    "norm_num_groups": 2,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": False,
    "mid_block_add_attention": False,  # 128x128 latents: full attention would take GBs
}

# SDXL base's scheduler (scaled-linear betas), with SDXL-Lightning's trailing spacing.
SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "trailing",
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (the BPE alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def write_tokenizer(folder: Path) -> Path:
    """A CLIP BPE tokenizer with the byte alphabet and a few merges: vocab.json, merges.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("i", "n")]
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def build_components(dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The pipeline's components (unet, vae, text encoders, tokenizers, scheduler)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    with tempfile.TemporaryDirectory(prefix="tiny-sdxl-tokenizer-") as tmp:
        folder = write_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    text_config: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 2 * TEXT_HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "projection_dim": PROJECTION,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        parts: dict[str, Any] = {
            "unet": UNet2DConditionModel(**TINY_UNET),
            "vae": AutoencoderKL(**TINY_VAE),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**text_config)),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**text_config)),
        }
    for module in parts.values():
        if dtype != torch.float32:
            module.to(dtype=dtype)
        module.eval().requires_grad_(False)
    parts["tokenizer"] = tokenizer
    parts["tokenizer_2"] = tokenizer
    parts["scheduler"] = EulerDiscreteScheduler(**SCHEDULER)
    return parts

"""Model behaviour not covered by the reference cases."""

from __future__ import annotations

import pytest
import torch

from text2img.engines.glide.config import ModelConfig
from text2img.engines.glide.tiny import TINY_BASE_OPTIONS, TINY_UPSAMPLE_OPTIONS, randomize_
from text2img.engines.glide.unet import build_model


def test_precomputed_text_embedding_gives_the_same_output():
    model = randomize_(build_model(TINY_BASE_OPTIONS), 3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 64, 64, generator=g)
    tokens = torch.randint(0, 256, (2, 32), generator=g)
    mask = torch.arange(32)[None].expand(2, 32) < torch.tensor([[5], [0]])
    t = torch.tensor([10, 900])
    with torch.inference_mode():
        fresh = model(x, t, tokens, mask)
        cached = model(x, t, tokens, mask, text=model.text_embedding(tokens, mask))
    assert torch.equal(fresh, cached)


def test_super_res_model_requires_low_res():
    model = build_model(TINY_UPSAMPLE_OPTIONS, device="meta")
    with pytest.raises(ValueError, match="low_res"):
        model(
            torch.zeros(1, 3, 8, 8),
            torch.zeros(1).long(),
            torch.zeros(1, 32).long(),
            torch.ones(1, 32, dtype=torch.bool),
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [({"inpaint": True}, "inpaint"), ({"xf_width": 0}, "xf_width"), ({"image_size": 48}, "48")],
)
def test_unsupported_options_are_refused(change, message):
    options = {**TINY_BASE_OPTIONS, "channel_mult": "", **change}
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_options(options)

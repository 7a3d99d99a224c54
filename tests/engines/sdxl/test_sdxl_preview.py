"""The cheap SDXL preview used for streamed partial images: latents -> RGB by one linear
map (ComfyUI's SDXL latent_rgb_factors), no VAE call."""

from __future__ import annotations

import torch

from text2img.engines.sdxl.engine import latent_preview


def test_zero_latents_give_the_bias_colour_at_latent_size() -> None:
    (image,) = latent_preview(torch.zeros(1, 4, 16, 24, dtype=torch.float16))
    assert image.size == (24, 16)  # PIL: width x height of the latent grid
    assert image.getpixel((3, 5)) == (141, 125, 127)  # round((bias + 1) / 2 * 255)


def test_each_channel_moves_the_colour_its_own_way() -> None:
    latents = torch.zeros(2, 4, 8, 8)
    latents[1, 0] = 1.0  # the first channel mostly brightens every colour
    dark, bright = (latent_preview(latents)[i].getpixel((0, 0)) for i in range(2))
    assert all(b > d for b, d in zip(bright, dark, strict=True))
    assert latent_preview(latents)[0].mode == "RGB"

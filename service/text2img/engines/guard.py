"""The output guard every engine runs on a finished batch before returning it."""

from __future__ import annotations

import torch

from text2img.engines.base import BadOutput

# A real image spans more than one 8-bit level; a constant one (all black, all grey)
# comes from NaN weights, an fp16 overflow or a damaged cache, never from a prompt.
MIN_RANGE = 2.0 / 255.0


def check_batch(images: torch.Tensor, *, value_range: float = 2.0, what: str = "model") -> None:
    """Raise BadOutput when any image (NCHW, values spanning `value_range`) is non-finite
    or constant; the message says what to run."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise BadOutput(f"the {what} returned no images (shape {tuple(images.shape)})")
    flat = images.detach().float().reshape(images.shape[0], -1)
    if not bool(torch.isfinite(flat).all()):
        raise BadOutput(
            f"the {what} produced NaN/inf values: the weights in the cache are probably "
            "damaged; run `text2img download --check`, then `text2img download --force`"
        )
    spread = flat.amax(dim=1) - flat.amin(dim=1)
    if bool((spread < MIN_RANGE * value_range / 2.0).any()):
        raise BadOutput(
            f"the {what} produced a blank (constant) image: the weights in the cache are "
            "probably damaged; run `text2img download --check`, then `text2img download --force`"
        )

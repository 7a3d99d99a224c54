"""Small building blocks shared by the text encoder and the UNet.

- `attend`: multi-head attention with upstream's numerics (q and k each scaled by
  head_dim^(-1/4), softmax in float32, no mask), through
  `torch.nn.functional.scaled_dot_product_attention`, or an explicit einsum path
  (the benchmark's baseline, and a fallback for checking).
- `GroupNorm32` / `LayerNorm32`: normalisations computed in float32 and cast back.
- `timestep_embedding`: upstream's float32 sinusoidal features (cosines first).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_IMPL = {"attention": "sdpa"}


@contextlib.contextmanager
def attention_impl(name: str) -> Iterator[None]:
    """Temporarily select the attention path: "sdpa" (default) or "einsum" (reference maths)."""
    if name not in ("sdpa", "einsum"):
        raise ValueError(f"unknown attention implementation {name!r}")
    previous = _IMPL["attention"]
    _IMPL["attention"] = name
    try:
        yield
    finally:
        _IMPL["attention"] = previous


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Unmasked softmax attention over (..., L, d) tensors; returns (..., Lq, d).

    q and k are each multiplied by d^(-1/4) first (upstream's rounding), so the SDPA call
    uses scale 1. SDPA computes the softmax in float32 for half inputs on CUDA; the
    einsum path upcasts explicitly like upstream.
    """
    scale = 1.0 / math.sqrt(math.sqrt(q.shape[-1]))
    q = q * scale
    k = k * scale
    if _IMPL["attention"] == "sdpa":
        # The fused CPU kernel needs unit stride in the last dimension (else: math fallback).
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, scale=1.0)
    weight = torch.einsum("...td,...sd->...ts", q, k)
    weight = torch.softmax(weight.float(), dim=-1).to(q.dtype)
    return torch.einsum("...ts,...sd->...td", weight, v)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups computed in float32, optionally followed by SiLU."""

    def __init__(self, channels: int, *, silu: bool = False) -> None:
        super().__init__(32, channels, eps=1e-5)
        self.silu = silu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x.float()).to(x.dtype)
        return F.silu(y) if self.silu else y


class LayerNorm32(nn.LayerNorm):
    """LayerNorm (eps 1e-5) computed in float32 and cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal features in float32 exactly as upstream: [cos(t f_i)..., sin(t f_i)...]."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(0, half, dtype=torch.float32, device=timesteps.device)
        / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding

"""GLIDE's text transformer: pre-LayerNorm blocks with bidirectional, unmasked attention.

State-dict names follow upstream (`resblocks.{i}.attn.c_qkv`, `ln_1`, `mlp.c_fc`, ...).
`c_qkv`'s 3*width features are grouped per head as [q | k | v] (reference spec §7).
"""

from __future__ import annotations

import torch
from torch import nn

from text2img.engines.glide.layers import LayerNorm32, attend


class MultiheadAttention(nn.Module):
    """Self-attention over all positions; per-head qkv layout [q | k | v]."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"xf_width {width} is not divisible by xf_heads {heads}")
        self.heads = heads
        self.c_qkv = nn.Linear(width, width * 3)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, ctx, width = x.shape
        qkv = self.c_qkv(x).view(n, ctx, self.heads, -1).transpose(1, 2)  # (N, H, T, 3d)
        q, k, v = qkv.split(width // self.heads, dim=-1)
        out = attend(q, k, v).transpose(1, 2).reshape(n, ctx, width)
        return self.c_proj(out)


class MLP(nn.Module):
    """width -> 4 width, exact (erf) GELU, -> width."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, width * 4)
        self.c_proj = nn.Linear(width * 4, width)
        self.gelu = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm32(width, eps=1e-5)
        self.mlp = MLP(width)
        self.ln_2 = LayerNorm32(width, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of `layers` residual attention blocks of the given width."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x

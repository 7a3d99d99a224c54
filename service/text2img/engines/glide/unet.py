"""GLIDE's text-conditional UNet (Text2ImUNet) and its super-resolution variant.

Structure and state-dict names follow upstream so that the released `base.pt` and
`upsample.pt` load strictly (reference spec §1, §7). Half precision follows upstream's
layout (`convert_to_fp16`): block convolutions and the text stack in float16, time MLP,
`emb_layers`, normalisations, the output head and the two text embeddings in float32.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from text2img.engines.glide.config import ModelConfig
from text2img.engines.glide.layers import GroupNorm32, LayerNorm32, attend, timestep_embedding
from text2img.engines.glide.text_encoder import Transformer

Trace = dict[str, torch.Tensor] | None


class ResBlock(nn.Module):
    """Residual block with scale-shift norm; optional nearest x2 up / 2x2 average-pool down."""

    def __init__(
        self, channels: int, emb_channels: int, out_channels: int, *, up: bool = False,
        down: bool = False, dropout: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.up, self.down = up, down
        self.in_layers = nn.Sequential(
            GroupNorm32(channels, silu=True),
            nn.Identity(),
            nn.Conv2d(channels, out_channels, 3, padding=1),
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers[0](x)
        h = self.in_layers[2](self._resample(h))
        x = self._resample(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        scale, shift = emb_out.chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention whose keys/values are prefixed by the text tokens' (k, v)."""

    def __init__(self, channels: int, heads: int, encoder_channels: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.encoder_kv = nn.Conv1d(encoder_channels, channels * 2, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, xf_out: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        d = c // self.heads
        # The 1x1 Conv1d layers are applied as Linear over channel-last views, so that the
        # per-head q, k, v come out with unit stride in the last dimension (fused SDPA).
        tokens = self.norm(x).view(b, c, -1).transpose(1, 2)  # (B, L, C)
        qkv = _pointwise(self.qkv, tokens).view(b, -1, self.heads, 3 * d)  # per head [q|k|v]
        q, k, v = qkv.transpose(1, 2).split(d, dim=-1)  # (B, H, L, d)
        ekv = _pointwise(self.encoder_kv, xf_out.transpose(1, 2))  # (B, T, 2C), [k|v]
        ek, ev = ekv.view(b, -1, self.heads, 2 * d).transpose(1, 2).split(d, dim=-1)
        a = attend(q, torch.cat([ek, k], dim=2), torch.cat([ev, v], dim=2))  # (B, H, L, d)
        h = _pointwise(self.proj_out, a.transpose(1, 2).reshape(b, -1, c))  # (B, L, C)
        return x + h.transpose(1, 2).reshape(b, c, height, width)


def _pointwise(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A kernel-size-1 Conv1d applied to channel-last (B, L, C_in) input."""
    return F.linear(x, conv.weight.squeeze(-1), conv.bias)


class EmbedSequential(nn.Sequential):
    """Runs its layers in order, giving residual blocks the embedding and attention the text."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, emb: torch.Tensor, xf_out: torch.Tensor
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, AttentionBlock):
                x = layer(x, xf_out)
            else:
                x = layer(x)
        return x


class Text2ImUNet(nn.Module):
    """GLIDE's UNet conditioned on time and a text transformer; super-res when configured."""

    def __init__(self, cfg: ModelConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.dtype = torch.float32
        mc, emb_dim = cfg.num_channels, cfg.num_channels * 4
        self.positional_embedding = nn.Parameter(torch.empty(cfg.text_ctx, cfg.xf_width))
        if cfg.xf_padding:
            self.padding_embedding = nn.Parameter(torch.empty(cfg.text_ctx, cfg.xf_width))
        self.time_embed = nn.Sequential(
            nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

        def heads_for(ch: int, heads: int) -> int:
            return ch // cfg.num_head_channels if cfg.num_head_channels > 0 else heads

        def attention(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads_for(ch, heads), cfg.xf_width)

        ch = cfg.channel_mult[0] * mc
        self.input_blocks = nn.ModuleList(
            [EmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))]
        )
        skip_chans, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * mc, dropout=dropout)]
                ch = mult * mc
                if ds in cfg.attention_ds:
                    layers.append(attention(ch, cfg.num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(
                    EmbedSequential(ResBlock(ch, emb_dim, ch, down=True, dropout=dropout))
                )
                skip_chans.append(ch)
                ds *= 2
        self.middle_block = EmbedSequential(
            ResBlock(ch, emb_dim, ch, dropout=dropout),
            attention(ch, cfg.num_heads),
            ResBlock(ch, emb_dim, ch, dropout=dropout),
        )
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_chans.pop(), emb_dim, mc * mult, dropout=dropout)]
                ch = mc * mult
                if ds in cfg.attention_ds:
                    layers.append(attention(ch, cfg.num_heads_upsample))
                if level and i == cfg.num_res_blocks:
                    layers.append(ResBlock(ch, emb_dim, ch, up=True, dropout=dropout))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        self.out = nn.Sequential(
            GroupNorm32(ch, silu=True), nn.Identity(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1)
        )
        self.transformer = Transformer(cfg.xf_width, cfg.xf_layers, cfg.xf_heads)
        self.final_ln = LayerNorm32(cfg.xf_width, eps=1e-5) if cfg.xf_final_ln else None
        self.token_embedding = nn.Embedding(cfg.n_vocab, cfg.xf_width)
        self.transformer_proj = nn.Linear(cfg.xf_width, emb_dim)

    def convert_to_fp16(self) -> None:
        """Upstream's half layout: block convs, text Linear layers, proj and token embedding."""
        for blocks in (self.input_blocks, self.middle_block, self.output_blocks):
            for module in blocks.modules():
                if isinstance(module, nn.Conv1d | nn.Conv2d):
                    module.half()
        for module in self.transformer.modules():
            if isinstance(module, nn.Linear):
                module.half()
        self.transformer_proj.half()
        self.token_embedding.half()
        self.dtype = torch.float16

    def text_embedding(
        self, tokens: torch.Tensor, mask: torch.Tensor, trace: Trace = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(xf_proj (N, 4C), xf_out (N, xf_width, text_ctx)) for padded tokens and mask."""
        xf_in = self.token_embedding(tokens.long()) + self.positional_embedding[None]
        if self.cfg.xf_padding:
            xf_in = torch.where(mask[..., None], xf_in, self.padding_embedding[None])
        xf = self.transformer(xf_in.to(self.dtype))
        if trace is not None:
            trace["xf_in"] = xf_in
            trace["xf_transformer_out_before_final_ln"] = xf
        if self.final_ln is not None:
            xf = self.final_ln(xf)
        xf_proj = self.transformer_proj(xf[:, -1])
        return xf_proj, xf.permute(0, 2, 1)

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, tokens: torch.Tensor,
        mask: torch.Tensor, low_res: torch.Tensor | None = None, trace: Trace = None,
        text: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """6-channel output (eps, variance interpolation) for x_t at ORIGINAL timesteps.

        `text` may carry `text_embedding(tokens, mask)` computed once for a whole sampling
        loop (the text encoder's output does not depend on x or t); upstream recomputes it
        on every call, with the same result.
        """
        if self.cfg.super_res:
            if low_res is None:
                raise ValueError("the super-resolution model needs low_res")
            size = x.shape[-2:]
            upsampled = F.interpolate(low_res, size, mode="bilinear", align_corners=False)
            x = torch.cat([x, upsampled], dim=1)
            if trace is not None:
                trace["low_res_upsampled"] = upsampled
                trace["unet_input"] = x
        t_emb = timestep_embedding(timesteps, self.cfg.num_channels)
        time_out = self.time_embed(t_emb)
        xf_proj, xf_out = text if text is not None else self.text_embedding(tokens, mask, trace)
        emb = time_out + xf_proj.to(time_out)
        if trace is not None:
            trace.update(timestep_embedding=t_emb, time_embed_out=time_out, emb=emb)
            trace.update(xf_proj=xf_proj, xf_out=xf_out)
        skips = []
        h = x.to(self.dtype)
        for i, block in enumerate(self.input_blocks):
            h = block(h, emb, xf_out)
            skips.append(h)
            if trace is not None:
                trace[f"input_blocks.{i}"] = h
        h = self.middle_block(h, emb, xf_out)
        if trace is not None:
            trace["middle_block"] = h
        for i, block in enumerate(self.output_blocks):
            h = block(torch.cat([h, skips.pop()], dim=1), emb, xf_out)
            if trace is not None:
                trace[f"output_blocks.{i}"] = h
        return self.out(h.to(x.dtype))


def build_model(
    options: dict[str, Any] | ModelConfig, device: str | torch.device = "cpu"
) -> Text2ImUNet:
    """Construct a GLIDE UNet (eval mode) from upstream-style options or a ModelConfig."""
    cfg = options if isinstance(options, ModelConfig) else ModelConfig.from_options(options)
    with torch.device(device):
        model = Text2ImUNet(cfg)
    return model.eval().requires_grad_(False)

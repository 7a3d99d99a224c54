"""Model options, named exactly as upstream's model-and-diffusion factory keywords.

`ModelConfig.from_options` takes such a dict (a reference `<name>.config.json`, or the
`options` of `base_params.json` / `upsample_params.json`) and resolves the derived values:
channel multipliers for an empty `channel_mult`, attention downsample rates from
`attention_resolutions`, and the super-resolution input channels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Upstream's default channel multipliers when `channel_mult` is "" (by image size).
_DEFAULT_CHANNEL_MULT = {
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}

# The released models' option sets (reference base_params.json / upsample_params.json).
BASE_OPTIONS: dict[str, Any] = {
    "image_size": 64,
    "num_channels": 192,
    "num_res_blocks": 3,
    "channel_mult": "",
    "num_heads": 1,
    "num_head_channels": 64,
    "num_heads_upsample": -1,
    "attention_resolutions": "32,16,8",
    "dropout": 0.1,
    "text_ctx": 128,
    "xf_width": 512,
    "xf_layers": 16,
    "xf_heads": 8,
    "xf_final_ln": True,
    "xf_padding": True,
    "diffusion_steps": 1000,
    "noise_schedule": "squaredcos_cap_v2",
    "timestep_respacing": "",
    "use_scale_shift_norm": True,
    "resblock_updown": True,
    "use_fp16": False,
    "cache_text_emb": False,
    "inpaint": False,
    "super_res": False,
}
UPSAMPLE_OPTIONS: dict[str, Any] = {
    **BASE_OPTIONS,
    "image_size": 256,
    "num_res_blocks": 2,
    "noise_schedule": "linear",
    "super_res": True,
}


@dataclass(frozen=True)
class ModelConfig:
    """Resolved architecture + diffusion options of one GLIDE model."""

    image_size: int
    num_channels: int
    num_res_blocks: int
    channel_mult: tuple[int, ...]
    attention_ds: tuple[int, ...]
    num_heads: int
    num_head_channels: int
    num_heads_upsample: int
    text_ctx: int
    xf_width: int
    xf_layers: int
    xf_heads: int
    xf_final_ln: bool
    xf_padding: bool
    n_vocab: int
    use_scale_shift_norm: bool
    resblock_updown: bool
    super_res: bool
    noise_schedule: str
    diffusion_steps: int

    @property
    def in_channels(self) -> int:
        return 6 if self.super_res else 3

    @property
    def out_channels(self) -> int:
        return 6  # 3 noise channels + 3 variance-interpolation channels

    @classmethod
    def from_options(cls, options: Mapping[str, Any], n_vocab: int = 50257) -> ModelConfig:
        """Build from upstream-style keywords; raises ValueError on unsupported options."""
        opts = dict(options)
        n_vocab = int(opts.pop("n_vocab", n_vocab))
        if opts.get("inpaint"):
            raise ValueError("inpaint models are not supported")
        if not opts.get("xf_width"):
            raise ValueError("xf_width must be positive (text-conditional models only)")
        if not opts.get("use_scale_shift_norm", True) or not opts.get("resblock_updown", True):
            raise ValueError("only use_scale_shift_norm and resblock_updown models are supported")
        image_size = int(opts["image_size"])
        mult_text = str(opts.get("channel_mult", ""))
        if mult_text:
            channel_mult = tuple(int(m) for m in mult_text.split(","))
        elif image_size in _DEFAULT_CHANNEL_MULT:
            channel_mult = _DEFAULT_CHANNEL_MULT[image_size]
        else:
            raise ValueError(f"no default channel_mult for image_size {image_size}")
        attention_ds = tuple(
            image_size // int(r) for r in str(opts["attention_resolutions"]).split(",") if r
        )
        num_heads = int(opts.get("num_heads", 1))
        heads_up = int(opts.get("num_heads_upsample", -1))
        return cls(
            image_size=image_size,
            num_channels=int(opts["num_channels"]),
            num_res_blocks=int(opts["num_res_blocks"]),
            channel_mult=channel_mult,
            attention_ds=attention_ds,
            num_heads=num_heads,
            num_head_channels=int(opts.get("num_head_channels", -1)),
            num_heads_upsample=num_heads if heads_up == -1 else heads_up,
            text_ctx=int(opts["text_ctx"]),
            xf_width=int(opts["xf_width"]),
            xf_layers=int(opts["xf_layers"]),
            xf_heads=int(opts["xf_heads"]),
            xf_final_ln=bool(opts.get("xf_final_ln", True)),
            xf_padding=bool(opts.get("xf_padding", True)),
            n_vocab=n_vocab,
            use_scale_shift_norm=True,
            resblock_updown=True,
            super_res=bool(opts.get("super_res", False)),
            noise_schedule=str(opts.get("noise_schedule", "squaredcos_cap_v2")),
            diffusion_steps=int(opts.get("diffusion_steps", 1000)),
        )

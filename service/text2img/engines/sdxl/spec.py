"""What `sdxl-lightning` and `tiny-sdxl` draw and accept; torch-free (no diffusers import).

Sizes are SDXL's native resolutions (about one megapixel, multiples of 64). OpenAI's sizes
are accepted as aliases and drawn at the native size closest in aspect ratio; the image
returned has the native size (e.g. "1536x1024" returns 1216x832). Guidance is fixed at 0:
SDXL-Lightning is distilled to run without classifier-free guidance, so there is no
option for it, and one UNet call per step is the whole cost.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from text2img.engines.base import EngineSettings, EngineSpec, InvalidSetting, Option, parse_size
from text2img.errors import UserError

NATIVE_SIZES = (
    "1024x1024",
    "1152x896",
    "896x1152",
    "1216x832",
    "832x1216",
    "1344x768",
    "768x1344",
)
DEFAULT_SIZE = "1024x1024"
STEP_CHOICES = (2, 4, 8)  # ByteDance ships one distilled UNet per step count
DEFAULT_STEPS = 4
# Which step counts a deployment serves (and downloads): "4" unless it says otherwise,
# e.g. TEXT2IMG_SDXL_STEPS=2,4,8. Each other count is its own 5.1 GB UNet, and switching
# between counts re-reads one from disk (see docs: Models).
STEPS_ENV = "TEXT2IMG_SDXL_STEPS"


def enabled_steps() -> tuple[int, ...]:
    """The step counts this deployment serves, from $TEXT2IMG_SDXL_STEPS (read at call time)."""
    return parse_steps(os.environ.get(STEPS_ENV, ""))


def parse_steps(raw: str) -> tuple[int, ...]:
    """A TEXT2IMG_SDXL_STEPS value -> the step counts served; UserError when not valid."""
    raw = raw.strip()
    if not raw:
        return (DEFAULT_STEPS,)
    try:
        steps = sorted({int(part) for part in raw.replace(" ", "").split(",") if part})
    except ValueError:
        steps = []
    if not steps or not set(steps) <= set(STEP_CHOICES) or DEFAULT_STEPS not in steps:
        raise UserError(
            f"{STEPS_ENV}={raw!r}: use a comma-separated subset of 2,4,8 that includes 4 "
            f"(e.g. {STEPS_ENV}=2,4,8), or unset it to serve 4 steps only"
        )
    return tuple(steps)


# Licences of the three repositories the weights come from (named at download and in the
# README): SDXL 1.0 base's model card and ByteDance/SDXL-Lightning's both declare
# `openrail++` (CreativeML Open RAIL++-M); madebyollin/sdxl-vae-fp16-fix declares `mit`.
LICENCE = (
    "CreativeML Open RAIL++-M (stabilityai/stable-diffusion-xl-base-1.0 text encoders, "
    "ByteDance/SDXL-Lightning UNet); MIT (madebyollin/sdxl-vae-fp16-fix VAE)"
)


def nearest_native(size: str) -> str:
    """The native size whose aspect ratio is closest (in log space) to `size`'s."""
    width, height = parse_size(size)
    target = math.log(width / height)

    def distance(native: str) -> float:
        w, h = parse_size(native)
        return abs(math.log(w / h) - target)

    return min(NATIVE_SIZES, key=distance)


# OpenAI's gpt-image sizes -> what we draw. "auto" is our default square.
SIZE_ALIASES = {
    "1536x1024": nearest_native("1536x1024"),  # 3:2 landscape -> 1216x832
    "1024x1536": nearest_native("1024x1536"),  # 2:3 portrait -> 832x1216
    "auto": DEFAULT_SIZE,
}


@dataclass(frozen=True)
class SdxlSettings:
    """Everything that must be equal for requests to share a batch."""

    width: int = 1024
    height: int = 1024
    steps: int = DEFAULT_STEPS

    @property
    def model_calls_per_image(self) -> int:
        """One UNet call per step: guidance is 0, so there is no unconditional row."""
        return self.steps

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class SdxlSpec(EngineSpec):
    """The SDXL family's spec; `settings` validates size and steps."""

    def download_bytes_for_env(self, env: Mapping[str, str]) -> int:
        """The cache's size for the step counts `env` enables (4 only when unset)."""
        if self.random_weights:
            return 0
        return download_bytes_for(parse_steps(env.get(STEPS_ENV, "")))

    def public(self) -> dict[str, Any]:
        """As the base, with the step counts this deployment serves (read at call time)."""
        out = super().public()
        if not self.random_weights:
            out["options"]["steps"]["choices"] = list(enabled_steps())
        return out

    def weights_key(self, settings: EngineSettings) -> Hashable | None:
        """The step count: each has its own UNet (tiny-sdxl has one for all counts)."""
        if self.random_weights or not isinstance(settings, SdxlSettings):
            return None
        return settings.steps

    def settings(self, **options: Any) -> SdxlSettings:
        self.check_option_names(options)
        size = self.resolve_size(options.get("size"))
        steps = options.get("steps")
        if steps is None:
            steps = DEFAULT_STEPS
        if isinstance(steps, bool) or not isinstance(steps, int) or steps not in STEP_CHOICES:
            choices = ", ".join(str(s) for s in STEP_CHOICES)
            raise InvalidSetting(
                "steps",
                f"steps must be one of {choices} for model {self.name} (SDXL-Lightning "
                f"ships one distilled UNet per step count), got {steps!r}",
            )
        if not self.random_weights and steps not in enabled_steps():
            served = ", ".join(str(s) for s in enabled_steps())
            raise InvalidSetting(
                "steps",
                f"this server draws {self.name} with steps {served} only; steps={steps} "
                f"needs its own 5.1 GB UNet: the operator enables it with {STEPS_ENV}=2,4,8 "
                "and `text2img download --model sdxl-lightning`",
            )
        width, height = parse_size(size)
        return SdxlSettings(width=width, height=height, steps=steps)


STEPS_OPTION = Option(
    "steps",
    DEFAULT_STEPS,
    "denoising steps = UNet calls per image; each count has its own distilled UNet",
    choices=STEP_CHOICES,
    label="ステップ数",
)
STAGES = {"denoise": "ノイズ除去"}  # the one `Progress.stage` the engine reports
# sdxl-lightning also reports a step-count change (2/8 enabled) as its own stage;
# tiny-sdxl has one UNet for every count and never does
LIGHTNING_STAGES = {"load_unet": "UNetを読み込み中", **STAGES}

# Bytes in the cache (sizes of the pinned files on the Hub, rounded up): one fp16
# Lightning UNet per served step count (5.14 GB each), both fp16 text encoders (0.25 GB +
# 1.39 GB), the fp32 fp16-fix VAE (0.34 GB) and the small config/tokenizer files.
UNET_BYTES = 5_140_000_000
SHARED_BYTES = 246_200_000 + 1_389_400_000 + 334_700_000 + 10_000_000


def download_bytes_for(steps: tuple[int, ...]) -> int:
    """The cache's size for a deployment serving these step counts."""
    return len(set(steps)) * UNET_BYTES + SHARED_BYTES


DOWNLOAD_BYTES = download_bytes_for((DEFAULT_STEPS,))  # the default: 4 steps only

SDXL_LIGHTNING = SdxlSpec(
    name="sdxl-lightning",
    family="sdxl",
    title="SDXL-Lightning (ByteDance, 2024) on Stable Diffusion XL 1.0, via diffusers",
    licence=LICENCE,
    random_weights=False,
    sizes=NATIVE_SIZES,
    default_size=DEFAULT_SIZE,
    options=(STEPS_OPTION,),
    size_aliases=SIZE_ALIASES,
    stages=LIGHTNING_STAGES,
    download_bytes=DOWNLOAD_BYTES,
    deploy_env=(STEPS_ENV,),
    gpu_max_batch=4,
    # what a start loads: both text encoders, the 4-step UNet and the VAE (2 and 8 steps
    # are loaded when first asked for); snapshot entries are links into blobs/
    prefetch=(
        "huggingface/models--*/snapshots/*/text_encoder/model.fp16.safetensors",
        "huggingface/models--*/snapshots/*/text_encoder_2/model.fp16.safetensors",
        "huggingface/models--*/snapshots/*/sdxl_lightning_4step_unet.safetensors",
        "huggingface/models--*/snapshots/*/diffusion_pytorch_model.safetensors",
    ),
)

TINY_SDXL = SdxlSpec(
    name="tiny-sdxl",
    family="sdxl",
    title="tiny SDXL-architecture pipeline with random weights: draws NOISE (smoke tests)",
    licence="none (random weights generated in-process)",
    random_weights=True,
    sizes=NATIVE_SIZES,
    default_size=DEFAULT_SIZE,
    options=(STEPS_OPTION,),
    size_aliases=SIZE_ALIASES,
    stages=STAGES,
    gpu_max_batch=8,
)

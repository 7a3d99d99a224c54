"""What GLIDE draws and accepts, without torch: the `GLIDE` and `TINY` specs and the frozen
settings that must match for requests to share a batch.

Validation lives here so that the service, the CLI and `/v1/models` check a request
without importing the model code. Defaults: DPM-Solver++(2M) with 25 base and 15 upsampler
steps (40 model calls per image against upstream's 127); `tiny` has smoke-sized defaults
(a 64x64 image in a few steps) because its images are noise anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from text2img.engines.base import EngineSpec, InvalidSetting, Option

MAX_STEPS = 1000  # what the samplers accept; requests are bounded by the options below
SAMPLER_NAMES = ("ancestral", "ddim", "dpm++2m")  # keys of samplers.SAMPLERS (tested)
SIZES = ("64x64", "256x256")  # 64x64: base model only; 256x256: base + upsampler
MAX_REQUEST_STEPS = 250
MAX_GUIDANCE = 20.0


@dataclass(frozen=True)
class SamplingSettings:
    """Everything that must be equal for requests to share a batch."""

    size: int = 256
    guidance_scale: float = 3.0
    base_sampler: str = "dpm++2m"
    base_steps: int = 25
    upsample_sampler: str = "dpm++2m"
    upsample_steps: int = 15

    @property
    def width(self) -> int:
        return self.size

    @property
    def height(self) -> int:
        return self.size

    def validate(self) -> None:
        """Raise InvalidSetting (a ValueError) naming the first invalid field."""
        if self.size not in (64, 256):
            raise InvalidSetting("size", f"size must be 64 or 256, got {self.size!r}")
        g = self.guidance_scale
        if not (isinstance(g, int | float) and not isinstance(g, bool) and math.isfinite(g)):
            raise InvalidSetting("guidance_scale", f"guidance_scale must be a number, got {g!r}")
        if not 0 <= g <= 30:
            raise InvalidSetting(
                "guidance_scale", f"guidance_scale must be between 0 and 30, got {g!r}"
            )
        for stage in ("base", "upsample"):
            sampler = getattr(self, f"{stage}_sampler")
            steps = getattr(self, f"{stage}_steps")
            if sampler not in SAMPLER_NAMES:
                raise InvalidSetting(
                    f"{stage}_sampler",
                    f"{stage}_sampler must be one of {', '.join(SAMPLER_NAMES)}, got {sampler!r}",
                )
            if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
                raise InvalidSetting(
                    f"{stage}_steps",
                    f"{stage}_steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}",
                )

    @property
    def model_calls_per_image(self) -> int:
        """Model forward calls per image (a base call covers the cond + uncond rows)."""
        return self.base_steps + (self.upsample_steps if self.size == 256 else 0)


def _integer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSetting(name, f"{name} must be an integer, got {value!r}", "invalid_type")
    if not low <= value <= high:
        raise InvalidSetting(name, f"{name} must be from {low} to {high}, got {value}")
    return value


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidSetting(name, f"{name} must be a number, got {value!r}", "invalid_type")
    if not math.isfinite(value):
        raise InvalidSetting(name, f"{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise InvalidSetting(name, f"{name} must be from {low:g} to {high:g}, got {value:g}")
    return float(value)


@dataclass(frozen=True)
class GlideSpec(EngineSpec):
    """A GLIDE base + upsampler pair: 64x64 (base only) or 256x256 (both)."""

    def settings(self, **options: Any) -> SamplingSettings:
        self.check_option_names(options)
        size = self.resolve_size(options.get("size"))
        defaults: dict[str, Any] = {o.name: o.default for o in self.options}
        value = {
            k: options.get(k) if options.get(k) is not None else v for k, v in defaults.items()
        }
        sampler = value["sampler"]
        if sampler not in SAMPLER_NAMES:
            raise InvalidSetting(
                "sampler", f"sampler must be one of {', '.join(SAMPLER_NAMES)}, got {sampler!r}"
            )
        pixels = 64 if size == "64x64" else 256
        upsample_steps = _integer("upsample_steps", value["upsample_steps"], 1, MAX_REQUEST_STEPS)
        return SamplingSettings(
            size=pixels,
            guidance_scale=_number("guidance_scale", value["guidance_scale"], 0.0, MAX_GUIDANCE),
            base_sampler=sampler,
            base_steps=_integer("steps", value["steps"], 1, MAX_REQUEST_STEPS),
            upsample_sampler="dpm++2m",
            # 64x64 never runs the upsampler: keep its default so such requests batch together
            upsample_steps=upsample_steps if pixels == 256 else defaults["upsample_steps"],
        )


def _options(steps: int, upsample_steps: int) -> tuple[Option, ...]:
    return (
        Option(
            "steps",
            steps,
            "Sampling steps of the 64x64 base model.",
            1,
            MAX_REQUEST_STEPS,
            label="ステップ数",
            aliases=("base_steps",),
        ),
        Option(
            "guidance_scale",
            3.0,
            "Classifier-free guidance scale (0 = none).",
            0,
            MAX_GUIDANCE,
            label="ガイダンス",
        ),
        Option(
            "sampler",
            "dpm++2m",
            "Sampler of the base model.",
            choices=SAMPLER_NAMES,
            label="サンプラー",
            aliases=("base_sampler",),
        ),
        Option(
            "upsample_steps",
            upsample_steps,
            "Sampling steps of the 64->256 upsampler (256x256 only).",
            1,
            MAX_REQUEST_STEPS,
            label="アップサンプルのステップ数",
        ),
    )


# the pipeline's two stages (`Progress.stage`), as the web UI names them
STAGES = {"base": "ベース", "upsample": "アップサンプル"}

# fp32 .pt as released + the fp16 safetensors copy (6 bytes per parameter) + the tokenizer
_GLIDE_PARAMS = 385_030_726 + 398_361_286

GLIDE = GlideSpec(
    name="glide",
    family="glide",
    title="GLIDE (filtered), OpenAI 2021",
    licence="MIT (openai/glide-text2im)",
    random_weights=False,
    sizes=SIZES,
    default_size="256x256",
    options=_options(steps=25, upsample_steps=15),
    size_aliases={"auto": "256x256"},
    stages=STAGES,
    download_bytes=6 * _GLIDE_PARAMS + 561_890,
    prefetch=("base.fp16.safetensors", "upsample.fp16.safetensors"),
    gpu_max_batch=8,
)

# Smoke-sized defaults: the tiny model's images are noise, so a default request only has to
# show that the whole path works, in a few seconds on a loaded 2-core CPU (README).
TINY = GlideSpec(
    name="tiny",
    family="glide",
    title="tiny GLIDE-architecture model with random weights (smoke tests; images are noise)",
    licence="MIT (this kit; random weights, nothing downloaded)",
    random_weights=True,
    sizes=SIZES,
    default_size="64x64",
    options=_options(steps=4, upsample_steps=4),
    size_aliases={"auto": "64x64"},
    stages=STAGES,
    gpu_max_batch=8,
)

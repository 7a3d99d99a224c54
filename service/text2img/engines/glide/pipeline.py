"""Prompt -> 64x64 base (classifier-free guidance) -> 256x256 upsampler -> PIL images.

The interface the service and the CLI use (DEVELOPERS.md). Defaults: DPM-Solver++(2M)
with 25 steps for the base and 15 for the upsampler, i.e. 40 model calls per image
against upstream's 127 (100 ancestral + 27 DDIM); see the README's `glide` section.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from text2img.engines.glide.samplers import SAMPLERS, StepInfo, classifier_free_guidance
from text2img.engines.glide.schedules import make_schedule
from text2img.engines.glide.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    padded_tokens_and_mask,
)
from text2img.engines.glide.unet import Text2ImUNet
from text2img.errors import UserError

MAX_STEPS = 1000
MAX_SEED = 2**63 - 1
UPSAMPLE_TEMPERATURE = 0.997  # upstream scales the upsampler's starting noise by this
MODELS = ("glide", "tiny")


def respacing_for(sampler: str, steps: int, stage: str = "base") -> str:
    """Respacing string: log-SNR spacing for DPM-Solver++, else evenly spaced as upstream.

    DDIM with 27 upsampler steps uses upstream's "fast27", so that upstream's documented
    pipeline (ancestral 100 + DDIM fast27) can be reproduced exactly.
    """
    if sampler == "dpm++2m":
        return f"logsnr{steps}"
    if stage == "upsample" and sampler == "ddim" and steps == 27:
        return "fast27"
    return str(steps)


class Cancelled(Exception):
    """Raised by `Pipeline.generate` when `should_cancel()` returned true."""


@dataclass(frozen=True)
class SamplingSettings:
    """Everything that must be equal for requests to share a batch."""

    size: int = 256
    guidance_scale: float = 3.0
    base_sampler: str = "dpm++2m"
    base_steps: int = 25
    upsample_sampler: str = "dpm++2m"
    upsample_steps: int = 15

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        if self.size not in (64, 256):
            raise ValueError(f"size must be 64 or 256, got {self.size!r}")
        if not (
            isinstance(self.guidance_scale, int | float)
            and math.isfinite(self.guidance_scale)
            and 0 <= self.guidance_scale <= 30
        ):
            raise ValueError(
                f"guidance_scale must be between 0 and 30, got {self.guidance_scale!r}"
            )
        for stage in ("base", "upsample"):
            sampler = getattr(self, f"{stage}_sampler")
            steps = getattr(self, f"{stage}_steps")
            if sampler not in SAMPLERS:
                raise ValueError(
                    f"{stage}_sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}"
                )
            if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
                raise ValueError(
                    f"{stage}_steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}"
                )

    @property
    def model_calls_per_image(self) -> int:
        """Model forward calls per image (a base call covers the cond + uncond rows)."""
        return self.base_steps + (self.upsample_steps if self.size == 256 else 0)


@dataclass(frozen=True)
class ImageRequest:
    """One image: the English prompt actually drawn, and its seed."""

    prompt: str
    seed: int


@dataclass(frozen=True)
class Progress:
    """Progress of one `generate` call: `step` of `total` in `stage` (1-based)."""

    stage: str
    step: int
    total: int
    stage_index: int = 0
    num_stages: int = 1
    batch_index: int = 0
    num_batches: int = 1

    @property
    def stage_fraction(self) -> float:
        return self.step / self.total if self.total else 1.0

    @property
    def fraction(self) -> float:
        """Overall fraction done in [0, 1], stages and batches weighted equally."""
        per_batch = (self.stage_index + self.stage_fraction) / self.num_stages
        return (self.batch_index + per_batch) / self.num_batches


@dataclass
class Pipeline:
    """A loaded base + upsampler pair; `generate` keeps no state between calls."""

    model_name: str
    device: torch.device
    base: Text2ImUNet
    upsampler: Text2ImUNet
    tokenizer: Tokenizer
    max_batch: int = 4
    random_weights: bool = False
    # The compute dtype. float16: upstream's half layout (CUDA). bfloat16 (CPU, opt-in):
    # float32 weights, every model call under autocast to bfloat16, outputs back in float32.
    dtype: torch.dtype = field(default=torch.float32)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        """The context each model call runs in: bfloat16 autocast, else nothing."""
        if self.dtype == torch.bfloat16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def generate(
        self, requests: Sequence[ImageRequest], settings: SamplingSettings, *,
        progress: Callable[[Progress], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> list[Image.Image]:  # fmt: skip
        """Draw one image per request; the same seed gives the same image at any position."""
        settings.validate()
        for i, request in enumerate(requests):
            if not isinstance(request.seed, int) or not 0 <= request.seed <= MAX_SEED:
                raise ValueError(f"seed must be an integer from 0 to {MAX_SEED} (request {i})")
            if not isinstance(request.prompt, str):
                raise ValueError(f"prompt must be a string (request {i})")
        chunks = [requests[i : i + self.max_batch] for i in range(0, len(requests), self.max_batch)]
        images: list[Image.Image] = []
        for index, chunk in enumerate(chunks):
            images += self._generate_chunk(
                chunk, settings, progress, should_cancel, index, len(chunks)
            )
        return images

    def _tokens(self, prompts: Sequence[str], text_ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [
            padded_tokens_and_mask(self.tokenizer.encode(p), text_ctx, self.tokenizer.end_token)
            for p in prompts
        ]
        tokens = torch.tensor([r[0] for r in rows], dtype=torch.long, device=self.device)
        mask = torch.tensor([r[1] for r in rows], dtype=torch.bool, device=self.device)
        return tokens, mask

    @torch.inference_mode()
    def _generate_chunk(
        self, chunk: Sequence[ImageRequest], settings: SamplingSettings,
        progress: Callable[[Progress], None] | None, should_cancel: Callable[[], bool] | None,
        batch_index: int, num_batches: int,
    ) -> list[Image.Image]:  # fmt: skip
        n = len(chunk)
        num_stages = 2 if settings.size == 256 else 1
        # One generator per row: initial and per-step noise depend only on the row's seed.
        generators = [torch.Generator().manual_seed(r.seed) for r in chunk]

        def row_noise(size: int) -> torch.Tensor:
            noise = [torch.randn((3, size, size), generator=g) for g in generators]
            return torch.stack(noise).to(self.device)

        def checked(model_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
            def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                if should_cancel is not None and should_cancel():
                    raise Cancelled("generation cancelled")
                with self._autocast():
                    out = model_fn(x, t)
                return out.float()  # the samplers' maths stays in float32 / float64

            return call

        def reporter(stage: str, stage_index: int) -> Callable[[StepInfo], None]:
            def report(info: StepInfo) -> None:
                if progress is not None:
                    progress(
                        Progress(
                            stage,
                            info.step + 1,
                            info.total,
                            stage_index,
                            num_stages,
                            batch_index,
                            num_batches,
                        )
                    )

            return report

        # Stage 1: base model, batch [cond; uncond] with guidance (upstream's layout).
        base_cfg = self.base.cfg
        tokens, mask = self._tokens([r.prompt for r in chunk] + [""] * n, base_cfg.text_ctx)

        with self._autocast():
            base_text = self.base.text_embedding(tokens, mask)  # once per loop, not per call

        def base_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.base(x, t, tokens, mask, text=base_text)

        schedule = make_schedule(
            base_cfg.noise_schedule, respacing_for(settings.base_sampler, settings.base_steps)
        )
        noise = row_noise(base_cfg.image_size)

        def base_step_noise(_: int) -> torch.Tensor:
            step_noise = row_noise(base_cfg.image_size)
            return torch.cat([step_noise, step_noise])

        sample = SAMPLERS[settings.base_sampler](
            classifier_free_guidance(checked(base_fn), settings.guidance_scale),
            torch.cat([noise, noise]),
            schedule,
            clip_denoised=True,
            noise_sampler=base_step_noise,
            callback=reporter("base", 0),
        )[:n]
        if settings.size == 64:
            return to_images(sample)

        # Stage 2: upsampler conditioned on the 8-bit-snapped base output, no guidance.
        up_cfg = self.upsampler.cfg
        low_res = ((sample + 1) * 127.5).round() / 127.5 - 1
        up_tokens, up_mask = self._tokens([r.prompt for r in chunk], up_cfg.text_ctx)

        with self._autocast():
            up_text = self.upsampler.text_embedding(up_tokens, up_mask)

        def up_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.upsampler(x, t, up_tokens, up_mask, low_res=low_res, text=up_text)

        schedule = make_schedule(
            up_cfg.noise_schedule,
            respacing_for(settings.upsample_sampler, settings.upsample_steps, "upsample"),
        )
        sample = SAMPLERS[settings.upsample_sampler](
            checked(up_fn),
            row_noise(up_cfg.image_size) * UPSAMPLE_TEMPERATURE,
            schedule,
            clip_denoised=True,
            noise_sampler=lambda _: row_noise(up_cfg.image_size),
            callback=reporter("upsample", 1),
        )
        return to_images(sample)


def to_images(batch: torch.Tensor) -> list[Image.Image]:
    """NCHW in [-1, 1] -> RGB images: round((x + 1) * 127.5) clamped to [0, 255]."""
    data = ((batch.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    rows = data.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(row, mode="RGB") for row in rows]


def _resolve_device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use cuda, cpu or leave it unset") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if resolved.type not in ("cuda", "cpu"):
        raise UserError(f"unsupported device {device!r}; use cuda or cpu")
    return resolved


DTYPE_NAMES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
               "float32": torch.float32, "fp32": torch.float32,
               "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}  # fmt: skip


def _resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype in (None, "", "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPE_NAMES:
        raise UserError(f"unknown dtype {dtype!r}; use float16 (CUDA), float32 or bfloat16 (CPU)")
    resolved = DTYPE_NAMES[dtype]
    if resolved == torch.float16 and device.type != "cuda":
        raise UserError("float16 runs on CUDA only; use float32 or bfloat16 on the CPU")
    if resolved == torch.bfloat16 and device.type != "cpu":
        # The T4 (our GPU) has no fast bfloat16; float16 is upstream's tested half layout.
        raise UserError("bfloat16 is a CPU option (the T4 has no fast bfloat16); "
                        "use float16 or float32 on CUDA")  # fmt: skip
    return resolved


def _weight_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16 keeps upstream's half layout; bfloat16 (autocast) keeps float32 weights."""
    return torch.float16 if dtype == torch.float16 else torch.float32


def _prepare(model: Text2ImUNet, device: torch.device, dtype: torch.dtype) -> Text2ImUNet:
    model = model.float()
    if dtype == torch.float16:
        model.convert_to_fp16()
    return model.to(device).eval().requires_grad_(False)


def load_pipeline(
    model: str = "glide", *, device: str | None = None, dtype: str | None = None,
    cache_dir: Path | None = None,
) -> Pipeline:  # fmt: skip
    """Load "glide" (released weights from the cache) or "tiny" (random weights, no download)."""
    if model not in MODELS:
        raise UserError(f"unknown model {model!r}; use one of {', '.join(MODELS)}")
    dev = _resolve_device(device)
    dt = _resolve_dtype(dtype, dev)
    max_batch = 8 if dev.type == "cuda" else 4
    if model == "tiny":
        from text2img.engines.glide.tiny import tiny_models

        base, upsampler = tiny_models()
        return Pipeline("tiny", dev, _prepare(base, dev, dt), _prepare(upsampler, dev, dt),
                        ByteTokenizer(), max_batch=8, random_weights=True, dtype=dt)  # fmt: skip
    from text2img.engines.glide import weights
    from text2img.engines.glide.checkpoints import load_released

    cache = cache_dir if cache_dir is not None else weights.default_cache_dir()
    encoder_path, vocab_path = weights.tokenizer_paths(cache)
    tokenizer = BPETokenizer.from_files(encoder_path, vocab_path)
    base = load_released(cache, "base", device=dev, dtype=_weight_dtype(dt))
    upsampler = load_released(cache, "upsample", device=dev, dtype=_weight_dtype(dt))
    return Pipeline("glide", dev, base, upsampler,
                    tokenizer, max_batch=max_batch, dtype=dt)  # fmt: skip

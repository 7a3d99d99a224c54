"""Prompt -> 64x64 base (classifier-free guidance) -> 256x256 upsampler -> PIL images.

GLIDE's own two-stage pipeline, behind `engine.GlideEngine`: callers outside
engines/glide use the engine interface (`engines.base`), never this module. Defaults:
DPM-Solver++(2M) with 25 steps for the base and 15 for the upsampler, i.e. 40 model calls
per image against upstream's 127 (100 ancestral + 27 DDIM); see docs/cli.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from text2img.engines.base import (
    Cancelled,
    ImageRequest,
    Progress,
    check_requests,
)
from text2img.engines.devices import resolve_device, resolve_dtype
from text2img.engines.glide.samplers import SAMPLERS, StepInfo, classifier_free_guidance
from text2img.engines.glide.schedules import make_schedule
from text2img.engines.glide.spec import SamplingSettings
from text2img.engines.glide.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    padded_tokens_and_mask,
)
from text2img.engines.glide.unet import Text2ImUNet
from text2img.engines.guard import check_batch
from text2img.errors import UserError

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
        """Draw one image per request; the same seed gives the same image at any position.

        Every finished batch passes the output guard (`engines.guard.check_batch`): NaN or
        constant images raise BadOutput instead of being returned.
        """
        settings.validate()
        check_requests(requests)
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
                            # the model's current guess of the clean image (base rows:
                            # the guided half); pixels already, so the preview is free
                            preview=lambda: to_images(info.pred_xstart[:n]),
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
            check_batch(sample, what="GLIDE base model")
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
        check_batch(sample, what="GLIDE upsampler")
        return to_images(sample)


def to_images(batch: torch.Tensor) -> list[Image.Image]:
    """NCHW in [-1, 1] -> RGB images: round((x + 1) * 127.5) clamped to [0, 255]."""
    data = ((batch.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    rows = data.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(row, mode="RGB") for row in rows]


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
    cache_dir: Path | None = None, gpu_max_batch: int = 8,
) -> Pipeline:  # fmt: skip
    """Load "glide" (released weights from the cache) or "tiny" (random weights, no download);
    `gpu_max_batch` images per batch on CUDA (the spec's), 4 on a CPU (tiny: always)."""
    if model not in MODELS:
        raise UserError(f"unknown model {model!r}; use one of {', '.join(MODELS)}")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    max_batch = gpu_max_batch if dev.type == "cuda" else 4
    if model == "tiny":
        from text2img.engines.glide.tiny import tiny_models

        base, upsampler = tiny_models()
        return Pipeline("tiny", dev, _prepare(base, dev, dt), _prepare(upsampler, dev, dt),
                        ByteTokenizer(), max_batch=gpu_max_batch, random_weights=True,
                        dtype=dt)  # fmt: skip
    from text2img.engines.glide import cache as weights_cache
    from text2img.engines.glide.checkpoints import load_released

    cache = cache_dir if cache_dir is not None else weights_cache.default_cache_dir()
    encoder_path, vocab_path = weights_cache.tokenizer_paths(cache)
    tokenizer = BPETokenizer.from_files(encoder_path, vocab_path)
    base = load_released(cache, "base", device=dev, dtype=_weight_dtype(dt))
    upsampler = load_released(cache, "upsample", device=dev, dtype=_weight_dtype(dt))
    return Pipeline("glide", dev, base, upsampler,
                    tokenizer, max_batch=max_batch, dtype=dt)  # fmt: skip

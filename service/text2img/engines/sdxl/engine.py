"""The SDXL engine: diffusers' `StableDiffusionXLPipeline` behind `base.Engine`.

What we add around the library call, and why:
- per-image seeds: one `torch.Generator` per row draws that row's initial latents
  (passed as `latents=`), and Euler with `s_churn=0` adds no noise afterwards, so seed i
  draws the same image alone or anywhere in a batch (up to float rounding);
- progress and cancellation through `callback_on_step_end` (after every UNet call, so
  `should_cancel` is checked before each next call; once more before the first);
- chunks of at most `max_batch` images; the output guard (NaN / constant -> BadOutput);
- steps: SDXL-Lightning ships one distilled UNet per step count. A deployment serves 4
  steps only unless $TEXT2IMG_SDXL_STEPS enables 2 and 8 (spec.enabled_steps). Then a
  request for another count swaps the UNet's weights in place from the cache (same
  architecture, ~5 GB read, tensor by tensor so the GPU never holds two UNets), hashed
  while it is read, reported as the "load_unet" progress stage, cancellable between
  tensors, and timed apart (`last_setup_seconds`) so it does not inflate batch-time
  estimates. A swap that fails or is cancelled leaves the UNet marked unusable, and the
  next batch loads the one it needs. Requests batch only with equal settings.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from text2img.engines.base import (
    CancelFn,
    Cancelled,
    Engine,
    EngineSettings,
    EngineSpec,
    GeneratedImage,
    ImageRequest,
    InvalidSetting,
    Progress,
    ProgressFn,
    check_requests,
)
from text2img.engines.devices import out_of_memory_as_error, resolve_device, resolve_dtype
from text2img.engines.guard import check_batch
from text2img.engines.prompt_cut import kept_prefix
from text2img.engines.sdxl.spec import DEFAULT_STEPS, STEP_CHOICES, SdxlSettings
from text2img.errors import UserError

LATENT_CHANNELS = 4
VAE_SCALE = 8  # SDXL's VAE downsamples 8x


class SdxlEngine(Engine):
    """A loaded SDXL pipeline. `generate` keeps no per-request state on the object."""

    def __init__(
        self,
        spec: EngineSpec,
        pipe: Any,
        *,
        device: torch.device,
        dtype: torch.dtype,
        max_batch: int,
        cache_dir: Path | None = None,
        steps_loaded: int | None = None,
    ) -> None:
        self.spec = spec
        self.pipe = pipe
        self.torch_device = device
        self.torch_dtype = dtype
        self.device = device.type
        self.dtype = str(dtype).removeprefix("torch.")
        self.max_batch = max_batch
        self._cache_dir = cache_dir
        # which distilled UNet the weights are: None = one UNet serves every step count
        # (tiny), 0 = none (a swap failed or was cancelled half way: reload before use)
        self._steps_loaded = steps_loaded
        self.last_setup_seconds = 0.0  # of the last `generate`: UNet swap, not sampling
        self._lock = threading.Lock()  # the UNet swap and the pipeline call are one unit

    def generate(
        self,
        requests: Sequence[ImageRequest],
        settings: EngineSettings,
        *,
        progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
    ) -> list[GeneratedImage]:
        checked = self._check(requests, settings)
        chunks = [requests[i : i + self.max_batch] for i in range(0, len(requests), self.max_batch)]
        out: list[GeneratedImage] = []
        with self._lock, out_of_memory_as_error():
            t0 = time.perf_counter()
            self._use_steps(checked.steps, progress, should_cancel)
            self.last_setup_seconds = time.perf_counter() - t0
            for index, chunk in enumerate(chunks):
                images = self._chunk(chunk, checked, progress, should_cancel, index, len(chunks))
                out += [
                    GeneratedImage(img, r.seed, used)
                    for img, r, used in zip(images, chunk, self._drawn(chunk), strict=True)
                ]
        return out

    def _drawn(self, chunk: Sequence[ImageRequest]) -> list[str | None]:
        """The text each image was drawn from when CLIP's 77 tokens cut the prompt, else None.

        Both SDXL tokenizers truncate at their `model_max_length` (77 with the start and
        end tokens); the shorter of the two kept texts is what both encoders saw."""
        out: list[str | None] = []
        for r in chunk:
            tokenizers = (self.pipe.tokenizer, self.pipe.tokenizer_2)
            kept = [_kept_text(tok, r.prompt) for tok in tokenizers]
            cut = [k for k in kept if k is not None]
            out.append(min(cut, key=len) if cut else None)
        return out

    def _check(self, requests: Sequence[ImageRequest], settings: EngineSettings) -> SdxlSettings:
        if not isinstance(settings, SdxlSettings):
            raise InvalidSetting(
                "settings", f"model {self.name} needs SdxlSettings, got {type(settings).__name__}"
            )
        if settings.size not in self.spec.sizes:
            raise InvalidSetting("size", f"size {settings.size} is not drawn by {self.name}")
        if settings.steps not in STEP_CHOICES:
            choices = ", ".join(str(s) for s in STEP_CHOICES)
            raise InvalidSetting("steps", f"steps must be one of {choices}, got {settings.steps}")
        check_requests(requests)
        return settings

    def _use_steps(
        self, steps: int, progress: ProgressFn | None, should_cancel: CancelFn | None
    ) -> None:
        """Swap in the distilled UNet for `steps` (real weights only; call under the lock)."""
        if self._steps_loaded is None or self._steps_loaded == steps:
            return
        from text2img.engines.sdxl import files, verify
        from text2img.engines.sdxl.loading import RUN, swap_into

        hub_file = files.unet_file(steps)
        path = files.local_path(self._cache_dir, hub_file)
        if not path.exists():
            raise UserError(
                f"the {steps}-step UNet is not in the cache ({path}); run "
                f"`{RUN}` with TEXT2IMG_SDXL_STEPS set as the service has it"
            )
        hub = files.hub_cache(self._cache_dir)
        with verify.Hashing(hub, [(path, hub_file.label)], RUN):
            self._steps_loaded = 0  # being overwritten: unusable until the hash matched
            swap_into(self.pipe.unet, path, progress=progress, should_cancel=should_cancel)
        self._steps_loaded = steps

    def _latents(self, chunk: Sequence[ImageRequest], settings: SdxlSettings) -> torch.Tensor:
        """Each row's starting noise from its own seed (float32 on the CPU, then moved)."""
        shape = (LATENT_CHANNELS, settings.height // VAE_SCALE, settings.width // VAE_SCALE)
        rows = [torch.randn(shape, generator=torch.Generator().manual_seed(r.seed)) for r in chunk]
        return torch.stack(rows).to(self.torch_device, self.torch_dtype)

    @torch.inference_mode()
    def _chunk(
        self, chunk: Sequence[ImageRequest], settings: SdxlSettings,
        progress: ProgressFn | None, should_cancel: CancelFn | None,
        batch_index: int, num_batches: int,
    ) -> list[Image.Image]:  # fmt: skip
        def on_step(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if progress is not None:
                latents = kwargs.get("latents")
                progress(
                    Progress(
                        "denoise", i + 1, settings.steps, 0, 1, batch_index, num_batches,
                        preview=None if latents is None else lambda: latent_preview(latents),
                    )
                )  # fmt: skip
            if should_cancel is not None and should_cancel():
                raise Cancelled("generation cancelled")
            return {}

        if should_cancel is not None and should_cancel():
            raise Cancelled("generation cancelled")
        result = self.pipe(
            prompt=[r.prompt for r in chunk],
            height=settings.height,
            width=settings.width,
            num_inference_steps=settings.steps,
            guidance_scale=0.0,
            latents=self._latents(chunk, settings),
            output_type="pt",
            callback_on_step_end=on_step,
        )
        images = result.images  # NCHW in [0, 1]
        check_batch(images, value_range=1.0, what=f"model {self.name}")
        return to_pil(images)


# SDXL latents -> approximate RGB by one linear map (no VAE call): the factors ComfyUI
# uses for its SDXL live previews (comfy/latent_formats.py, SDXL.latent_rgb_factors)
_LATENT_RGB = ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068),
               (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188))  # fmt: skip
_LATENT_RGB_BIAS = (0.1084, -0.0175, -0.0011)


def latent_preview(latents: torch.Tensor) -> list[Image.Image]:
    """A cheap preview of NCHW latents: 1/8 of the size, colours approximate."""
    factors = torch.tensor(_LATENT_RGB, dtype=torch.float32, device=latents.device)
    bias = torch.tensor(_LATENT_RGB_BIAS, dtype=torch.float32, device=latents.device)
    rgb = torch.einsum("nchw,cr->nrhw", latents.float(), factors) + bias[None, :, None, None]
    return to_pil(((rgb + 1) / 2).clamp(0, 1))


def _kept_text(tokenizer: Any, prompt: str) -> str | None:
    """The part of `prompt` that `tokenizer` keeps: the pipeline truncates at
    `model_max_length` tokens, the start and end tokens included."""
    limit = int(tokenizer.model_max_length) - 2
    return kept_prefix(prompt, lambda text: len(tokenizer.tokenize(text)), limit)


def to_pil(batch: torch.Tensor) -> list[Image.Image]:
    """NCHW in [0, 1] -> RGB images: round(x * 255)."""
    data = (batch.float() * 255).round().clamp(0, 255).to(torch.uint8)
    return [Image.fromarray(row, mode="RGB") for row in data.permute(0, 2, 3, 1).cpu().numpy()]


def _pipeline(components: dict[str, Any]) -> Any:
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**components, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)  # type: ignore[attr-defined]
    return pipe


def load(
    spec: EngineSpec, *, device: str | None = None, dtype: str | None = None,
    cache_dir: Path | None = None,
) -> SdxlEngine:  # fmt: skip
    """`tiny-sdxl`: random weights built in-process. `sdxl-lightning`: the pinned weights
    from the cache (UserError with what to run when they are missing or damaged)."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if spec.random_weights:
        from text2img.engines.sdxl.tiny import build_components

        parts = build_components(dt)
        pipe = _pipeline(
            {k: v.to(dev) if isinstance(v, torch.nn.Module) else v for k, v in parts.items()}
        )
        return SdxlEngine(spec, pipe, device=dev, dtype=dt, max_batch=spec.gpu_max_batch)
    from text2img.engines.sdxl import files, weights
    from text2img.engines.sdxl.loading import load_components

    cache = cache_dir if cache_dir is not None else files.default_cache_dir()
    weights.require(cache)
    pipe = _pipeline(load_components(cache, dev, dt, DEFAULT_STEPS))
    if dev.type == "cuda":
        pipe.vae.enable_slicing()  # decode one image at a time: the VAE's peak is per image
    return SdxlEngine(
        spec, pipe, device=dev, dtype=dt, max_batch=spec.gpu_max_batch if dev.type == "cuda" else 2,
        cache_dir=cache, steps_loaded=DEFAULT_STEPS,
    )  # fmt: skip

"""GLIDE behind the engine interface: `load` for the registry, `GlideEngine.generate`.

A thin layer over `pipeline.Pipeline` (which keeps GLIDE's two stages, samplers and
upsampler to itself): the service sees sizes, settings and images with their seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from text2img.engines.base import (
    CancelFn,
    Engine,
    EngineSettings,
    EngineSpec,
    GeneratedImage,
    ImageRequest,
    InvalidSetting,
    ProgressFn,
)
from text2img.engines.devices import out_of_memory_as_error
from text2img.engines.glide.pipeline import Pipeline, load_pipeline
from text2img.engines.glide.spec import SamplingSettings
from text2img.engines.prompt_cut import kept_prefix


class GlideEngine(Engine):
    """A loaded GLIDE pair ("glide": released weights; "tiny": random weights)."""

    def __init__(self, spec: EngineSpec, pipeline: Pipeline) -> None:
        self.spec = spec
        self.pipeline = pipeline
        self.device = pipeline.device.type
        self.dtype = str(pipeline.dtype).removeprefix("torch.")

    @property
    def max_batch(self) -> int:
        """Images per sampling batch; the pipeline chunks by it (the service may lower it)."""
        return self.pipeline.max_batch

    @max_batch.setter
    def max_batch(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"max_batch must be at least 1, got {value}")
        self.pipeline.max_batch = value

    def generate(
        self,
        requests: Sequence[ImageRequest],
        settings: EngineSettings,
        *,
        progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
    ) -> list[GeneratedImage]:
        if not isinstance(settings, SamplingSettings):
            raise InvalidSetting(
                "settings",
                f"model {self.name} needs settings from its own spec "
                f"(registry.get_spec({self.name!r}).settings(...)), got {type(settings).__name__}",
            )
        with out_of_memory_as_error():
            images = self.pipeline.generate(
                requests, settings, progress=progress, should_cancel=should_cancel
            )
        # both stages read the first `text_ctx` tokens of the prompt (128 in GLIDE)
        limit = min(self.pipeline.base.cfg.text_ctx, self.pipeline.upsampler.cfg.text_ctx)

        def count(text: str) -> int:
            return len(self.pipeline.tokenizer.encode(text))

        return [
            GeneratedImage(image, r.seed, kept_prefix(r.prompt, count, limit))
            for image, r in zip(images, requests, strict=True)
        ]


def load(
    spec: EngineSpec,
    *,
    device: str | None = None,
    dtype: str | None = None,
    cache_dir: Path | None = None,
) -> GlideEngine:
    """The registry's loader for "glide" and "tiny" (UserError with what to run)."""
    pipeline = load_pipeline(
        spec.name, device=device, dtype=dtype, cache_dir=cache_dir, gpu_max_batch=spec.gpu_max_batch
    )
    return GlideEngine(spec, pipeline)

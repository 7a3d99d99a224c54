"""The one interface every caller (service, scheduler, CLI, benchmarks) uses for a model.

Two halves, so that validation never needs torch:

- `EngineSpec` (torch-free): what an engine draws and accepts. Its name, native sizes
  and size aliases, its options with defaults and limits, and `settings(**options)`,
  which builds the engine's own frozen settings dataclass (everything that must be
  equal for requests to share a batch) or raises `InvalidSetting` naming the field.
- `Engine` (loaded): the model on its device; `generate(requests, settings, ...)`
  draws one image per request and returns it with its seed. Seed i draws the same
  image alone or in a batch (up to float rounding), progress is reported per model
  call, `should_cancel` is checked before every model call (`Cancelled`), and a batch
  that comes out constant or non-finite raises `BadOutput` instead of being returned.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from PIL import Image

MAX_SEED = 2**63 - 1  # the largest seed an engine draws (torch generators take 64 bits)


class Cancelled(Exception):
    """Raised by `Engine.generate` when `should_cancel()` returned true."""


class BadOutput(RuntimeError):
    """A generated batch was constant or not finite: damaged weights or an fp16 overflow.

    Never returned as a success; the service answers 500 `bad_output` with what to run.
    """


class OutOfMemory(RuntimeError):
    """The batch did not fit in the device's memory (the engine raises it, wrapping e.g.
    torch.cuda.OutOfMemoryError, so that callers never import torch); a smaller batch
    may fit."""


class InvalidSetting(ValueError):
    """A request option the engine does not accept; `param` names the field."""

    def __init__(self, param: str, message: str, code: str = "invalid_settings") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True)
class ImageRequest:
    """One image: the English prompt actually drawn, and its seed."""

    prompt: str
    seed: int


def check_requests(requests: Sequence[ImageRequest]) -> None:
    """InvalidSetting naming the first request whose seed or prompt no engine can draw."""
    for i, r in enumerate(requests):
        if isinstance(r.seed, bool) or not isinstance(r.seed, int) or not 0 <= r.seed <= MAX_SEED:
            raise InvalidSetting(
                "seed", f"seed must be an integer from 0 to {MAX_SEED} (image {i})"
            )
        if not isinstance(r.prompt, str):
            raise InvalidSetting("prompt", f"prompt must be a string (image {i})")


@dataclass(frozen=True)
class GeneratedImage:
    """One result of `Engine.generate`, in request order."""

    image: Image.Image
    seed: int
    # the text actually drawn when the engine cut the prompt (e.g. CLIP's 77 tokens);
    # None when the whole prompt was drawn
    prompt_used: str | None = None


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
    # a cheap look at the images so far, one per request of this call in order (a preview
    # decode: noisy, possibly smaller); called only when someone streams partial images
    preview: Callable[[], list[Image.Image]] | None = field(default=None, compare=False, repr=False)

    @property
    def stage_fraction(self) -> float:
        return self.step / self.total if self.total else 1.0

    @property
    def fraction(self) -> float:
        """Overall fraction done in [0, 1], stages and batches weighted equally."""
        per_batch = (self.stage_index + self.stage_fraction) / self.num_stages
        return (self.batch_index + per_batch) / self.num_batches


class EngineSettings(Protocol):
    """What the service needs of an engine's frozen settings dataclass."""

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def model_calls_per_image(self) -> int: ...

    def __hash__(self) -> int: ...


@dataclass(frozen=True)
class Option:
    """One request option an engine accepts: the API field, the CLI flag
    (`--name-with-dashes`), a control in the web UI. Its type is its default's: int,
    float or str. `minimum`/`maximum`/`choices` are shown to people (OpenAPI, --help,
    /v1/models); `EngineSpec.settings` is what enforces them."""

    name: str  # the API field: "steps", "guidance_scale", "sampler", "upsample_steps", ...
    default: int | float | str
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    label: str = ""  # short Japanese label for the web UI ("ステップ数")
    aliases: tuple[str, ...] = ()  # older names the CLI still accepts ("base_steps")

    def __post_init__(self) -> None:
        kind = type(self.default)
        if kind not in (int, float, str):
            raise TypeError(f"option {self.name}: default must be an int, float or str")

    @property
    def kind(self) -> type:
        """int, float or str: what a value of this option must be."""
        return type(self.default)

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"default": self.default, "description": self.description}
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.label:
            out["label"] = self.label
        return out


def parse_size(text: str) -> tuple[int, int]:
    """ "1024x768" -> (1024, 768); ValueError for anything else."""
    width, sep, height = text.partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise ValueError(f"size must look like WIDTHxHEIGHT, got {text!r}")
    return int(width), int(height)


@dataclass(frozen=True)
class EngineSpec(ABC):
    """What an engine draws and accepts; importing it never imports torch."""

    name: str  # registry name: "glide", "tiny", "sdxl-lightning", "tiny-sdxl"
    family: str  # "glide" | "sdxl": the code that draws
    title: str  # one line for people: "GLIDE (filtered), OpenAI 2021"
    licence: str  # the weights' licence, named at download and in /v1/models
    random_weights: bool  # True: a smoke-test model whose images are noise
    sizes: tuple[str, ...]  # native sizes, "WxH"
    default_size: str
    options: tuple[Option, ...]  # every accepted option besides size
    # other accepted sizes (OpenAI's, "auto") -> the native size actually drawn
    size_aliases: Mapping[str, str] = field(default_factory=dict)
    download_bytes: int = 0  # disk the weights take in the cache (0: nothing to fetch)
    # the files a start reads, as `find -path` patterns relative to the cache root; the VM
    # reads them into the page cache before the service starts (instance metadata
    # `text2img-prefetch`, one pattern a line)
    prefetch: tuple[str, ...] = ()
    # environment variables a deployment may set for this engine (`text2img download` and
    # the service both read them; the VM gets them as instance metadata
    # `text2img-model-env`, KEY=VALUE a line)
    deploy_env: tuple[str, ...] = ()
    # the `Progress.stage` names `generate` reports, in order -> a short Japanese label
    stages: Mapping[str, str] = field(default_factory=dict)
    # images one sampling batch takes on one GPU (T4 16 GB / L4 24 GB, fp16): the engine's
    # CUDA batch limit, and the requests one Cloud Run GPU instance is given at once
    gpu_max_batch: int = 1

    def download_bytes_for_env(self, env: Mapping[str, str]) -> int:
        """Bytes the weights take in the cache for a deployment with this environment
        (`deploy_env` values); UserError naming the variable when a value is not valid."""
        return self.download_bytes

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)

    def resolve_size(self, size: str | None) -> str:
        """The native size drawn for a requested size; InvalidSetting("size") otherwise."""
        if size is None:
            return self.default_size
        if size in self.sizes:
            return size
        if size in self.size_aliases:
            return self.size_aliases[size]
        accepted = ", ".join([*self.sizes, *self.size_aliases])
        raise InvalidSetting(
            "size",
            f"size {size!r} is not drawn by model {self.name}; use one of {accepted}",
            code="unsupported_size",
        )

    def check_option_names(self, options: Mapping[str, Any]) -> None:
        """InvalidSetting naming the first option this engine does not have."""
        for key in options:
            if key != "size" and key not in self.option_names:
                accepted = ", ".join(["size", *self.option_names])
                raise InvalidSetting(
                    key,
                    f"{key} is not a setting of model {self.name}; it accepts {accepted}",
                    code="unsupported_parameter",
                )

    def weights_key(self, settings: EngineSettings) -> Hashable | None:
        """What must be on the device to draw with `settings`, where that differs between
        requests (SDXL-Lightning: one UNet per step count); None when this engine draws
        every setting with the weights it has. The queue prefers batches that need no
        swap, within a bound (api.batching)."""
        return None

    @abstractmethod
    def settings(self, **options: Any) -> EngineSettings:
        """The frozen settings for these request options (None = default).

        Raises InvalidSetting (with `param`) for an unknown option, a size it does not
        draw, or a value out of range.
        """

    def public(self) -> dict[str, Any]:
        """What `GET /v1/models` and the web UI show about this engine."""
        return {
            "id": self.name,
            "family": self.family,
            "title": self.title,
            "licence": self.licence,
            "random_weights": self.random_weights,
            "sizes": list(self.sizes),
            "size_aliases": dict(self.size_aliases),
            "default_size": self.default_size,
            "options": {o.name: o.public() for o in self.options},
            "stages": dict(self.stages),
        }


ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


class Engine(ABC):
    """A loaded model. `generate` keeps no per-request state on the object."""

    spec: EngineSpec
    device: str  # "cuda" | "cpu" (torch.device type)
    dtype: str  # "float16" | "float32" | "bfloat16"
    max_batch: int  # images per sampling batch this device handles
    # seconds of the last `generate` spent preparing weights (SDXL's UNet swap), not
    # sampling: the queue leaves them out of its batch-time estimate (Retry-After)
    last_setup_seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    @abstractmethod
    def generate(
        self,
        requests: Sequence[ImageRequest],
        settings: EngineSettings,
        *,
        progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
    ) -> list[GeneratedImage]:
        """Draw one image per request, in order; chunks by `max_batch` itself.

        Raises Cancelled, InvalidSetting (settings of another engine, bad seed),
        BadOutput, OutOfMemory (the caller retries smaller batches).
        """

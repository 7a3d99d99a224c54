"""Engine name -> where its spec, loader and weights live; imports an engine only when chosen.

A plain table like diffusers' auto-pipeline mappings: `--help`, the gateway and the infra
import this module without importing torch or diffusers. A new model is a new folder
under engines/ and one line here.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from text2img.errors import UserError

if TYPE_CHECKING:
    from text2img.engines.base import Engine, EngineSpec, Option


class WeightStatus(Protocol):
    """One file or part of an engine's weights in the cache."""

    @property
    def ok(self) -> bool: ...

    @property
    def state(self) -> str: ...  # "ok" | "missing" | "damaged" | "partial"

    @property
    def size(self) -> int | None: ...

    def line(self) -> str: ...


class WeightsModule(Protocol):
    """What a `Registration.weights` module provides (`text2img download --model NAME`)."""

    def ensure(self, cache_dir: Path, *, progress: bool = True, force: bool = False) -> None:
        """Download what is missing (resumable), verify, convert; UserError on failure."""

    def status(self, cache_dir: Path, *, deep: bool = True) -> list[WeightStatus]:
        """What is present and intact; `deep` re-hashes files."""


@dataclass(frozen=True)
class Registration:
    spec: str  # "module:attribute" -> EngineSpec (torch-free module)
    loader: str  # "module:function" -> f(spec, *, device, dtype, cache_dir) -> Engine
    weights: str | None = None  # module implementing WeightsModule; None: nothing to fetch


ENGINES: dict[str, Registration] = {
    "glide": Registration(
        "text2img.engines.glide.spec:GLIDE",
        "text2img.engines.glide.engine:load",
        "text2img.engines.glide.weights",
    ),
    "tiny": Registration("text2img.engines.glide.spec:TINY", "text2img.engines.glide.engine:load"),
    "sdxl-lightning": Registration(
        "text2img.engines.sdxl.spec:SDXL_LIGHTNING",
        "text2img.engines.sdxl.engine:load",
        "text2img.engines.sdxl.weights",
    ),
    "tiny-sdxl": Registration(
        "text2img.engines.sdxl.spec:TINY_SDXL", "text2img.engines.sdxl.engine:load"
    ),
}
MODEL_NAMES = tuple(ENGINES)
DEFAULT_MODEL = "glide"


def names() -> tuple[str, ...]:
    """The registered models, read at call time (tests register more in ENGINES)."""
    return tuple(ENGINES)


def options_by_name() -> dict[str, list[tuple[str, Option]]]:
    """Every option any registered engine accepts: name -> [(model, its Option)], in
    registry order; the CLI's flags and the API's "not a setting of this model" come
    from it."""
    out: dict[str, list[tuple[str, Option]]] = {}
    for model in ENGINES:
        for option in get_spec(model).options:
            out.setdefault(option.name, []).append((model, option))
    return out


CACHE_ENV = "TEXT2IMG_MODEL_CACHE"


def default_cache_dir() -> Path:
    """The one weights cache every engine shares: $TEXT2IMG_MODEL_CACHE, else
    $XDG_CACHE_HOME/text2img, else ~/.cache/text2img."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "text2img"


def _registration(name: str) -> Registration:
    try:
        return ENGINES[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}; use one of {', '.join(ENGINES)}") from None


def _resolve(path: str) -> Any:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def get_spec(name: str) -> EngineSpec:
    """The engine's spec (sizes, options, settings builder); never imports torch."""
    return _resolve(_registration(name).spec)


def weights_module(name: str) -> WeightsModule | None:
    """The engine's weights module, or None when it downloads nothing (random weights)."""
    path = _registration(name).weights
    return None if path is None else importlib.import_module(path)


def load_engine(
    name: str,
    *,
    device: str | None = None,
    dtype: str | None = None,
    cache_dir: Path | None = None,
) -> Engine:
    """Load the engine on `device` (None: CUDA when present) in `dtype` (None: the device's
    default). Weights come from `cache_dir` (None: the shared default cache); UserError
    with what to run (`text2img download --model NAME`) when they are missing or damaged."""
    registration = _registration(name)
    loader = _resolve(registration.loader)
    return loader(get_spec(name), device=device, dtype=dtype, cache_dir=cache_dir)

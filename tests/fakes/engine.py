"""A test-only third engine, "swatch": plain colour fields, no torch, nothing to download.

Registered through `text2img.engines.registry` exactly as a real engine is (a spec and a
loader named by "module:attribute"), it proves that the API, the CLI and /v1/models take
a new engine from its spec alone. It also serves the queue's unit tests: it records each
batch, can hold a batch until released, fail, or run out of memory above a batch size.
"""

from __future__ import annotations

import colorsys
import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from text2img.engines import registry
from text2img.engines.base import (
    CancelFn,
    Cancelled,
    Engine,
    EngineSettings,
    EngineSpec,
    GeneratedImage,
    ImageRequest,
    InvalidSetting,
    Option,
    OutOfMemory,
    Progress,
    ProgressFn,
    parse_size,
)

FINISHES = ("matte", "gloss")
MAX_WORDS = 6  # like CLIP's 77 tokens: a longer prompt is cut, and the engine says so


@dataclass(frozen=True)
class SwatchSettings:
    width: int = 32
    height: int = 32
    hue: int = 200
    finish: str = "matte"
    coats: int = 2

    @property
    def model_calls_per_image(self) -> int:
        return self.coats


@dataclass(frozen=True)
class SwatchSpec(EngineSpec):
    def weights_key(self, settings: EngineSettings) -> Hashable | None:
        """Each finish is its own tin of paint: changing it is a weight swap (as SDXL's
        step counts are), which the queue avoids where it fairly can."""
        return settings.finish if isinstance(settings, SwatchSettings) else None

    def settings(self, **options: Any) -> SwatchSettings:
        self.check_option_names(options)
        width, height = parse_size(self.resolve_size(options.get("size")))
        value = {o.name: o.default for o in self.options}
        value.update({k: v for k, v in options.items() if k != "size" and v is not None})
        hue, finish, coats = value["hue"], value["finish"], value["coats"]
        if not isinstance(hue, int) or isinstance(hue, bool) or not 0 <= hue <= 359:
            raise InvalidSetting("hue", f"hue must be an integer from 0 to 359, got {hue!r}")
        if finish not in FINISHES:
            raise InvalidSetting("finish", f"finish must be one of {', '.join(FINISHES)}")
        if not isinstance(coats, int) or isinstance(coats, bool) or not 1 <= coats <= 5:
            raise InvalidSetting("coats", f"coats must be an integer from 1 to 5, got {coats!r}")
        return SwatchSettings(width, height, hue, finish, coats)


SWATCH = SwatchSpec(
    name="swatch",
    family="swatch",
    title="swatch: plain colour fields (tests only)",
    licence="none (test engine)",
    random_weights=True,
    sizes=("32x32", "48x32"),
    default_size="32x32",
    options=(
        Option("hue", 200, "Hue of the colour field, in degrees.", 0, 359, label="色相"),
        Option("finish", "matte", "Surface finish.", choices=FINISHES, label="仕上げ"),
        Option("coats", 2, "Coats of paint (one model call each).", 1, 5, label="塗り回数"),
    ),
    size_aliases={"auto": "32x32"},
    stages={"paint": "塗装"},
)


@dataclass
class SwatchEngine(Engine):
    """Draws each request as a colour field; fault switches for the queue's tests."""

    spec: EngineSpec = SWATCH
    device: str = "cpu"
    dtype: str = "float32"
    max_batch: int = 4
    oom_above: int | None = None  # batches larger than this raise OutOfMemory
    fail_next: Exception | None = None  # raised once by the next generate
    hold: threading.Event | None = None  # while set and not released, a batch waits
    batches: list[list[ImageRequest]] = field(default_factory=list)
    settings_seen: list[EngineSettings] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)  # a batch has begun
    setup_s: float = 0.0  # seconds each generate spends "swapping weights" first
    swap_s: float = 0.0  # seconds a change of finish (the swatch's weights) costs
    loaded_finish: str | None = None  # the finish of the last batch
    swaps: int = 0  # batches that changed the finish

    def generate(
        self,
        requests: Sequence[ImageRequest],
        settings: EngineSettings,
        *,
        progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
    ) -> list[GeneratedImage]:
        if not isinstance(settings, SwatchSettings):
            raise InvalidSetting("settings", f"swatch needs SwatchSettings, got {settings!r}")
        self.batches.append(list(requests))
        self.settings_seen.append(settings)
        self.started.set()
        t0 = time.perf_counter()
        time.sleep(self.setup_s)
        if self.loaded_finish not in (None, settings.finish):
            self.swaps += 1
            time.sleep(self.swap_s)
        self.loaded_finish = settings.finish
        self.last_setup_seconds = time.perf_counter() - t0
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        if self.oom_above is not None and len(requests) > self.oom_above:
            raise OutOfMemory(f"{len(requests)} images do not fit")
        for coat in range(settings.coats):
            if should_cancel is not None and should_cancel():
                raise Cancelled("cancelled")
            if self.hold is not None:
                while not self.hold.wait(0.01):
                    if should_cancel is not None and should_cancel():
                        raise Cancelled("cancelled")
            if progress is not None:
                progress(Progress("paint", coat + 1, settings.coats))
        return [self._draw(r, settings) for r in requests]

    @staticmethod
    def _draw(request: ImageRequest, settings: SwatchSettings) -> GeneratedImage:
        light = 0.35 if settings.finish == "matte" else 0.6
        r, g, b = colorsys.hls_to_rgb(settings.hue / 360, light, 0.8)
        shade = request.seed % 32
        colour = (int(r * 223) + shade, int(g * 223) + shade, int(b * 223) + shade)
        image = Image.new("RGB", (settings.width, settings.height), colour)
        words = request.prompt.split()
        cut = " ".join(words[:MAX_WORDS]) if len(words) > MAX_WORDS else None
        return GeneratedImage(image, request.seed, prompt_used=cut)


def load(
    spec: EngineSpec,
    *,
    device: str | None = None,
    dtype: str | None = None,
    cache_dir: Path | None = None,
) -> SwatchEngine:
    """The registry's loader."""
    return SwatchEngine(spec=spec)


REGISTRATION = registry.Registration("tests.fakes.engine:SWATCH", "tests.fakes.engine:load")


class EngineDouble:
    """A real engine behind a test double: the double defines `generate` (and what it
    records); every other attribute is the inner engine's, so whatever the Engine
    contract gains passes through. `max_batch` is the double's own: the service may lower
    it."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.max_batch = inner.max_batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

"""GPU idle time spent on image encoding: encoded on the GPU worker thread vs off it.

The real `api.scheduler.Scheduler` drives a stand-in GPU engine whose `generate` waits
GPU_S seconds per batch (as a CUDA synchronize does: the GIL is released) and returns
BATCH 1024x1024 images (smooth gradients plus sensor-like noise, so PNG/WebP work about as
hard as on a photo). JOBS jobs of BATCH images each are queued at once, so a batch is
always waiting. "GPU idle" is the share of the span from the first batch's start to the
last batch's end in which no batch was running. Before: `encode_threads=0` (the images of
a batch are encoded on the worker thread before it takes the next batch, as the service
did until now); after: `encode_threads=1` (the service's setting: one encoder thread, so
the thread that feeds the GPU keeps a core of its own).
Env: BENCH_GPU_S (default 2.0), BENCH_JOBS (4), BENCH_FORMATS ("png,webp").
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence

from PIL import Image

from text2img.api.jobs import Job
from text2img.api.scheduler import Scheduler
from text2img.api.state import encode_job_image
from text2img.engines.base import (
    CancelFn,
    Engine,
    EngineSettings,
    GeneratedImage,
    ImageRequest,
    ProgressFn,
)
from text2img.engines.registry import get_spec

GPU_S = float(os.environ.get("BENCH_GPU_S", "2.0"))
JOBS = int(os.environ.get("BENCH_JOBS", "4"))
FORMATS = os.environ.get("BENCH_FORMATS", "png,webp").split(",")
BATCH = 4
SIZE = 1024


def picture(seed: int) -> Image.Image:
    """A photo-like 1024x1024 RGB image: gradients with noise (not flat, not pure noise)."""
    x = Image.linear_gradient("L").resize((SIZE, SIZE)).rotate(seed * 37 % 360)
    y = Image.radial_gradient("L").resize((SIZE, SIZE))
    noise = Image.effect_noise((SIZE, SIZE), 24)
    return Image.merge("RGB", (x, y, Image.blend(x, noise, 0.5)))


class StandInGpu(Engine):
    """Waits GPU_S per batch, like a GPU the worker thread waits on; records busy spans."""

    def __init__(self) -> None:
        self.spec = get_spec("tiny-sdxl")
        self.device, self.dtype, self.max_batch = "cuda", "float16", BATCH
        self.images = [picture(i) for i in range(BATCH)]
        self.spans: list[tuple[float, float]] = []

    def generate(
        self,
        requests: Sequence[ImageRequest],
        settings: EngineSettings,
        *,
        progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
    ) -> list[GeneratedImage]:
        start = time.perf_counter()
        time.sleep(GPU_S)
        self.spans.append((start, time.perf_counter()))
        return [GeneratedImage(self.images[i % BATCH], r.seed) for i, r in enumerate(requests)]


def run(output_format: str, encode_threads: int) -> tuple[float, float]:
    """(GPU idle share, seconds until the last job finished) for one setting."""
    engine = StandInGpu()
    scheduler = Scheduler(
        engine,
        queue_limit=JOBS,
        encode=encode_job_image,
        batch_window_s=0.0,
        encode_threads=encode_threads,
    )
    settings = engine.spec.settings()
    jobs = [
        Job("a photo", settings, list(range(BATCH)), 600.0, output_format=output_format)
        for _ in range(JOBS)
    ]
    done = threading.Event()
    t0 = time.perf_counter()
    for job in jobs:
        scheduler.submit(job)
    scheduler.start()
    while not all(j.finished for j in jobs):
        done.wait(0.01)
    total = time.perf_counter() - t0
    scheduler.stop(10)
    busy = sum(end - start for start, end in engine.spans)
    span = engine.spans[-1][1] - engine.spans[0][0]
    return 1.0 - busy / span, total


def main() -> int:
    print(f"stand-in GPU: {GPU_S:.1f} s per batch of {BATCH} {SIZE}x{SIZE}; {JOBS} batches queued")
    for fmt in FORMATS:
        image = picture(0)
        t = time.perf_counter()
        size = len(encode_job_image(Job("x", get_spec("tiny-sdxl").settings(), [0], 1.0,
                                        output_format=fmt), image))  # fmt: skip
        per_image = time.perf_counter() - t
        idle_before, total_before = run(fmt, encode_threads=0)
        idle_after, total_after = run(fmt, encode_threads=1)
        print(
            f"{fmt}: encode {per_image:.2f} s/image ({size / 1e6:.1f} MB); GPU idle "
            f"{idle_before:.1%} on the worker thread -> {idle_after:.1%} off it; "
            f"all jobs done {total_before:.1f} s -> {total_after:.1f} s "
            f"({total_before / total_after:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

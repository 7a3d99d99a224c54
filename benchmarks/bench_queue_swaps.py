"""UNet swaps and time to drain a mixed SDXL-Lightning queue: first come, first served
vs the queue's preference for the loaded weights (api.batching, MAX_BYPASS passes).

The real `api.scheduler.Scheduler` drives a stand-in GPU with the real sdxl-lightning spec
(TEXT2IMG_SDXL_STEPS=2,4,8, so its `weights_key` is the step count) and its T4 batch limit
(`gpu_max_batch`). A batch waits BATCH_S; a batch whose step count differs from the last
one first waits SWAP_S (a UNet swap: ~5 GB read and hashed). Both are scaled from T4
guesses (about 2.5 s per 4-step image, 20 s per swap: no GPU has measured them yet), so
the ratio, not the seconds, is the figure. JOBS single-image requests with a seeded mix of
step counts (60% 4, 20% 2, 20% 8) and the three common sizes, in two patterns: a burst
(all queued at once) and a stream (one every GAP x BATCH_S: a group taking turns, the
queue a few deep).
Baseline: the same scheduler with MAX_BYPASS = 0 (strict order). Reported: swaps, time to
drain, and the longest a request waited (the cost of the preference to the unlucky one).
Env: BENCH_GAP (default 1.2), BENCH_JOBS (24), BENCH_BATCH_S (0.025 per image),
BENCH_SWAP_S (0.2), BENCH_SEED (7).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence

from PIL import Image

os.environ["TEXT2IMG_SDXL_STEPS"] = "2,4,8"  # before the spec reads it

from text2img.api import batching
from text2img.api.jobs import Job
from text2img.api.scheduler import Scheduler
from text2img.engines.base import (
    CancelFn,
    Engine,
    EngineSettings,
    GeneratedImage,
    ImageRequest,
    ProgressFn,
)
from text2img.engines.registry import get_spec

JOBS = int(os.environ.get("BENCH_JOBS", "24"))
BATCH_S = float(os.environ.get("BENCH_BATCH_S", "0.025"))  # per image in the batch
SWAP_S = float(os.environ.get("BENCH_SWAP_S", "0.2"))
SEED = int(os.environ.get("BENCH_SEED", "7"))
GAP = float(os.environ.get("BENCH_GAP", "1.2"))
SIZES = ("1024x1024", "1216x832", "832x1216")


class StandInGpu(Engine):
    def __init__(self) -> None:
        self.spec = get_spec("sdxl-lightning")
        self.device, self.dtype = "cuda", "float16"
        self.max_batch = self.spec.gpu_max_batch
        self.loaded: object = None
        self.swaps = 0
        self.image = Image.new("RGB", (8, 8))

    def generate(
        self,
        requests: Sequence[ImageRequest],
        settings: EngineSettings,
        *,
        progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
    ) -> list[GeneratedImage]:
        key = self.spec.weights_key(settings)
        if self.loaded is not None and key != self.loaded:
            self.swaps += 1
            time.sleep(SWAP_S)
        self.loaded = key
        time.sleep(BATCH_S * len(requests))
        return [GeneratedImage(self.image, r.seed) for r in requests]


def requests() -> list[tuple[int, str]]:
    rng = random.Random(SEED)
    return [(rng.choices((4, 2, 8), (6, 2, 2))[0], rng.choice(SIZES)) for _ in range(JOBS)]


def run(max_bypass: int, gap_s: float) -> tuple[int, float, float]:
    """(swaps, seconds to drain the queue, longest wait of one request) for one setting."""
    batching.MAX_BYPASS = max_bypass
    engine = StandInGpu()
    scheduler = Scheduler(engine, queue_limit=JOBS, encode=lambda job, image: b"",
                          batch_window_s=0.0)  # fmt: skip
    jobs = [
        Job("a photo", engine.spec.settings(steps=steps, size=size), [i], 600.0)
        for i, (steps, size) in enumerate(requests())
    ]
    t0 = time.perf_counter()
    scheduler.start()
    for job in jobs:
        job.created = time.time()
        scheduler.submit(job)
        time.sleep(gap_s)
    while not all(j.finished for j in jobs):
        time.sleep(0.005)
    total = time.perf_counter() - t0
    scheduler.stop(10)
    assert all(j.state.value == "succeeded" for j in jobs)
    longest = max((j.finished_at or 0.0) - j.created for j in jobs)
    return engine.swaps, total, longest


def main() -> int:
    default = batching.MAX_BYPASS
    print(f"{JOBS} requests (steps 4/2/8 at 6:2:2, three sizes), batch limit "
          f"{get_spec('sdxl-lightning').gpu_max_batch}, {BATCH_S:.3f} s/image, "
          f"{SWAP_S:.2f} s/swap")  # fmt: skip
    stream = f"stream, one per {GAP:g} images' time"
    for pattern, gap_s in (("burst", 0.0), (stream, GAP * BATCH_S)):
        fifo = run(0, gap_s)
        ours = run(default, gap_s)
        print(f"{pattern}:")
        for name, result in (("strict order", fifo), (f"MAX_BYPASS={default}", ours)):
            swaps, total, longest = result
            print(f"  {name:13s} {swaps:2d} swaps, drained in {total:.2f} s, "
                  f"longest wait {longest:.2f} s")  # fmt: skip
        print(f"  ratio: {fifo[1] / ours[1]:.2f}x faster to drain, {fifo[0]}/{ours[0]} swaps; "
              f"longest wait {ours[2] / fifo[2]:.2f}x of strict order's")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

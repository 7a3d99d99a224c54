"""Engine overhead: `tiny-sdxl` through our engine vs the same diffusers pipeline called directly.

Both sides run the very same `StableDiffusionXLPipeline` object in this process, at
1024x1024 with 4 steps, one image, guidance 0, PIL output. Ours adds per-row seeded
latents, the per-step callback (progress + cancellation check), the output guard and the
PIL conversion. Runs alternate (direct, ours, direct, ...) after one warm-up each;
medians of REPEAT. Target: ours / direct <= 1.05.
Threads: torch.set_num_threads(THREADS) (default 1: the shared 2-core machine).
"""

from __future__ import annotations

import os
import statistics
import time

REPEAT = int(os.environ.get("BENCH_REPEAT", "7"))
THREADS = int(os.environ.get("BENCH_THREADS", "1"))


def main() -> int:
    import torch

    torch.set_num_threads(THREADS)
    from text2img.engines.base import ImageRequest
    from text2img.engines.registry import get_spec, load_engine

    engine = load_engine("tiny-sdxl", device="cpu")
    pipe = engine.pipe  # type: ignore[attr-defined]
    settings = get_spec("tiny-sdxl").settings(size="1024x1024", steps=4)
    prompt = "a teddy bear swimming the butterfly stroke"

    def direct() -> None:
        pipe(
            prompt=prompt,
            height=1024,
            width=1024,
            num_inference_steps=4,
            guidance_scale=0.0,
            generator=torch.Generator().manual_seed(1),
            output_type="pil",
        )

    def ours() -> None:
        engine.generate([ImageRequest(prompt, 1)], settings, progress=lambda p: None,
                        should_cancel=lambda: False)  # fmt: skip

    runs: dict[str, list[float]] = {"direct": [], "ours": []}
    for fn in (direct, ours):  # warm-up
        fn()
    for _ in range(REPEAT):
        for name, fn in (("direct", direct), ("ours", ours)):
            t0 = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"tiny-sdxl, 1024x1024, 4 steps, batch 1, {THREADS} thread(s), median of {REPEAT}")
    for name, values in runs.items():
        print(f"{name:<7} {med[name]:.3f} s   ({', '.join(f'{v:.3f}' for v in values)})")
    print(f"ours / direct = {med['ours'] / med['direct']:.3f}x (target <= 1.05x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

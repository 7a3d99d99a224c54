"""GLIDE engine on the CPU: per-forward time of the full-size models and model calls per image.

Full-size random-weight models (the released architectures), float32, 2 threads, median
of 3 runs after one warm-up:
- base forward, batch 2 (cond + uncond), 64x64, text_ctx 128;
- upsampler forward, batch 1, 256x256 (low_res 64x64).
Four variants are timed in alternation in the same process (see VARIANTS): upstream's
maths (einsum attention, text encoder on every call) as the baseline, our full forward
(SDPA attention), our per-step cost in a sampling loop (text encoder output reused), and
that per-step cost under bfloat16 autocast (`--dtype bfloat16`, opt-in on the CPU; fast
on CPUs with AVX512-BF16 or AMX), reported as a ratio against the float32 step.
The full forward is also compared with the reference anchors measured with upstream's code
on this machine class (base 1.58 s, upsampler 4.4 s). Then model calls per image and the
estimated time per image: upstream's documented defaults (127 calls) vs ours (40).
Run: `python benchmarks/run.py glide_forward` (about 2-3 minutes on a quiet 2-core machine;
the load average is printed, since other jobs on the machine inflate every number).
`--quick`: the tiny models, one timed run each; checks that the script works, no numbers.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from text2img.engines.glide.config import BASE_OPTIONS, UPSAMPLE_OPTIONS
from text2img.engines.glide.layers import attention_impl
from text2img.engines.glide.spec import SamplingSettings
from text2img.engines.glide.tiny import randomize_
from text2img.engines.glide.unet import build_model

THREADS = 2
ANCHORS = {"base": 1.58, "upsample": 4.4}  # reference README §8, upstream code, same CPU class
UPSTREAM_CALLS = {"base": 100, "upsample": 27}


Timing = dict[str, float]  # "median", "min" (wall seconds), "cpu" (median CPU s / THREADS)


def interleaved_timings(fns: dict[str, Callable[[], object]], runs: int = 3) -> dict[str, Timing]:
    """Median (and min) of `runs` timings per function after one warm-up each, run in
    alternation so that drifting load on a shared machine hits every variant alike. Also the
    process CPU time per thread; on a busy machine the min is the least distorted figure."""
    for fn in fns.values():
        fn()  # warm-up
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append((time.process_time() - start_cpu) / THREADS)
    return {
        name: {
            "median": statistics.median(wall[name]),
            "min": min(wall[name]),
            "cpu": statistics.median(cpu[name]),
        }
        for name in fns
    }


def inputs(name: str, ctx: int = 128, pad: int = 50256) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    if name == "base":
        tokens = torch.full((2, ctx), pad, dtype=torch.long)
        tokens[0, :7] = torch.randint(0, pad, (7,), generator=g)
        mask = tokens != pad
        x = torch.randn(2, 3, 64, 64, generator=g)
        return x, torch.tensor([500, 500]), tokens, mask
    tokens = torch.full((1, ctx), pad, dtype=torch.long)
    tokens[0, :7] = torch.randint(0, pad, (7,), generator=g)
    x = torch.randn(1, 3, 256, 256, generator=g)
    low_res = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    return x, torch.tensor([500]), tokens, tokens != pad, low_res


VARIANTS = {
    "einsum": "upstream's maths: einsum attention, text encoder on every call (baseline)",
    "sdpa": "ours per forward: SDPA attention, text encoder on every call",
    "step": "ours per sampling step: SDPA, text encoder output reused from the loop's start",
    "bf16": "step under torch.autocast('cpu', bfloat16), float32 weights (--dtype bfloat16)",
}


def bench(name: str, options: dict, runs: int = 3) -> dict[str, Timing]:
    model = build_model(options)
    randomize_(model, seed=1)
    x, t, tokens, mask, *rest = inputs(name, model.cfg.text_ctx, model.cfg.n_vocab - 1)
    low_res = rest[0] if rest else None
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    with torch.inference_mode():
        text = model.text_embedding(tokens, mask)
        with bf16:
            text_bf16 = model.text_embedding(tokens, mask)

    def forward(variant: str) -> Callable[[], object]:
        def run() -> object:
            with attention_impl("einsum" if variant == "einsum" else "sdpa"):
                if variant == "bf16":  # as the pipeline does it: autocast, output to float32
                    with bf16:
                        out = model(x, t, tokens, mask, low_res=low_res, text=text_bf16)
                    return out.float()
                cached = text if variant == "step" else None
                return model(x, t, tokens, mask, low_res=low_res, text=cached)

        return run

    with torch.inference_mode():
        return interleaved_timings({variant: forward(variant) for variant in VARIANTS}, runs)


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    torch.set_num_threads(THREADS)
    print(
        f"machine: {platform.processor() or platform.machine()}, {THREADS} threads, "
        f"torch {torch.__version__}, python {platform.python_version()}"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f} (above ~0.5 the numbers are noisy)")
    if quick:
        from text2img.engines.glide.tiny import TINY_BASE_OPTIONS, TINY_UPSAMPLE_OPTIONS

        print("--quick: tiny models, 1 run; checks the script, the numbers mean nothing")
        times = {"base": bench("base", TINY_BASE_OPTIONS, 1),
                 "upsample": bench("upsample", TINY_UPSAMPLE_OPTIONS, 1)}  # fmt: skip
    else:
        times = {
            "base": bench("base", BASE_OPTIONS),
            "upsample": bench("upsample", UPSAMPLE_OPTIONS),
        }
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print()
    for variant, meaning in VARIANTS.items():
        print(f"- {variant}: {meaning}")
    print()
    labels = {"base": "base, batch 2, 64x64, ctx 128", "upsample": "upsampler, batch 1, 256x256"}
    print("| forward (CPU; float32 but bf16) | variant | median | min | CPU s / thread |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, t in times.items():
        print(f"| {labels[name]} | anchor (upstream, quiet) | {ANCHORS[name]:.2f} s | | |")
        for variant in VARIANTS:
            v = t[variant]
            print(
                f"| {labels[name]} | {variant} | {v['median']:.2f} s | {v['min']:.2f} s "
                f"| {v['cpu']:.2f} s |"
            )
    print()
    print(
        "| forward | anchor / sdpa | einsum / sdpa | einsum / step | step / bf16 "
        "| (same ratios of mins) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name, t in times.items():
        med = {v: t[v]["median"] for v in VARIANTS}
        mins = {v: t[v]["min"] for v in VARIANTS}
        print(
            f"| {labels[name]} | {ANCHORS[name] / med['sdpa']:.2f}x | "
            f"{med['einsum'] / med['sdpa']:.2f}x | {med['einsum'] / med['step']:.2f}x | "
            f"{med['step'] / med['bf16']:.2f}x | "
            f"{ANCHORS[name] / mins['sdpa']:.2f}x, {mins['einsum'] / mins['sdpa']:.2f}x, "
            f"{mins['einsum'] / mins['step']:.2f}x, {mins['step'] / mins['bf16']:.2f}x |"
        )
    ours = SamplingSettings()
    ours_calls = {"base": ours.base_steps, "upsample": ours.upsample_steps}
    print()
    print("| pipeline | base calls | upsampler calls | calls per image | est. s per image |")
    print("| --- | ---: | ---: | ---: | ---: |")
    ours_label = (
        f"ours ({ours.base_sampler} {ours.base_steps} + "
        f"{ours.upsample_sampler} {ours.upsample_steps})"
    )
    for label, calls, variant in (
        ("upstream defaults (ancestral 100 + DDIM fast27)", UPSTREAM_CALLS, "einsum"),
        (ours_label, ours_calls, "step"),
        (f"{ours_label}, --dtype bfloat16", ours_calls, "bf16"),
    ):
        seconds = sum(calls[n] * times[n][variant]["median"] for n in calls)
        print(
            f"| {label} | {calls['base']} | {calls['upsample']} | {sum(calls.values())} "
            f"| {seconds:.0f} |"
        )
    print()
    upstream_total = sum(UPSTREAM_CALLS.values())
    print(
        f"model calls per image: upstream {upstream_total}, ours {ours.model_calls_per_image} "
        f"({upstream_total / ours.model_calls_per_image:.2f}x fewer)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])

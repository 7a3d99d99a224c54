"""`text2img generate`: draw images from a prompt on this machine and write PNGs + a grid."""

from __future__ import annotations

import argparse
import math
import re
import secrets
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from text2img.commands.prompt_language import english_prompt
from text2img.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

HELP = "draw images from a prompt on this machine (writes PNGs and a grid)"
SAMPLER_NAMES = ("dpm++2m", "ddim", "ancestral")  # text2img.glide.samplers.SAMPLERS
RANDOM_WEIGHTS_BANNER = (
    "*** --model tiny: RANDOM WEIGHTS. These images are noise patterns, NOT pictures of the "
    "prompt (a smoke test of the pipeline). Run `text2img download` and use --model glide "
    "for real images. ***"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "prompt", help="what to draw (English; other languages are translated as the service does)"
    )
    parser.add_argument("-n", "--num-images", type=int, default=1, help="images (default 1)")
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the first image; image i uses seed+i "
        "(default: random, printed)"
    )  # fmt: skip
    parser.add_argument("-o", "--output-dir", type=Path, default=Path("out"),
                        help="folder for the PNGs (default ./out)")  # fmt: skip
    parser.add_argument("--model", choices=["glide", "tiny"], default="glide",
                        help="glide (released weights) or tiny (random weights)")  # fmt: skip
    parser.add_argument(
        "--size",
        type=int,
        choices=[64, 256],
        default=256,
        help="64 = base model only, 256 = base + upsampler (default)",
    )
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="classifier-free guidance scale (default 3.0)")  # fmt: skip
    parser.add_argument(
        "--base-sampler",
        choices=SAMPLER_NAMES,
        default=None,
        help="sampler of the 64x64 base model (default dpm++2m)",
    )
    parser.add_argument(
        "--base-steps",
        type=int,
        default=None,
        help="base model calls per image, 1-1000 (default 25)",
    )
    parser.add_argument(
        "--upsample-sampler",
        choices=SAMPLER_NAMES,
        default=None,
        help="sampler of the 64->256 upsampler (default dpm++2m)",
    )
    parser.add_argument(
        "--upsample-steps",
        type=int,
        default=None,
        help="upsampler calls per image, 1-1000 (default 15)",
    )
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument(
        "--dtype",
        default=None,
        help="float16 (CUDA default), float32 (CPU default) or "
        "bfloat16 (CPU: ~1.6x faster with AVX512-BF16/AMX, less precise)",
    )
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="weights cache (default: ~/.cache/text2img)")  # fmt: skip


def slug(prompt: str, limit: int = 40) -> str:
    """A file-name-safe prefix of the prompt ("image" when nothing is left)."""
    text = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    return text[:limit].rstrip("-") or "image"


def grid(images: list[Image.Image]) -> Image.Image:
    """Images side by side in a near-square grid (columns = ceil(sqrt(n)))."""
    from PIL import Image

    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    width, height = images[0].size
    sheet = Image.new("RGB", (cols * width, rows * height), "white")
    for i, image in enumerate(images):
        sheet.paste(image, ((i % cols) * width, (i // cols) * height))
    return sheet


def _cache_dir(args: argparse.Namespace) -> Path | None:
    if args.cache_dir is not None:
        return Path(args.cache_dir)
    import os

    env = os.environ.get("TEXT2IMG_MODEL_CACHE")
    return Path(env) if env else None


def run(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        raise UserError('the prompt is empty; say what to draw, e.g. "a corgi in a red hat"')
    args.prompt = english_prompt(args.prompt.strip())  # Japanese: translated as the API does
    if not 1 <= args.num_images <= 64:
        raise UserError(f"-n must be from 1 to 64, got {args.num_images}")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    if not 0 <= seed <= 2**63 - 1 - args.num_images:
        raise UserError(f"--seed must be from 0 to 2**63-1-n, got {seed}")
    try:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {args.output_dir}: {exc.strerror}") from None

    from dataclasses import replace

    from text2img.glide.pipeline import ImageRequest, Progress, SamplingSettings, load_pipeline

    overrides = {
        "size": args.size,
        "guidance_scale": args.guidance_scale,
        "base_sampler": args.base_sampler,
        "base_steps": args.base_steps,
        "upsample_sampler": args.upsample_sampler,
        "upsample_steps": args.upsample_steps,
    }
    settings = replace(SamplingSettings(), **{k: v for k, v in overrides.items() if v is not None})
    try:
        settings.validate()
    except ValueError as exc:
        flag = "--" + str(exc).split(" ", 1)[0].replace("_", "-")
        raise UserError(f"{flag}: {exc}") from None

    if args.model == "tiny":
        print(RANDOM_WEIGHTS_BANNER, file=sys.stderr)
    started = time.perf_counter()
    pipeline = load_pipeline(args.model, device=args.device, dtype=args.dtype,
                             cache_dir=_cache_dir(args))  # fmt: skip
    load_s = time.perf_counter() - started
    dtype_name = str(pipeline.dtype).removeprefix("torch.")
    last_seed = seed + args.num_images - 1
    print(f"loaded {args.model} on {pipeline.device} ({dtype_name}) in {load_s:.1f} s; "
          f"seeds {seed}..{last_seed}", file=sys.stderr)  # fmt: skip

    stage_time: dict[str, float] = {}
    mark = {"t": time.perf_counter()}

    interactive = sys.stderr.isatty()

    def show(p: Progress) -> None:
        now = time.perf_counter()
        stage_time[p.stage] = stage_time.get(p.stage, 0.0) + now - mark["t"]
        mark["t"] = now
        if interactive:
            bar = "#" * int(30 * p.fraction)
            print(f"\r[{bar:<30}] {p.fraction:6.1%}  {p.stage} {p.step}/{p.total}   ",
                  end="", file=sys.stderr, flush=True)  # fmt: skip
        elif p.step == p.total:  # logs: one line per finished stage
            print(f"{p.stage}: {p.total} steps done ({p.fraction:.0%})", file=sys.stderr)

    requests = [ImageRequest(args.prompt, seed + i) for i in range(args.num_images)]
    t0 = time.perf_counter()
    mark["t"] = t0
    images = pipeline.generate(requests, settings, progress=show)
    total_s = time.perf_counter() - t0
    if interactive:
        print(file=sys.stderr)

    stem = slug(args.prompt)
    paths = []
    for request, image in zip(requests, images, strict=True):
        path = args.output_dir / f"{stem}_seed{request.seed}.png"
        image.save(path)
        paths.append(path)
    grid_path = args.output_dir / f"{stem}_grid.png"
    grid(images).save(grid_path)
    for path in paths:
        print(path)
    print(grid_path)

    base_s = stage_time.get("base", 0.0)
    stages = f"base {base_s:.1f} s ({settings.base_steps} x {settings.base_sampler})"
    if settings.size == 256:
        stages += (f", upsample {stage_time.get('upsample', 0.0):.1f} s "
                   f"({settings.upsample_steps} x {settings.upsample_sampler})")  # fmt: skip
    print(
        f"{len(images)} image(s) {settings.size}x{settings.size} in {total_s:.1f} s: {stages}; "
        f"{settings.model_calls_per_image} model calls per image (upstream's defaults: 127)"
        + (" [tiny: RANDOM WEIGHTS]" if args.model == "tiny" else "")
    )
    if args.model == "tiny":
        print(RANDOM_WEIGHTS_BANNER, file=sys.stderr)
    return 0

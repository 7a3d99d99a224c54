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
from text2img.engines import registry
from text2img.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

HELP = "draw images from a prompt on this machine (writes PNGs and a grid)"


def random_weights_banner(model: str) -> str:
    return (
        f"*** --model {model}: RANDOM WEIGHTS. These images are noise patterns, NOT pictures "
        "of the prompt (a smoke test of the pipeline). Run `text2img download` and use a "
        "model with real weights (glide, sdxl-lightning) for real images. ***"
    )


def _default_help(option: str) -> str:
    """ "(default N)" from the default model's spec, so --help never drifts from it."""
    spec = registry.get_spec(registry.DEFAULT_MODEL)
    defaults = {o.name: o.default for o in spec.options}
    return f"(default {defaults[option]} for {spec.name}; other models: their own)"


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
    parser.add_argument(
        "--model",
        choices=registry.MODEL_NAMES,
        default=registry.DEFAULT_MODEL,
        help="glide, sdxl-lightning (real weights, downloaded once) or tiny, tiny-sdxl "
        f"(random weights, smoke tests) (default {registry.DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--size",
        default=None,
        help="WIDTHxHEIGHT, one of the model's sizes (glide: 64x64 = base model only, "
        "256x256 = base + upsampler; a bare 64 or 256 works too) (default: the model's)",
    )
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help=f"classifier-free guidance scale {_default_help('guidance_scale')}",
    )
    parser.add_argument(
        "--sampler",
        "--base-sampler",
        dest="sampler",
        default=None,
        help=f"sampler, where the model has a choice (glide: dpm++2m, ddim, ancestral) "
        f"{_default_help('sampler')}",
    )
    parser.add_argument(
        "--steps",
        "--base-steps",
        dest="steps",
        type=int,
        default=None,
        help=f"sampling steps (glide: of the 64x64 base model) {_default_help('steps')}",
    )
    parser.add_argument(
        "--upsample-steps",
        type=int,
        default=None,
        help=f"GLIDE's 64->256 upsampler steps {_default_help('upsample_steps')}",
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

    from text2img.engines.base import ImageRequest, InvalidSetting, Progress

    spec = registry.get_spec(args.model)
    size = f"{args.size}x{args.size}" if args.size and args.size.isdigit() else args.size
    options = {
        "guidance_scale": args.guidance_scale,
        "sampler": args.sampler,
        "steps": args.steps,
        "upsample_steps": args.upsample_steps,
    }
    options = {k: v for k, v in options.items() if v is not None}
    try:
        spec.check_option_names(options)
        settings = spec.settings(size=size, **options)
    except InvalidSetting as exc:
        raise UserError(f"--{exc.param.replace('_', '-')}: {exc}") from None

    banner = random_weights_banner(args.model)
    if spec.random_weights:
        print(banner, file=sys.stderr)
    started = time.perf_counter()
    engine = registry.load_engine(
        args.model, device=args.device, dtype=args.dtype, cache_dir=_cache_dir(args)
    )
    load_s = time.perf_counter() - started
    last_seed = seed + args.num_images - 1
    print(f"loaded {args.model} on {engine.device} ({engine.dtype}) in {load_s:.1f} s; "
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
    generated = engine.generate(requests, settings, progress=show)
    images = [g.image for g in generated]
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

    stages = ", ".join(f"{stage} {t:.1f} s" for stage, t in stage_time.items())
    print(
        f"{len(images)} image(s) {settings.width}x{settings.height} in {total_s:.1f} s: "
        f"{stages}; {settings.model_calls_per_image} model calls per image"
        + (" [RANDOM WEIGHTS]" if spec.random_weights else "")
    )
    if spec.random_weights:
        print(banner, file=sys.stderr)
    return 0

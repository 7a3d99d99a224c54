"""`text2img generate`: draw images from a prompt on this machine and write PNGs (+ a grid
when there are several). The engine options' flags come from the registered specs."""

from __future__ import annotations

import argparse
import math
import re
import secrets
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from text2img.commands.download import chosen_model
from text2img.commands.prompt_language import english_prompt
from text2img.engines import registry
from text2img.engines.base import MAX_SEED, ImageRequest, InvalidSetting, Option, Progress
from text2img.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

HELP = "draw images from a prompt on this machine (writes PNGs, and a grid for several)"


def random_weights_banner(model: str) -> str:
    return (
        f"*** --model {model}: RANDOM WEIGHTS. These images are noise patterns, NOT pictures "
        "of the prompt (a smoke test of the pipeline). Run `text2img download` and use a "
        "model with real weights (glide, sdxl-lightning) for real images. ***"
    )


def _option_help(owners: list[tuple[str, Option]]) -> str:
    """What --help says of one option: the default model's description and default (so it
    never drifts from the spec), its limits, and which models take it."""
    by_model = dict(owners)
    model = registry.DEFAULT_MODEL if registry.DEFAULT_MODEL in by_model else owners[0][0]
    option = by_model[model]
    limits = ""
    if option.choices is not None:
        limits = f"; {model}: one of {', '.join(str(c) for c in option.choices)}"
    elif option.minimum is not None and option.maximum is not None:
        limits = f"; {model}: {option.minimum:g}-{option.maximum:g}"
    takers = "" if len(by_model) == len(registry.names()) else f"; only {', '.join(by_model)}"
    return (
        f"{option.description.rstrip('.')}{limits}{takers} "
        f"(default {option.default} for {model}; other models: their own)"
    )


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per option of any registered engine (`--name-with-dashes`, typed like the
    option's default); the chosen model's spec checks the values."""
    options = registry.options_by_name()
    for name, owners in options.items():
        option = owners[0][1]
        flags = [f"--{n.replace('_', '-')}" for n in (name, *option.aliases)]
        parser.add_argument(
            *flags, dest=name, type=option.kind, default=None, help=_option_help(owners)
        )
    parser.set_defaults(_engine_options=tuple(options))


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
        choices=registry.names(),
        default=None,
        help="glide, sdxl-lightning (real weights, downloaded once) or tiny, tiny-sdxl "
        f"(random weights, smoke tests) (default: $TEXT2IMG_MODEL or {registry.DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--size",
        default=None,
        help="WIDTHxHEIGHT, one of the model's sizes (glide: 64x64 = base model only, "
        "256x256 = base + upsampler; a bare 64 or 256 works too) (default: the model's)",
    )
    add_option_flags(parser)
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


def run(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        raise UserError('the prompt is empty; say what to draw, e.g. "a corgi in a red hat"')
    args.prompt = english_prompt(args.prompt.strip())  # Japanese: translated as the API does
    if not 1 <= args.num_images <= 64:
        raise UserError(f"-n must be from 1 to 64, got {args.num_images}")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    if not 0 <= seed <= MAX_SEED + 1 - args.num_images:
        raise UserError(f"--seed must be from 0 to 2**63-n, got {seed}")
    try:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {args.output_dir}: {exc.strerror}") from None

    model = chosen_model(args.model)
    spec = registry.get_spec(model)
    size = f"{args.size}x{args.size}" if args.size and args.size.isdigit() else args.size
    options = {k: v for k in args._engine_options if (v := getattr(args, k)) is not None}
    try:
        spec.check_option_names(options)
        settings = spec.settings(size=size, **options)
    except InvalidSetting as exc:
        raise UserError(f"--{exc.param.replace('_', '-')}: {exc}") from None

    banner = random_weights_banner(model)
    if spec.random_weights:
        print(banner, file=sys.stderr)
    started = time.perf_counter()
    engine = registry.load_engine(
        model, device=args.device, dtype=args.dtype, cache_dir=args.cache_dir
    )
    load_s = time.perf_counter() - started
    last_seed = seed + args.num_images - 1
    print(f"loaded {model} on {engine.device} ({engine.dtype}) in {load_s:.1f} s; "
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
    cut = next((g.prompt_used for g in generated if g.prompt_used is not None), None)
    if cut is not None:
        print(f"the prompt was too long for {model}; it drew only: {cut}", file=sys.stderr)
    total_s = time.perf_counter() - t0
    if interactive:
        print(file=sys.stderr)

    stem = slug(args.prompt)
    paths = []
    for request, image in zip(requests, images, strict=True):
        path = args.output_dir / f"{stem}_seed{request.seed}.png"
        image.save(path)
        paths.append(path)
    if len(images) > 1:  # one image needs no contact sheet
        paths.append(args.output_dir / f"{stem}_grid.png")
        grid(images).save(paths[-1])
    for path in paths:
        print(path)

    stages = ", ".join(f"{stage} {t:.1f} s" for stage, t in stage_time.items())
    print(
        f"{len(images)} image(s) {settings.width}x{settings.height} in {total_s:.1f} s: "
        f"{stages}; {settings.model_calls_per_image} model calls per image"
        + (" [RANDOM WEIGHTS]" if spec.random_weights else "")
    )
    if spec.random_weights:
        print(banner, file=sys.stderr)
    return 0

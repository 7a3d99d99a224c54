"""`text2img download`: fetch, verify and convert a model's weights into the cache.

Generic over engines: the registry names the model's weights module (`ensure`, `status`);
a random-weight model has none and there is nothing to download.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from text2img.engines import registry
from text2img.engines.fetch.disk import human_size
from text2img.errors import UserError

HELP = "download and verify a model's weights (resumes; quick when all is in place)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        choices=registry.names(),
        default=None,
        help=f"which model's weights (default: $TEXT2IMG_MODEL, else {registry.DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the weights live (default: $TEXT2IMG_MODEL_CACHE, else "
        "$XDG_CACHE_HOME/text2img, else ~/.cache/text2img)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="PART",
        help="fetch only this part of the model (repeatable; GLIDE: base, upsample, "
        "tokenizer); default: all of them",
    )
    parser.add_argument("--force", action="store_true", help="fetch and convert again")
    parser.add_argument(
        "--check",
        action="store_true",
        help="only report what is present and intact (re-hashes files, no network); "
        "exit status 1 if anything is missing or damaged",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output; one summary line")
    parser.epilog = (
        "GLIDE comes from openaipublic.blob.core.windows.net (checkpoints) and "
        "openai/glide-text2im (tokenizer); set TEXT2IMG_WEIGHTS_URL to a folder holding all "
        "four files to use a mirror. Exit status: 0 ready, 1 --check found something "
        "missing, 2 error."
    )


def chosen_model(flag: str | None) -> str:
    """--model, else $TEXT2IMG_MODEL (as `serve` reads it), else the default model."""
    name = flag or os.environ.get("TEXT2IMG_MODEL") or registry.DEFAULT_MODEL
    if name not in registry.names():
        raise UserError(f"TEXT2IMG_MODEL={name!r}: use one of {', '.join(registry.names())}")
    return str(name)


def run(args: argparse.Namespace) -> int:
    name = chosen_model(args.model)
    spec = registry.get_spec(name)
    module = registry.weights_module(name)
    if module is None:
        print(f"model {name} uses random weights built in-process: there is nothing to download")
        return 0
    cache_dir: Path = (args.cache_dir or registry.default_cache_dir()).expanduser().resolve()
    # `only` is an optional extension of the WeightsModule protocol (GLIDE has PARTS)
    weights: Any = module
    only: dict[str, object] = {}
    if args.only:
        parts: tuple[str, ...] = getattr(module, "PARTS", ())
        unknown = [p for p in args.only if p not in parts]
        if unknown:
            accepted = ", ".join(parts) if parts else "none (it is fetched whole)"
            raise UserError(f"--only {unknown[0]}: parts of model {name} are {accepted}")
        only["only"] = args.only
    if args.check:
        statuses = weights.status(cache_dir, **only)
        for st in statuses:
            print(st.line())
        bad = [st for st in statuses if not st.ok]
        if bad:
            damaged = any(b.state == "damaged" for b in bad)
            hint = " (with --force for damaged files)" if damaged else ""
            print(
                f"{len(bad)} of {len(statuses)} not ready: run "
                f"`text2img download --model {name}`{hint}"
            )
            return 1
        print(f"all ready in {cache_dir}")
        return 0
    if not args.quiet:
        print(f"{spec.title}; weights licence: {spec.licence}", file=sys.stderr, flush=True)
    weights.ensure(cache_dir, progress=not args.quiet, force=args.force, **only)
    statuses = weights.status(cache_dir, deep=False, **only)
    total = sum(st.size or 0 for st in statuses)
    if not args.quiet:
        for st in statuses:
            print(st.line())
    print(f"{name} weights ready in {cache_dir} ({human_size(total)} on disk)")
    return 0

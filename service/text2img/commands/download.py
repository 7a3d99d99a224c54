"""`text2img download`: fetch, verify and convert the GLIDE weights into the cache."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "download and verify the GLIDE weights (resumes; quick when all is in place)"
PARTS = ("base", "upsample", "tokenizer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
        choices=PARTS,
        action="append",
        help="fetch only this part (repeatable); default: all of them",
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
        "Sources: openaipublic.blob.core.windows.net (checkpoints) and openai/glide-text2im "
        "(tokenizer); set TEXT2IMG_WEIGHTS_URL to a folder holding all four files to use a "
        "mirror. Exit status: 0 ready, 1 --check found something missing, 2 error."
    )


def run(args: argparse.Namespace) -> int:
    from text2img.engines.glide import weights
    from text2img.engines.glide.download import human_size

    cache_dir: Path = (args.cache_dir or weights.default_cache_dir()).expanduser().resolve()
    manifest = weights.default_manifest()
    if args.check:
        statuses = weights.weights_status(cache_dir, manifest=manifest, only=args.only)
        for st in statuses:
            print(st.line())
        bad = [st for st in statuses if not st.ok]
        if bad:
            damaged = any(b.state == "damaged" for b in bad)
            hint = " (with --force for damaged files)" if damaged else ""
            print(f"{len(bad)} of {len(statuses)} not ready: run `text2img download`{hint}")
            return 1
        print(f"all ready in {cache_dir}")
        return 0
    weights.ensure_weights(
        cache_dir,
        progress=not args.quiet,
        only=args.only,
        force=args.force,
        manifest=manifest,
    )
    statuses = weights.weights_status(cache_dir, manifest=manifest, only=args.only, deep=False)
    total = sum(st.size or 0 for st in statuses)
    if args.quiet:
        print(f"GLIDE weights ready in {cache_dir} ({human_size(total)})")
        return 0
    for st in statuses:
        print(st.line())
    print(f"GLIDE weights ready in {cache_dir} ({human_size(total)} on disk)")
    return 0

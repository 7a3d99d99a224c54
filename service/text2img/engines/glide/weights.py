"""The GLIDE weights as the registry sees them: `ensure` (download, verify, convert what is
missing) and `status` (what is present and intact) for `text2img download --model glide`.

The jobs live in their own modules: `cache` (layout, manifest, records, status), `convert`
(checkpoint checks and the fp16 copy); the engines' shared `fetch.http` (resumable
verified HTTP) and `fetch.disk` (locks, atomic writes, free space).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from text2img.engines.fetch.disk import cache_lock, say, sha256_file
from text2img.engines.fetch.http import Advice, RetryPolicy, fetch
from text2img.engines.glide import cache
from text2img.engines.glide.cache import (
    CheckpointSpec,
    FileStatus,
    Manifest,
    RemoteFile,
    cache_is_current,
    default_cache_dir,
    weights_status,
)
from text2img.engines.glide.convert import convert
from text2img.engines.glide.records import record, refreshed_sha256

# what a failed GLIDE download tells the user: a mirror, or the tiny model offline
ADVICE = Advice(
    rerun="run `text2img download --model glide` again",
    mirror_env=cache.URL_ENV,
    offline=f"set {cache.URL_ENV} to a mirror you can reach (one folder holding base.pt, "
    "upsample.pt, encoder.json.gz and vocab.bpe.gz), or try the kit offline with "
    '`make serve SERVE_ARGS="--model tiny"` (random weights, nothing to download)',
)
PARTS = ("base", "upsample", "tokenizer")  # `text2img download --only PART`


def ensure(
    cache_dir: Path,
    *,
    progress: bool = True,
    force: bool = False,
    only: Collection[str] | None = None,
) -> None:
    """Registry entry point: the GLIDE cache (both checkpoints and the tokenizer, or `only`
    some of these PARTS)."""
    ensure_weights(cache_dir, progress=progress, force=force, only=only)


def status(
    cache_dir: Path, *, deep: bool = True, only: Collection[str] | None = None
) -> list[FileStatus]:
    """Registry entry point: one line per file of the GLIDE cache."""
    return weights_status(cache_dir, deep=deep, only=only)


def ensure_weights(
    cache_dir: Path | None = None,
    *,
    progress: bool = True,
    only: Collection[str] | None = None,
    force: bool = False,
    manifest: Manifest | None = None,
    retry: RetryPolicy | None = None,
) -> None:
    """Download, verify and convert whatever is missing; quick when all is in place.

    `only` picks among "base", "upsample", "tokenizer"; `force` fetches them again.
    """
    cache_dir = cache_dir or default_cache_dir()
    manifest = manifest or cache.default_manifest()
    wanted = set(only) if only else {"tokenizer", *(s.name for s in manifest.checkpoints)}
    with cache_lock(cache_dir, progress=progress):
        if "tokenizer" in wanted:
            for rf in manifest.tokenizer:
                sha = refreshed_sha256(cache_dir, rf.name, pin=rf.sha256)
                if force or sha is None or sha != (rf.sha256 or sha):
                    _download(cache_dir, rf, progress, retry)
        for spec in manifest.checkpoints:
            if spec.name not in wanted:
                continue
            pt = cache_dir / spec.source.name
            if force:
                pt.unlink(missing_ok=True)
                (cache_dir / spec.cache_name).unlink(missing_ok=True)
            refreshed_sha256(cache_dir, spec.source.name, pin=spec.source.sha256)
            if cache_is_current(cache_dir, spec):
                continue
            if pt.exists() and not _source_intact(cache_dir, spec):
                say(f"{pt.name} is not the file that was pinned or downloaded; fetching it again")
                pt.unlink()
            if not pt.exists():
                fp16_bytes = 2 * spec.num_params  # the converted copy, written next
                _download(cache_dir, spec.source, progress, retry, reserve=fp16_bytes)
            convert(cache_dir, spec, None, progress)


def _source_intact(cache_dir: Path, spec: CheckpointSpec) -> bool:
    """False if the `.pt` differs from its pin or download-time hash (then `download`
    fetches it again rather than stopping); a file nobody vouches for is left to
    `convert`, which refuses it with what to do."""
    trusted = cache.trusted_source_sha256(cache_dir, spec)
    if trusted is None:
        return True
    pt = cache_dir / spec.source.name
    if spec.source.size is not None and pt.stat().st_size != spec.source.size:
        return False
    return sha256_file(pt) == trusted


def _download(
    cache_dir: Path,
    rf: RemoteFile,
    progress: bool,
    retry: RetryPolicy | None,
    reserve: int = 0,
) -> None:
    say(f"downloading {rf.name} from {rf.url}", progress)
    got = fetch(
        rf.url,
        cache_dir / rf.name,
        sha256=rf.sha256,
        size=rf.size,
        progress=progress,
        retry=retry,
        label=rf.name,
        reserve=reserve,
        advice=ADVICE,
    )
    # the only place a checkpoint's hash is learnt: after a transfer that fetch verified
    # (size; the pin or the server's MD5 where there is one)
    record(cache_dir, rf.name, got.sha256, "download")

"""Checkpoint verification and fp16 conversion: `.pt` as released -> `.fp16.safetensors`.

A checkpoint is accepted only if `torch.load(weights_only=True)` reads it as a flat dict of
finite float tensors whose tensor count, element count and key/shape listing are GLIDE's.
Tensors with values beyond fp16's range would stay fp32 (GLIDE's have none). Loading reads
the converted copy strictly against the model's key -> shape listing.
"""

from __future__ import annotations

import hashlib
import math
import zipfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from text2img.engines.glide import cache
from text2img.engines.glide.cache import (
    CACHE_ENV,
    CACHE_FORMAT,
    CheckpointSpec,
    Manifest,
    cache_is_current,
    known_sha256,
    listing_fingerprint,
    record,
)
from text2img.engines.glide.files import cache_lock, progress_bar, write_atomic
from text2img.errors import UserError

if TYPE_CHECKING:
    import torch

FP16_MAX = 65504.0


def load_state_dict(
    cache_dir: Path,
    name: str,
    expected: Mapping[str, tuple[int, ...]],
    *,
    manifest: Manifest | None = None,
    device: str = "cpu",
) -> dict[str, torch.Tensor]:
    """The fp16 state dict of checkpoint `name`, strictly matching `expected` key -> shape."""
    from safetensors import SafetensorError, safe_open

    spec = (manifest or cache.default_manifest()).checkpoint(name)
    cached = cache_dir / spec.cache_name
    if not cache_is_current(cache_dir, spec):
        if not (cache_dir / spec.source.name).exists():
            raise UserError(
                f"the GLIDE {name} weights are not in {cache_dir}: run "
                "`text2img download --model glide` "
                f"(or set {CACHE_ENV} to where they are)"
            )
        with cache_lock(cache_dir):
            if not cache_is_current(cache_dir, spec):
                convert(cache_dir, spec, expected, progress=True)
    try:
        with safe_open(str(cached), framework="pt", device=device) as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
            check_listing(shapes, expected, f"{cached}")
            return {k: f.get_tensor(k) for k in shapes}
    except (SafetensorError, OSError) as exc:
        raise UserError(
            f"cannot read {cached} ({exc}); run "
            f"`text2img download --model glide --force --only {name}`"
        ) from None


def check_listing(
    shapes: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]], what: str
) -> None:
    """Strict key and shape match; the error names the first few offending keys."""

    def some(keys: Collection[str]) -> str:
        listed = sorted(keys)
        more = f" (+{len(listed) - 4} more)" if len(listed) > 4 else ""
        return ", ".join(listed[:4]) + more

    missing = expected.keys() - shapes.keys()
    unexpected = shapes.keys() - expected.keys()
    wrong = {k for k in expected.keys() & shapes.keys() if tuple(shapes[k]) != tuple(expected[k])}
    problems = []
    if missing:
        problems.append(f"missing keys: {some(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {some(unexpected)}")
    if wrong:
        k = sorted(wrong)[0]
        problems.append(
            f"wrong shapes for {some(wrong)} (e.g. {k}: {tuple(shapes[k])}, "
            f"expected {tuple(expected[k])})"
        )
    if problems:
        raise UserError(
            f"{what} does not match the model ({'; '.join(problems)}); it is not this GLIDE "
            "checkpoint: run `text2img download --model glide --force`"
        )


def _load_pt(path: Path, name: str) -> dict[str, torch.Tensor]:
    """`torch.load(weights_only=True)` with clear errors for anything that is not a state dict."""
    import pickle

    import torch

    def not_checkpoint(why: str) -> UserError:
        path.unlink(missing_ok=True)
        return UserError(
            f"{path} is not a GLIDE {name} checkpoint ({why}); deleted it: run "
            f"`text2img download --model glide --only {name}` "
            "(check TEXT2IMG_WEIGHTS_URL if you use a mirror)"
        )

    with path.open("rb") as f:
        head = f.read(64)
    if head.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml")):
        raise not_checkpoint("it is an HTML/XML page, probably an error page from a server")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise not_checkpoint(f"not a PyTorch weights file: {first_line}") from None
    if not isinstance(obj, dict):
        raise not_checkpoint(f"it holds a {type(obj).__name__}, not a state dict")
    bad = [k for k, v in obj.items() if not (isinstance(v, torch.Tensor) and v.is_floating_point())]
    if bad:
        raise not_checkpoint(f"{len(bad)} entries are not float tensors, e.g. {str(bad[0])[:60]}")
    return obj


def convert(
    cache_dir: Path,
    spec: CheckpointSpec,
    expected: Mapping[str, tuple[int, ...]] | None,
    progress: bool,
) -> None:
    """Check `<name>.pt` and write `<name>.fp16.safetensors` atomically (lock held)."""
    import safetensors.torch
    import torch

    pt = cache_dir / spec.source.name
    sd = _load_pt(pt, spec.name)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    count = sum(v.numel() for v in sd.values())
    if expected is not None:
        check_listing(shapes, expected, str(pt))
    if spec.listing_sha256 is not None and (
        (len(sd), count) != (spec.num_tensors, spec.num_params)
        or listing_fingerprint(shapes) != spec.listing_sha256
    ):
        pt.unlink()
        if (len(sd), count) == (spec.num_tensors, spec.num_params):
            why = "its key names or shapes differ"
        else:
            why = (
                f"it holds {len(sd)} tensors with {count:,} values, GLIDE {spec.name} has "
                f"{spec.num_tensors} with {spec.num_params:,}"
            )
        raise UserError(
            f"{pt} is not the GLIDE {spec.name} checkpoint ({why}); deleted it: run "
            f"`text2img download --model glide --only {spec.name}` (check TEXT2IMG_WEIGHTS_URL "
            "if you use a mirror)"
        )
    sha = known_sha256(cache_dir, spec.source.name)
    assert sha is not None
    record(cache_dir, spec.source.name, sha)
    out: dict[str, torch.Tensor] = {}
    label = f"converting {pt.name} to fp16 (once)"
    for k, v in progress_bar(len(sd), label, progress, iterable=sd.items(), unit=" tensors"):
        peak = float(v.abs().amax()) if v.numel() else 0.0  # NaN/inf propagate into the max
        if not math.isfinite(peak):
            raise UserError(
                f"{pt} holds NaN/inf values in {k}: corrupted; run "
                f"`text2img download --model glide --force --only {spec.name}`"
            )
        # A value beyond fp16's range would become inf: keep such a tensor in fp32.
        out[k] = v.to(torch.float16 if peak <= FP16_MAX else torch.float32).contiguous()
    metadata = {
        "format": "pt",
        "text2img_cache_format": CACHE_FORMAT,
        "text2img_source": pt.name,
        "text2img_source_size": str(pt.stat().st_size),
        "text2img_source_sha256": sha,
        "text2img_num_params": str(count),
    }
    data = safetensors.torch.save(out, metadata=metadata)
    del out, sd
    write_atomic(cache_dir / spec.cache_name, data, f"the fp16 copy of {pt.name}")
    record(cache_dir, spec.cache_name, hashlib.sha256(data).hexdigest())  # for --check

"""Checkpoint verification and fp16 conversion: `.pt` as released -> `.fp16.safetensors`.

A checkpoint is accepted only if its sha256 is the trusted one (its pin, else the hash
recorded when text2img downloaded it: `check_source`) and `torch.load(weights_only=True)`
reads it as a flat dict of finite float tensors whose tensor count, element count and
key/shape listing are GLIDE's. Tensors with values beyond fp16's range would stay fp32
(GLIDE's have none). The copy carries the sha256 of its own data; loading verifies it
while reading and checks it strictly against the model's key -> shape listing.
"""

from __future__ import annotations

import hashlib
import math
import zipfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from text2img.engines.fetch.disk import (
    cache_lock,
    progress_bar,
    segment_digests,
    sha256_file,
    write_atomic,
)
from text2img.engines.glide import cache
from text2img.engines.glide.cache import (
    CACHE_FORMAT,
    CheckpointSpec,
    Manifest,
    listing_fingerprint,
)
from text2img.engines.glide.records import record
from text2img.engines.registry import CACHE_ENV
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
    """The fp16 state dict of checkpoint `name`, strictly matching `expected` key -> shape.

    The copy is verified first (`cache.read_cache_file`: sha256 of its data, per segment on
    several cores, against what was written with it); the tensors are views of the same
    copy-on-write file mapping that was hashed, so there is no second read and no copy.
    """
    spec = (manifest or cache.default_manifest()).checkpoint(name)
    cached = cache_dir / spec.cache_name
    # a start needs only what it loads: an intact copy is used whatever became of the
    # `.pt` (damaged, replaced, deleted); `download` is what re-converts a replaced one
    if not cache.copy_is_ours(cache_dir, spec):
        if not (cache_dir / spec.source.name).exists():
            raise UserError(
                f"the GLIDE {name} weights are not in {cache_dir}: run "
                "`text2img download --model glide` "
                f"(or set {CACHE_ENV} to where they are)"
            )
        with cache_lock(cache_dir):
            if not cache.copy_is_ours(cache_dir, spec):
                convert(cache_dir, spec, expected, progress=True)
    header, data = cache.read_cache_file(cache_dir, spec)
    shapes = {k: tuple(int(d) for d in v["shape"]) for k, v in header.items()}
    check_listing(shapes, expected, f"{cached}")
    out = {k: _tensor(data, v, f"{cached}: {k}") for k, v in header.items()}
    return out if device == "cpu" else {k: v.to(device) for k, v in out.items()}


_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


def _tensor(data: memoryview, entry: Mapping[str, Any], what: str) -> torch.Tensor:
    """One tensor of a verified safetensors buffer, as a view (a copy only if unaligned)."""
    import torch

    name = _DTYPES.get(str(entry.get("dtype")))
    if name is None:
        raise UserError(f"{what} has dtype {entry.get('dtype')}, not a float type we wrote")
    dtype = getattr(torch, name)
    shape = [int(d) for d in entry["shape"]]
    begin, end = (int(x) for x in entry["data_offsets"])
    count = math.prod(shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if end - begin != count * itemsize:
        raise UserError(f"{what}: {end - begin} bytes for {count} values; not a file we wrote")
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    if begin % itemsize:  # safetensors aligns its data; copy rather than view if not
        return torch.frombuffer(bytearray(data[begin:end]), dtype=dtype).reshape(shape)
    return torch.frombuffer(data, dtype=dtype, count=count, offset=begin).reshape(shape)


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


def check_source(cache_dir: Path, spec: CheckpointSpec) -> str:
    """The `.pt`'s sha256, hashed now and required to equal the trusted one: its pin, else
    the hash recorded when text2img downloaded it (`cache.trusted_source_sha256`). Never a
    hash taken here: a `.pt` changed on disk is refused (and deleted), not adopted."""
    pt = cache_dir / spec.source.name
    again = f"`text2img download --model glide --only {spec.name}`"
    trusted = cache.trusted_source_sha256(cache_dir, spec)
    if trusted is None:
        raise UserError(
            f"cannot verify {pt}: no sha256 is pinned for it and text2img did not download "
            f"it; run {again} to fetch it, or, if you checked this file yourself, pin its "
            f"sha256 and size in a JSON file named by {cache.PINS_ENV} (see docs/models.md, "
            "*Pins*)"
        )
    pin = spec.source.size
    size = pt.stat().st_size
    sha = sha256_file(pt)
    if (pin is not None and size != pin) or sha != trusted:
        pt.unlink()
        whose = "pinned" if spec.source.sha256 else "recorded when it was downloaded"
        raise UserError(
            f"{pt} is not the released GLIDE {spec.name} checkpoint (sha256 {sha[:12]}…, "
            f"{size} bytes; {trusted[:12]}…{f', {pin} bytes' if pin else ''} {whose}): "
            f"damaged or replaced; deleted it: run {again}"
        )
    return sha


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
    sha = check_source(cache_dir, spec)
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
    # Embed the tensor data's sha256 (per segment), so the copy verifies itself on every
    # load. The
    # data section does not depend on the metadata, so a second save lays it out the same.
    data = safetensors.torch.save(out, metadata=metadata)
    header_len = int.from_bytes(data[:8], "little")
    metadata[cache.DATA_SHA_KEY] = ",".join(segment_digests(memoryview(data)[8 + header_len :]))
    del data
    data = safetensors.torch.save(out, metadata=metadata)
    del out, sd
    write_atomic(cache_dir / spec.cache_name, data, f"the fp16 copy of {pt.name}")
    record(cache_dir, spec.cache_name, hashlib.sha256(data).hexdigest(), "conversion")

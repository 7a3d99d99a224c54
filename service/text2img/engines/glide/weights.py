"""The GLIDE weights: where they come from, the cache, verification, fp16 conversion, loading.

Cache layout (`default_cache_dir()` unless told otherwise):

    base.pt, upsample.pt                 the released checkpoints, as downloaded (fp32)
    base.fp16.safetensors, upsample.…    fp16 copies made once; what the service loads
    tokenizer/encoder.json.gz, …/vocab.bpe.gz
    manifest.json                        size, mtime and sha256 of every verified file
    .lock                                flock: one writer at a time (download, conversion)

A checkpoint is accepted only if `torch.load(weights_only=True)` reads it as a flat dict of
finite float tensors whose tensor count, element count and key/shape listing are GLIDE's.
Tensors with values beyond fp16's range would stay fp32 (GLIDE's have none). The
safetensors metadata records the size and sha256 of the `.pt` it came from, so a `.pt`
replaced later makes the cache stale and it is converted again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from text2img.engines.glide.download import (
    RetryPolicy,
    cache_lock,
    fetch,
    human_size,
    progress_bar,
    say,
    sha256_file,
    write_atomic,
)
from text2img.errors import UserError

if TYPE_CHECKING:
    import torch

CHECKPOINT_URL_BASE = "https://openaipublic.blob.core.windows.net/diffusion/dec-2021"
UPSTREAM_COMMIT = "69b530740eb6cef69442d6180579ef5ba9ef063e"
TOKENIZER_URL_BASE = (
    f"https://raw.githubusercontent.com/openai/glide-text2im/{UPSTREAM_COMMIT}"
    "/glide_text2im/tokenizer"
)
URL_ENV = "TEXT2IMG_WEIGHTS_URL"  # one folder holding all four files (a mirror)
CACHE_ENV = "TEXT2IMG_MODEL_CACHE"
CACHE_FORMAT = "1"
FP16_MAX = 65504.0


@dataclass(frozen=True)
class RemoteFile:
    """One file of the cache: its path inside the cache and where it comes from."""

    name: str
    url: str
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class CheckpointSpec:
    """A released checkpoint and what makes it the right one."""

    name: str  # "base" | "upsample"
    source: RemoteFile
    num_tensors: int
    num_params: int
    listing_sha256: str | None  # `listing_fingerprint` of its key -> shape listing

    @property
    def cache_name(self) -> str:
        return f"{self.name}.fp16.safetensors"


@dataclass(frozen=True)
class Manifest:
    checkpoints: tuple[CheckpointSpec, ...]
    tokenizer: tuple[RemoteFile, RemoteFile]  # (encoder.json.gz, vocab.bpe.gz)

    def checkpoint(self, name: str) -> CheckpointSpec:
        for spec in self.checkpoints:
            if spec.name == name:
                return spec
        known = ", ".join(s.name for s in self.checkpoints)
        raise ValueError(f"unknown checkpoint {name!r} (known: {known})")


def listing_fingerprint(shapes: Mapping[str, Sequence[int]]) -> str:
    """sha256 over the sorted `key<TAB>d0,d1,…` lines: one value for a whole key/shape listing."""
    lines = "".join(f"{k}\t{','.join(str(d) for d in shapes[k])}\n" for k in sorted(shapes))
    return hashlib.sha256(lines.encode()).hexdigest()


def default_manifest(url_base: str | None = None) -> Manifest:
    """The released files; `url_base` (default: $TEXT2IMG_WEIGHTS_URL) replaces every source."""
    mirror = (url_base or os.environ.get(URL_ENV) or "").rstrip("/") or None
    ckpt_base = mirror or CHECKPOINT_URL_BASE
    tok_base = mirror or TOKENIZER_URL_BASE
    # Counts and fingerprints from the reference listings (base_params.json, upsample_params.json).
    base = CheckpointSpec(
        "base",
        RemoteFile("base.pt", f"{ckpt_base}/base.pt"),
        num_tensors=783,
        num_params=385_030_726,
        listing_sha256="02933f5d06c83263194eeeffc074e6ab0efae169f0284357e5a5bdffa60b63c7",
    )
    upsample = CheckpointSpec(
        "upsample",
        RemoteFile("upsample.pt", f"{ckpt_base}/upsample.pt"),
        num_tensors=797,
        num_params=398_361_286,
        listing_sha256="351db4a3cffd2aa9a904a5ba09b760789411aa16beb12073f1527af9300ccf3d",
    )
    encoder = RemoteFile(
        "tokenizer/encoder.json.gz",
        f"{tok_base}/encoder.json.gz",
        sha256="4debc1cf25180021b07744bc9f4488d53c7bf112c8ce5de8097c6a7518f4ec7c",
        size=348346,
    )
    vocab = RemoteFile(
        "tokenizer/vocab.bpe.gz",
        f"{tok_base}/vocab.bpe.gz",
        sha256="ce239dd5a898827423fee00e3f7ab37de7900f247f2ba360753d860e8a46524d",
        size=213544,
    )
    return Manifest(checkpoints=(base, upsample), tokenizer=(encoder, vocab))


def default_cache_dir() -> Path:
    """$TEXT2IMG_MODEL_CACHE, else $XDG_CACHE_HOME/text2img, else ~/.cache/text2img."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "text2img"


# --- records of verified downloads (manifest.json) -------------------------------------


def _records(cache_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((cache_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _record(cache_dir: Path, name: str, sha256: str) -> None:
    """Remember a verified file (call with the cache lock held)."""
    records = _records(cache_dir)
    st = (cache_dir / name).stat()
    records[name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
    data = json.dumps(records, indent=1, sort_keys=True).encode()
    write_atomic(cache_dir / "manifest.json", data, "the cache's manifest")


def _refreshed_sha256(cache_dir: Path, name: str) -> str | None:
    """`_known_sha256`, re-recording a file whose mtime changed (e.g. copied), so later
    loads need not hash it again (call with the cache lock held)."""
    sha = _known_sha256(cache_dir, name)
    if sha is None:
        return None
    rec = _records(cache_dir).get(name)
    st = (cache_dir / name).stat()
    if not rec or (rec["size"], rec["mtime_ns"]) != (st.st_size, st.st_mtime_ns):
        _record(cache_dir, name, sha)
    return sha


def _known_sha256(cache_dir: Path, name: str, *, rehash: bool = False) -> str | None:
    """sha256 of a cached file: from its record while size and mtime still match, else hashed."""
    path = cache_dir / name
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    rec = _records(cache_dir).get(name)
    if not rehash and rec and (rec["size"], rec["mtime_ns"]) == (st.st_size, st.st_mtime_ns):
        return str(rec["sha256"])
    return sha256_file(path)


# --- public API ------------------------------------------------------------------------


def tokenizer_paths(cache_dir: Path, *, manifest: Manifest | None = None) -> tuple[Path, Path]:
    """(encoder.json.gz, vocab.bpe.gz) in the cache, checked against their sha256."""
    manifest = manifest or default_manifest()
    paths = []
    for rf in manifest.tokenizer:
        path = cache_dir / rf.name
        sha = _known_sha256(cache_dir, rf.name)
        if sha is None:
            raise UserError(f"the tokenizer file {path} is missing: run `text2img download`")
        if rf.sha256 is not None and sha != rf.sha256:
            raise UserError(
                f"the tokenizer file {path} is damaged (sha256 {sha[:12]}…, expected "
                f"{rf.sha256[:12]}…): run `text2img download --force --only tokenizer`"
            )
        paths.append(path)
    return paths[0], paths[1]


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
    manifest = manifest or default_manifest()
    wanted = set(only) if only else {"tokenizer", *(s.name for s in manifest.checkpoints)}
    with cache_lock(cache_dir, progress=progress):
        if "tokenizer" in wanted:
            for rf in manifest.tokenizer:
                sha = _refreshed_sha256(cache_dir, rf.name)
                if force or sha is None or sha != (rf.sha256 or sha):
                    _download(cache_dir, rf, progress, retry)
        for spec in manifest.checkpoints:
            if spec.name not in wanted:
                continue
            pt = cache_dir / spec.source.name
            if force:
                pt.unlink(missing_ok=True)
                (cache_dir / spec.cache_name).unlink(missing_ok=True)
            _refreshed_sha256(cache_dir, spec.source.name)
            if _cache_is_current(cache_dir, spec):
                continue
            if not pt.exists():
                fp16_bytes = 2 * spec.num_params  # the converted copy, written next
                _download(cache_dir, spec.source, progress, retry, reserve=fp16_bytes)
            _convert(cache_dir, spec, None, progress)


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

    spec = (manifest or default_manifest()).checkpoint(name)
    cached = cache_dir / spec.cache_name
    if not _cache_is_current(cache_dir, spec):
        if not (cache_dir / spec.source.name).exists():
            raise UserError(
                f"the GLIDE {name} weights are not in {cache_dir}: run `text2img download` "
                f"(or set {CACHE_ENV} to where they are)"
            )
        with cache_lock(cache_dir):
            if not _cache_is_current(cache_dir, spec):
                _convert(cache_dir, spec, expected, progress=True)
    try:
        with safe_open(str(cached), framework="pt", device=device) as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
            check_listing(shapes, expected, f"{cached}")
            return {k: f.get_tensor(k) for k in shapes}
    except (SafetensorError, OSError) as exc:
        raise UserError(
            f"cannot read {cached} ({exc}); run `text2img download --force --only {name}`"
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
            "checkpoint: run `text2img download --force`"
        )


# --- internals -------------------------------------------------------------------------


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
    )
    _record(cache_dir, rf.name, got.sha256)


def cache_metadata(path: Path) -> dict[str, str] | None:
    """The metadata of a complete safetensors file, else None (read directly: no torch)."""
    try:
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if 2 <= n <= 100_000_000 else None
        size = path.stat().st_size
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    meta = header.pop("__metadata__", None) or {}
    try:
        data_end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        return None
    if 8 + n + data_end != size or not isinstance(meta, dict):
        return None  # truncated or padded: not what we wrote
    return {str(k): str(v) for k, v in meta.items()}


def _cache_is_current(cache_dir: Path, spec: CheckpointSpec) -> bool:
    """True if the fp16 cache exists, is ours, and came from the `.pt` now present (if any)."""
    meta = cache_metadata(cache_dir / spec.cache_name)
    if meta is None or meta.get("text2img_cache_format") != CACHE_FORMAT:
        return False
    if meta.get("text2img_num_params") != str(spec.num_params) and spec.listing_sha256:
        return False
    sha = _known_sha256(cache_dir, spec.source.name)
    return sha is None or sha == meta.get("text2img_source_sha256")


def _load_pt(path: Path, name: str) -> dict[str, torch.Tensor]:
    """`torch.load(weights_only=True)` with clear errors for anything that is not a state dict."""
    import pickle

    import torch

    def not_checkpoint(why: str) -> UserError:
        path.unlink(missing_ok=True)
        return UserError(
            f"{path} is not a GLIDE {name} checkpoint ({why}); deleted it: run "
            f"`text2img download --only {name}` (check TEXT2IMG_WEIGHTS_URL if you use a mirror)"
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


def _convert(
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
            f"`text2img download --only {spec.name}` (check TEXT2IMG_WEIGHTS_URL if you use a "
            "mirror)"
        )
    sha = _known_sha256(cache_dir, spec.source.name)
    assert sha is not None
    _record(cache_dir, spec.source.name, sha)
    out: dict[str, torch.Tensor] = {}
    label = f"converting {pt.name} to fp16 (once)"
    for k, v in progress_bar(len(sd), label, progress, iterable=sd.items(), unit=" tensors"):
        peak = float(v.abs().amax()) if v.numel() else 0.0  # NaN/inf propagate into the max
        if not math.isfinite(peak):
            raise UserError(
                f"{pt} holds NaN/inf values in {k}: corrupted; run "
                f"`text2img download --force --only {spec.name}`"
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
    _record(cache_dir, spec.cache_name, hashlib.sha256(data).hexdigest())  # for --check


# --- status (`text2img download --check`) ----------------------------------------------


@dataclass(frozen=True)
class FileStatus:
    name: str
    path: Path
    state: str  # ok | missing | damaged | stale | not converted | unverified
    size: int | None

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def line(self) -> str:
        size = human_size(self.size) if self.size is not None else "-"
        return f"{self.name:<16} {self.state:<13} {size:>9}  {self.path}"


def weights_status(
    cache_dir: Path,
    *,
    manifest: Manifest | None = None,
    only: Collection[str] | None = None,
    deep: bool = True,
) -> list[FileStatus]:
    """What is in the cache (no network); `deep` re-hashes every downloaded file."""
    manifest = manifest or default_manifest()
    wanted = set(only) if only else {"tokenizer", *(s.name for s in manifest.checkpoints)}
    out: list[FileStatus] = []

    def size_of(p: Path) -> int | None:
        return p.stat().st_size if p.exists() else None

    if "tokenizer" in wanted:
        for rf in manifest.tokenizer:
            path = cache_dir / rf.name
            sha = _known_sha256(cache_dir, rf.name, rehash=deep)
            state = "missing" if sha is None else "ok" if sha == rf.sha256 else "damaged"
            out.append(FileStatus(Path(rf.name).name, path, state, size_of(path)))
    for spec in manifest.checkpoints:
        if spec.name not in wanted:
            continue
        cached = cache_dir / spec.cache_name
        pt = cache_dir / spec.source.name
        pt_sha = _known_sha256(cache_dir, spec.source.name, rehash=deep)
        rec = _records(cache_dir).get(spec.source.name)
        if pt_sha is not None:
            pt_state = (
                "unverified" if rec is None else "ok" if rec["sha256"] == pt_sha else "damaged"
            )
            out.append(FileStatus(spec.source.name, pt, pt_state, size_of(pt)))
        cached_rec = _records(cache_dir).get(spec.cache_name)
        if cache_metadata(cached) is None:
            state = "not converted" if pt_sha is not None else "missing"
        elif not _cache_is_current(cache_dir, spec):
            state = "stale"
        elif deep and cached_rec and sha256_file(cached) != cached_rec["sha256"]:
            state = "damaged"
        else:
            state = "ok"
        out.append(FileStatus(spec.name, cached, state, size_of(cached)))
    return out

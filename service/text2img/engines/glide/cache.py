"""The GLIDE weights cache: what belongs in it, where it lives, what is known to be intact.

Layout (`default_cache_dir()` unless told otherwise):

    base.pt, upsample.pt                 the released checkpoints, as downloaded (fp32)
    base.fp16.safetensors, upsample.…    fp16 copies made once (`convert`); what is loaded
    tokenizer/encoder.json.gz, …/vocab.bpe.gz
    manifest.json                        size, mtime and sha256 of every verified file
    .lock                                flock: one writer at a time (download, conversion)

The safetensors metadata records the size and sha256 of the `.pt` it came from, so a `.pt`
replaced later makes the cache stale and it is converted again. No torch in here.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from text2img.engines.fetch.disk import (
    SEGMENT,
    human_size,
    map_file,
    segment_digests,
)
from text2img.engines.glide.records import known_sha256, read_records
from text2img.errors import UserError

CHECKPOINT_URL_BASE = "https://openaipublic.blob.core.windows.net/diffusion/dec-2021"
UPSTREAM_COMMIT = "69b530740eb6cef69442d6180579ef5ba9ef063e"
TOKENIZER_URL_BASE = (
    f"https://raw.githubusercontent.com/openai/glide-text2im/{UPSTREAM_COMMIT}"
    "/glide_text2im/tokenizer"
)
URL_ENV = "TEXT2IMG_WEIGHTS_URL"  # one folder holding all four files (a mirror)
CACHE_FORMAT = "1"
# safetensors metadata key: sha256 of the tensor data (everything after the header), per
# 16 MiB segment so that loading can hash on several cores while it reads; written at
# conversion, so an fp16 copy verifies itself on every load without trusting anything else
# on disk (copies written before it existed verify against manifest.json)
DATA_SHA_KEY = "text2img_data_sha256_16mib"  # one sha256 per 16 MiB segment (`SEGMENT`)


PINS_ENV = "TEXT2IMG_WEIGHTS_PINS"  # a JSON file adding/replacing pins (see `pins`)


@dataclass(frozen=True)
class Pin:
    """What a released file must be, fixed in the code: never learnt from the disk."""

    sha256: str
    size: int


# The released checkpoints' sha256 and size. EMPTY ON PURPOSE: OpenAI publishes no checksum
# for diffusion/dec-2021/{base,upsample}.pt and no copy we could check states one, so
# nothing is pinned rather than a guessed value. Until a pin is added (here or through
# $TEXT2IMG_WEIGHTS_PINS), a checkpoint is trusted only as text2img downloaded it: the
# sha256 recorded at download time, after the transfer was verified (size, and the MD5 the
# server states when it states one), never a hash recomputed later (`convert`).
RELEASED_PINS: dict[str, Pin] = {}


def pins() -> dict[str, Pin]:
    """`RELEASED_PINS`, plus those in the JSON file $TEXT2IMG_WEIGHTS_PINS names:
    `{"base.pt": {"sha256": "…", "size": 1234}, …}` (for a mirror whose files you checked
    yourself, or for tests)."""
    out = dict(RELEASED_PINS)
    where = os.environ.get(PINS_ENV)
    if not where:
        return out
    try:
        data = json.loads(Path(where).expanduser().read_text())
        for name, pin in data.items():
            sha = str(pin["sha256"]).lower()
            if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                raise ValueError(f"{name}: sha256 is not 64 hex digits")
            out[str(name)] = Pin(sha, int(pin["size"]))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UserError(
            f"{PINS_ENV}={where}: cannot use it as a pins file ({exc}); it must be JSON like "
            '{"base.pt": {"sha256": "<64 hex digits>", "size": <bytes>}}, or unset it'
        ) from None
    return out


def pinned(rf: RemoteFile) -> RemoteFile:
    """`rf` with the sha256 and size pinned for its file name, if any."""
    pin = pins().get(Path(rf.name).name)
    return rf if pin is None else RemoteFile(rf.name, rf.url, pin.sha256, pin.size)


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
        pinned(RemoteFile("base.pt", f"{ckpt_base}/base.pt")),
        num_tensors=783,
        num_params=385_030_726,
        listing_sha256="02933f5d06c83263194eeeffc074e6ab0efae169f0284357e5a5bdffa60b63c7",
    )
    upsample = CheckpointSpec(
        "upsample",
        pinned(RemoteFile("upsample.pt", f"{ckpt_base}/upsample.pt")),
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
    """The shared cache of every engine (`registry.default_cache_dir`)."""
    from text2img.engines.registry import default_cache_dir as shared

    return shared()


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


def read_cache_file(cache_dir: Path, spec: CheckpointSpec) -> tuple[dict[str, Any], memoryview]:
    """The fp16 copy's tensor header and its tensor data, verified.

    The data (a copy-on-write mapping of the file: no copy in memory) is hashed per 16 MiB
    segment on several cores (`segment_digests`) and must match the digests the conversion
    embedded in the header (`DATA_SHA_KEY`); a copy from before that key existed must
    match its manifest record instead. Anything else is a `UserError` that says what to
    run: a same-size file with overwritten bytes is never loaded.
    """
    path = cache_dir / spec.cache_name
    redo = (
        f"run `text2img download --model glide --force --only {spec.name}` to fetch and "
        "convert it again (`text2img download --model glide --check` lists what is damaged)"
    )

    def damaged(why: str) -> UserError:
        return UserError(f"the GLIDE {spec.name} weights {path} are damaged ({why}): {redo}")

    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            if not 2 <= n <= min(100_000_000, size - 8):
                raise damaged("its header is unreadable")
            try:
                header = json.loads(f.read(n))
                meta = header.pop("__metadata__", None) or {}
                data_len = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                raise damaged("its header is unreadable") from None
            if 8 + n + data_len != size:
                raise damaged(f"it is {size} bytes, its header describes {8 + n + data_len}")
            whole = memoryview(map_file(f))
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror}): {redo}") from None
    data = whole[8 + n :]
    segments = meta.get(DATA_SHA_KEY) if isinstance(meta, dict) else None
    if segments is not None:
        got, want = segment_digests(data), str(segments).split(",")
        if got != want:
            pairs = zip(got, want, strict=False)
            first = next((i for i, (a, b) in enumerate(pairs) if a != b), len(want))
            raise damaged(
                f"the sha256 of its data from byte {8 + n + first * SEGMENT:,} on differs "
                "from the one written with it: its bytes changed on disk"
            )
        return header, data
    # written before DATA_SHA_KEY: the whole file against its manifest record
    rec = read_records(cache_dir).get(spec.cache_name)
    expected = rec.get("sha256") if isinstance(rec, dict) else None
    if expected is None:
        raise damaged("it carries no checksum and manifest.json has no record of it")
    sha = hashlib.sha256(whole).hexdigest()
    if sha != expected:
        raise damaged(
            f"sha256 {sha[:12]}…, {str(expected)[:12]}… recorded when it was written: "
            "its bytes changed on disk"
        )
    return header, data


def trusted_source_sha256(cache_dir: Path, spec: CheckpointSpec) -> str | None:
    """The sha256 the checkpoint `spec.source` must have: its pin, else the hash recorded
    when text2img downloaded it; None if neither exists (a file nobody vouches for)."""
    if spec.source.sha256 is not None:
        return spec.source.sha256.lower()
    rec = read_records(cache_dir).get(spec.source.name)
    if isinstance(rec, dict) and rec.get("origin", "download") in ("download", "pin"):
        return str(rec["sha256"])
    return None


def copy_is_ours(cache_dir: Path, spec: CheckpointSpec) -> bool:
    """True if the fp16 copy exists, is complete and is one we wrote for this checkpoint.
    What a start needs: the copy verifies its own bytes on load (`read_cache_file`), so
    the `.pt` it came from is not read, and a damaged `.pt` cannot stop a start."""
    meta = cache_metadata(cache_dir / spec.cache_name)
    if meta is None or meta.get("text2img_cache_format") != CACHE_FORMAT:
        return False
    return meta.get("text2img_num_params") == str(spec.num_params) or not spec.listing_sha256


def cache_is_current(cache_dir: Path, spec: CheckpointSpec) -> bool:
    """True if the fp16 cache is ours and came from the `.pt` now present (if any): what
    `download` checks before converting again."""
    if not copy_is_ours(cache_dir, spec):
        return False
    meta = cache_metadata(cache_dir / spec.cache_name) or {}
    sha = known_sha256(cache_dir, spec.source.name)
    return sha is None or sha == meta.get("text2img_source_sha256")


def tokenizer_paths(cache_dir: Path, *, manifest: Manifest | None = None) -> tuple[Path, Path]:
    """(encoder.json.gz, vocab.bpe.gz) in the cache, checked against their sha256."""
    manifest = manifest or default_manifest()
    paths = []
    for rf in manifest.tokenizer:
        path = cache_dir / rf.name
        sha = known_sha256(cache_dir, rf.name)
        if sha is None:
            raise UserError(
                f"the tokenizer file {path} is missing: run `text2img download --model glide`"
            )
        if rf.sha256 is not None and sha != rf.sha256:
            raise UserError(
                f"the tokenizer file {path} is damaged (sha256 {sha[:12]}…, expected "
                f"{rf.sha256[:12]}…): run "
                "`text2img download --model glide --force --only tokenizer`"
            )
        paths.append(path)
    return paths[0], paths[1]


# --- status (`text2img download --check`) ------------------------------------------------


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
            sha = known_sha256(cache_dir, rf.name, rehash=deep)
            state = "missing" if sha is None else "ok" if sha == rf.sha256 else "damaged"
            out.append(FileStatus(Path(rf.name).name, path, state, size_of(path)))
    for spec in manifest.checkpoints:
        if spec.name not in wanted:
            continue
        cached = cache_dir / spec.cache_name
        pt = cache_dir / spec.source.name
        pt_sha = known_sha256(cache_dir, spec.source.name, rehash=deep)
        if pt_sha is not None:
            trusted = trusted_source_sha256(cache_dir, spec)
            pt_state = "unverified" if trusted is None else "ok" if trusted == pt_sha else "damaged"
            out.append(FileStatus(spec.source.name, pt, pt_state, size_of(pt)))
        if cache_metadata(cached) is None:
            state = "not converted" if pt_sha is not None else "missing"
        elif not cache_is_current(cache_dir, spec):
            state = "stale"
        elif deep and not _cache_file_intact(cache_dir, spec):
            state = "damaged"
        else:
            state = "ok"
        out.append(FileStatus(spec.name, cached, state, size_of(cached)))
    return out


def _cache_file_intact(cache_dir: Path, spec: CheckpointSpec) -> bool:
    """The same check as every load (`read_cache_file`), without keeping the data."""
    try:
        read_cache_file(cache_dir, spec)
    except UserError:
        return False
    return True

"""Integrity of cached Hub files, from the Hub's own metadata: no hashes typed in by hand.

huggingface_hub stores each file as `blobs/<etag>` and links `snapshots/<rev>/<path>` to
it. For an LFS file (weights) the etag IS the file's sha256; for a small git file
(configs, tokenizer files) it is the git blob id, sha1(b"blob <size>\\0" + content). So a
blob's name says what its content must hash to, offline. A record of verified blobs
(size + mtime) spares the multi-GB re-hash on every wake; `deep` checks hash again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

RECORDS = "text2img-verified.json"
CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class FileStatus:
    """One pinned file in the cache (registry.WeightStatus)."""

    name: str
    state: str  # "ok" | "missing" | "damaged"
    size: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def line(self) -> str:
        size = "" if self.size is None else f" ({self.size / 1e6:,.1f} MB)"
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.state:<8} {self.name}{size}{detail}"


def blob_of(pointer: Path) -> Path | None:
    """The blob a snapshot entry links to, or None when it is not a blob link."""
    if not pointer.is_symlink():
        return None
    blob = pointer.resolve()
    return blob if blob.parent.name == "blobs" else None


def content_hash(path: Path, etag: str) -> str:
    """sha256 (64 hex etag, LFS) or git blob sha1 (40 hex etag) of the file."""
    if len(etag) == 64:
        digest = hashlib.sha256()
    else:
        digest = hashlib.sha1(usedforsecurity=False)  # git's blob id, not security
        digest.update(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _load_records(hub_cache: Path) -> dict[str, list[int]]:
    try:
        data = json.loads((hub_cache / RECORDS).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_record(hub_cache: Path, blob: Path) -> None:
    """Remember a verified blob; best effort (a read-only cache just re-hashes later)."""
    records = _load_records(hub_cache)
    st = blob.stat()
    records[blob.name] = [st.st_size, st.st_mtime_ns]
    tmp = hub_cache / f".{RECORDS}.{os.getpid()}"
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps(records, indent=0, sort_keys=True))
        tmp.replace(hub_cache / RECORDS)


def check(hub_cache: Path, pointer: Path, name: str, *, deep: bool) -> FileStatus:
    """The state of one snapshot entry; hashes it unless a record vouches (and not deep)."""
    if not pointer.exists():
        return FileStatus(name, "missing")
    size = pointer.stat().st_size
    blob = blob_of(pointer)
    if blob is None:
        # Not huggingface_hub's layout (copied by hand): nothing says what it must hash to.
        return FileStatus(name, "ok", size, "not a Hub blob link, content not verifiable")
    st = blob.stat()
    if not deep and _load_records(hub_cache).get(blob.name) == [st.st_size, st.st_mtime_ns]:
        return FileStatus(name, "ok", size)
    actual = content_hash(blob, blob.name)
    if actual != blob.name:
        return FileStatus(
            name,
            "damaged",
            size,
            f"content hashes to {actual[:12]}…, the Hub says {blob.name[:12]}…",
        )
    _save_record(hub_cache, blob)
    return FileStatus(name, "ok", size)


def remove(pointer: Path) -> None:
    """Drop a damaged entry (blob and link) so that the next download fetches it again."""
    blob = blob_of(pointer)
    pointer.unlink(missing_ok=True)
    if blob is not None:
        blob.unlink(missing_ok=True)

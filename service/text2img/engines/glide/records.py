"""The GLIDE cache's records of verified files (manifest.json): size, mtime and sha256 of
each file as it was when something vouched for it, so a later run need not hash it again
and a file changed since is noticed. No torch in here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from text2img.engines.fetch.disk import sha256_file, write_atomic


def read_records(cache_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((cache_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record(cache_dir: Path, name: str, sha256: str, origin: str) -> None:
    """Remember a file as it was when it was verified (call with the cache lock held).

    `origin` says who vouches for the hash: "download" (a transfer verified end to end),
    "conversion" (an fp16 copy we wrote), "pin" (matched a pinned hash). Only those write
    a hash; a file found changed later is never re-recorded with its new hash.
    """
    records = read_records(cache_dir)
    st = (cache_dir / name).stat()
    records[name] = {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": sha256,
        "origin": origin,
    }
    data = json.dumps(records, indent=1, sort_keys=True).encode()
    write_atomic(cache_dir / "manifest.json", data, "the cache's manifest")


def refreshed_sha256(cache_dir: Path, name: str, pin: str | None = None) -> str | None:
    """`known_sha256`, refreshing the record of a file whose mtime changed (e.g. copied)
    when its content is still the recorded (or pinned) one, so later runs need not hash it
    again (call with the cache lock held). A changed file keeps its old record: the
    manifest records what was verified, it never adopts what is on disk."""
    sha = known_sha256(cache_dir, name)
    if sha is None:
        return None
    rec = read_records(cache_dir).get(name)
    st = (cache_dir / name).stat()
    if rec and (rec["size"], rec["mtime_ns"]) == (st.st_size, st.st_mtime_ns):
        return sha
    if rec and rec.get("sha256") == sha:
        record(cache_dir, name, sha, str(rec.get("origin", "download")))
    elif pin is not None and sha == pin:
        record(cache_dir, name, sha, "pin")
    return sha


def known_sha256(cache_dir: Path, name: str, *, rehash: bool = False) -> str | None:
    """sha256 of a cached file: from its record while size and mtime still match, else hashed."""
    path = cache_dir / name
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    rec = read_records(cache_dir).get(name)
    if not rehash and rec and (rec["size"], rec["mtime_ns"]) == (st.st_size, st.st_mtime_ns):
        return str(rec["sha256"])
    return sha256_file(path)

"""Integrity of cached Hub files, from the Hub's own metadata: no hashes typed in by hand.

huggingface_hub links `snapshots/<rev>/<path>` to `blobs/<etag>`. For an LFS file
(weights) the etag IS the file's sha256; for a small git file (configs, tokenizer files) it
is the git blob id, sha1(b"blob <size>\\0" + content). So the name of the snapshot link's
FIRST target says what the content must hash to, offline. Layouts huggingface_hub makes:

- `blobs/<etag>` a regular file (classic layout);
- `blobs/<etag>` itself a link into the cache-wide Xet store `<hub>/blobs/<2 hex>/<xet
  hash>` (huggingface_hub >= 2.4, `utils/_shared_blobs.publish_blob_to_shared_store`):
  the content is the store entry, the expected hash is still the first link's name;
- a plain file where the link was (a `cp -rL` copy, or a filesystem without links): the
  etag is the one recorded for that path when it was last verified through a link
  (`ETAGS`, written next to the cache; a copy of the whole cache carries it along).

`RECORDS` (size + mtime of each verified file) only spares `download`'s quick check from
re-hashing; loading never trusts it (`loading.py` hashes every byte it loads).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

RECORDS = "text2img-verified.json"  # resolved path (relative to the hub cache) -> [size, mtime]
ETAGS = "text2img-etags.json"  # file label (repo/path) -> etag, learnt through a blob link
CHUNK = 8 * 1024 * 1024
_ETAG = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


@dataclass(frozen=True)
class FileStatus:
    """One pinned file in the cache (registry.WeightStatus)."""

    name: str
    state: str  # "ok" | "missing" | "damaged" | "unverified"
    size: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def line(self) -> str:
        size = "" if self.size is None else f" ({self.size / 1e6:,.1f} MB)"
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.state:<8} {self.name}{size}{detail}"


def first_link(pointer: Path) -> Path | None:
    """Where a snapshot entry's own link points (not followed further), or None."""
    if not pointer.is_symlink():
        return None
    return Path(os.path.normpath(pointer.parent / os.readlink(pointer)))


def link_etag(pointer: Path) -> str | None:
    """The etag a snapshot link names (`…/blobs/<etag>`), whatever that blob links to."""
    blob = first_link(pointer)
    if blob is None or blob.parent.name != "blobs" or not _ETAG.fullmatch(blob.name):
        return None
    return blob.name


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, object]) -> bool:
    """Atomic best-effort write (a read-only cache just re-hashes later)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
        tmp.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    return True


def expected_etag(hub_cache: Path, pointer: Path, label: str) -> str | None:
    """What `pointer`'s content must hash to: its link's name, else the recorded etag."""
    etag = link_etag(pointer)
    if etag is not None:
        return etag
    recorded = _read_json(hub_cache / ETAGS).get(label)
    return recorded if isinstance(recorded, str) and _ETAG.fullmatch(recorded) else None


class Stopped(Exception):
    """A hash given up on (the load it served was cancelled)."""


def content_hash(path: Path, etag: str, stop: threading.Event | None = None) -> str:
    """sha256 (64 hex etag, LFS) or git blob sha1 (40 hex etag) of the file (links followed)."""
    if len(etag) == 64:
        digest = hashlib.sha256()
    else:
        digest = hashlib.sha1(usedforsecurity=False)  # git's blob id, not security
        digest.update(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            if stop is not None and stop.is_set():
                raise Stopped(str(path))
            digest.update(chunk)
    return digest.hexdigest()


def _record_key(hub_cache: Path, pointer: Path) -> str:
    return os.path.relpath(pointer.resolve(), hub_cache.resolve())


def remember(hub_cache: Path, pointer: Path, label: str, etag: str) -> None:
    """After a hash matched: the file's size + mtime (for `download`'s quick check) and,
    when learnt through a link, the etag of its label (so a plain copy can be verified)."""
    records = _read_json(hub_cache / RECORDS)
    st = pointer.stat()
    records[_record_key(hub_cache, pointer)] = [st.st_size, st.st_mtime_ns]
    _write_json(hub_cache / RECORDS, records)
    if link_etag(pointer) == etag:
        etags = _read_json(hub_cache / ETAGS)
        if etags.get(label) != etag:
            etags[label] = etag
            _write_json(hub_cache / ETAGS, etags)


def forget(hub_cache: Path, pointer: Path) -> bool:
    """Drop the quick-check record of a file found damaged, so that the next `download`
    hashes it (and fetches it again). False if the record could not be dropped."""
    records = _read_json(hub_cache / RECORDS)
    key = _record_key(hub_cache, pointer)
    if key not in records:
        return True
    del records[key]
    return _write_json(hub_cache / RECORDS, records)


def damage(label: str, actual: str, etag: str) -> str:
    return f"{label}: content hashes to {actual[:12]}…, the Hub says {etag[:12]}…"


def check(hub_cache: Path, pointer: Path, name: str, *, deep: bool) -> FileStatus:
    """The state of one snapshot entry; hashes it unless (not deep) a record vouches."""
    if not pointer.exists():
        return FileStatus(name, "missing")
    size = pointer.stat().st_size
    etag = expected_etag(hub_cache, pointer, name)
    if etag is None:
        return FileStatus(
            name, "unverified", size, "a plain file with no recorded Hub hash: fetched again"
        )
    st = pointer.stat()
    record = _read_json(hub_cache / RECORDS).get(_record_key(hub_cache, pointer))
    if not deep and record == [st.st_size, st.st_mtime_ns]:
        return FileStatus(name, "ok", size)
    actual = content_hash(pointer, etag)
    if actual != etag:
        return FileStatus(
            name, "damaged", size, f"content hashes to {actual[:12]}…, the Hub says {etag[:12]}…"
        )
    remember(hub_cache, pointer, name, etag)
    return FileStatus(name, "ok", size)


def remove(pointer: Path) -> None:
    """Drop an entry (link, repo blob, and the shared-store entry the blob links to) so
    that the next download fetches it again: huggingface_hub reuses a store entry after
    checking only its size, so a damaged one left there would come straight back."""
    blob = first_link(pointer)
    store = None
    if blob is not None and blob.is_symlink():
        target = blob.resolve()
        # only huggingface_hub's store layout: <hub>/blobs/<2 hex>/<64 hex>
        if target.parent.parent.name == "blobs" and target.name[:2] == target.parent.name:
            store = target
    pointer.unlink(missing_ok=True)
    if blob is not None and blob.parent.name == "blobs":
        blob.unlink(missing_ok=True)
    if store is not None:
        store.unlink(missing_ok=True)


class Hashing:
    """Hashes the files a load reads on background threads, while the loader reads them
    (hashlib and file reads release the GIL; the hash read also warms the page cache the
    loader reads from). Use as a context manager; `finish()` raises a UserError naming
    the damaged file and the one command to run. No record is trusted: every byte loaded
    is hashed on every load."""

    def __init__(
        self, hub_cache: Path, entries: list[tuple[Path, str]], run: str, threads: int = 2
    ) -> None:
        from concurrent.futures import Future, ThreadPoolExecutor

        self._hub = hub_cache
        self._run = run
        self._force = False
        self._stop = threading.Event()
        self._jobs: list[tuple[Path, str, str, Future[str]]] = []
        problems = []
        for pointer, label in entries:
            if not pointer.exists():
                problems.append(f"{label} is missing")
            elif expected_etag(hub_cache, pointer, label) is None:
                problems.append(f"{label} is a plain file with no recorded Hub hash")
        if problems:
            more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
            from text2img.errors import UserError

            raise UserError(
                f"cannot load from {hub_cache}: {'; '.join(problems[:2])}{more}; run `{run}`"
            )
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="sha")
        biggest_first = sorted(entries, key=lambda e: -e[0].stat().st_size)
        for pointer, label in biggest_first:
            etag = expected_etag(hub_cache, pointer, label) or ""
            job = self._pool.submit(content_hash, pointer, etag, self._stop)
            self._jobs.append((pointer, label, etag, job))

    def __enter__(self) -> Hashing:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        from text2img.engines.base import Cancelled

        if isinstance(exc, Cancelled):  # stop hashing now; nothing was loaded for use
            self._stop.set()
            with contextlib.suppress(Exception):
                self._collect()
            return
        # done, or a load that failed (e.g. a damaged header): if a hash differs, that is
        # the answer, and `download` must fetch the file again rather than trust its
        # quick record; else the load's own error stands
        self.finish()

    def _collect(self) -> list[str]:
        bad, forgotten = [], True
        try:
            for pointer, label, etag, job in self._jobs:
                try:
                    actual = job.result()
                except Stopped:
                    continue
                except OSError as exc:  # vanished or unreadable since the check
                    bad.append(f"{label}: unreadable ({exc.strerror or exc})")
                    continue
                if actual == etag:
                    remember(self._hub, pointer, label, etag)
                else:
                    bad.append(damage(label, actual, etag))
                    forgotten = forget(self._hub, pointer) and forgotten
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._jobs = []
        self._force = not forgotten
        return bad

    def finish(self) -> None:
        """Wait for every hash; UserError if any differs from what the Hub says."""
        bad = self._collect()
        if bad:
            from text2img.errors import UserError

            force = " --force" if self._force else ""
            raise UserError(
                f"refusing to load damaged weights ({'; '.join(bad)}); run "
                f"`{self._run}{force}` to fetch {'it' if len(bad) == 1 else 'them'} again"
            )

"""Disk side of a weights cache: one writer at a time, atomic writes, free space, hashes.

Shared by every engine's weights code (GLIDE's download, conversion and cache records;
any engine that fetches files) and by `fetch.http`; no torch and no network in here.
Every failure a user can fix becomes a one-line `UserError` saying what to do next.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import mmap
import os
import shutil
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from text2img.errors import UserError

CHUNK = 1 << 20
RERUN = "run the same `text2img download` command again"  # engines name their own


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


SEGMENT = 16 * CHUNK  # the unit of `segment_digests`: hashed independently, in parallel


def hash_threads() -> int:
    """Threads that hash segments: hashlib releases the GIL, so they run on separate cores;
    at most 4 (a T4 VM has 4-8 vCPUs, and the service is idle while it loads)."""
    return max(1, min(4, os.cpu_count() or 1))


def _sha256_hex(view: memoryview) -> str:
    return hashlib.sha256(view).hexdigest()


def segment_digests(data: memoryview) -> list[str]:
    """sha256 of each `SEGMENT` of `data` (the last may be shorter), on `hash_threads()`.

    On a file mapping (`map_file`) this is also the read: each thread faults its own
    segment in from disk, so a cold file is read in parallel, and nothing is copied.
    """
    views = [data[i : i + SEGMENT] for i in range(0, len(data), SEGMENT)]
    with ThreadPoolExecutor(hash_threads(), thread_name_prefix="sha256") as pool:
        return list(pool.map(_sha256_hex, views))


def map_file(f: io.BufferedIOBase) -> mmap.mmap:
    """A private (copy-on-write) mapping of the whole file: tensors can view it without a
    copy, like safetensors' own loader. Files in the cache are only ever replaced by an
    atomic rename, never rewritten in place, so the mapped bytes stay the verified ones."""
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    with contextlib.suppress(AttributeError, OSError):  # a hint: start reading ahead now
        m.madvise(mmap.MADV_WILLNEED)
    return m


def say(message: str, enabled: bool = True) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def cache_lock(cache_dir: Path, *, progress: bool = True) -> Iterator[None]:
    """Exclusive lock on the cache so two processes never write the same files."""
    make_dir(cache_dir)
    try:
        lock_file = (cache_dir / ".lock").open("a")
    except OSError as exc:
        raise UserError(
            f"cannot write to the weights cache {cache_dir} ({exc.strerror}); make it writable "
            "or choose another place with --cache-dir or TEXT2IMG_MODEL_CACHE"
        ) from None
    with lock_file as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another text2img process using {cache_dir} …", progress)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the weights cache {path} ({exc.strerror}); "
            "choose a writable place with --cache-dir or TEXT2IMG_MODEL_CACHE"
        ) from None


def fsync_replace(src: Path, dest: Path) -> None:
    """Rename `src` over `dest` atomically and make the rename durable."""
    with src.open("rb+") as f:
        os.fsync(f.fileno())
    os.replace(src, dest)
    dir_fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_atomic(dest: Path, data: bytes, label: str, rerun: str = RERUN) -> None:
    """Write `data` to `dest` through a temporary file and an atomic rename."""
    tmp = dest.with_name(dest.name + ".tmp")
    check_free_space(tmp.parent, len(data), label)
    view = memoryview(data)
    try:
        with tmp.open("wb") as f:
            for i in range(0, len(view), 64 * CHUNK):
                f.write(view[i : i + 64 * CHUNK])
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise disk_full_error(exc, tmp, len(data), "writing", False, rerun) from None
        raise UserError(f"cannot write {tmp} ({exc.strerror}); check the cache dir") from None
    fsync_replace(tmp, dest)


def disk_full_error(
    exc: OSError, target: Path, needed: int, what: str, resumable: bool = True, rerun: str = RERUN
) -> UserError:
    free = shutil.disk_usage(target.parent).free
    again = f"then {rerun}" + (" (it resumes)" if resumable else "")
    return UserError(
        f"disk full while {what} {target} ({exc.strerror}): {human_size(needed)} more is "
        f"needed there, {human_size(free)} is free; free some space or point "
        f"TEXT2IMG_MODEL_CACHE/--cache-dir elsewhere, {again}"
    )


def check_free_space(folder: Path, needed: int, what: str, *, margin: int = 16 * 1000**2) -> None:
    """UserError unless `folder` has `needed` bytes free and `margin` to spare."""
    free = shutil.disk_usage(folder).free
    if free < needed + margin:
        raise UserError(
            f"not enough disk space for {what} in {folder}: {human_size(needed)} "
            f"needed, {human_size(free)} free; free some space or point "
            "TEXT2IMG_MODEL_CACHE/--cache-dir elsewhere"
        )


class _LogLines:
    """A file for tqdm that gives each update its own line (logs have no carriage return)."""

    def write(self, text: str) -> None:
        if line := text.replace("\r", "").strip():
            print(line, file=sys.stderr, flush=True)

    def flush(self) -> None:
        pass


def progress_bar(total: int | None, label: str, enabled: bool, **kw: Any) -> Any:
    """A tqdm bar on stderr: live on a terminal, a plain line every 15 s in a log."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=label,
        file=sys.stderr if tty else _LogLines(),
        ascii=not tty,
        disable=not enabled,
        mininterval=0.5 if tty else 15.0,
        **kw,
    )

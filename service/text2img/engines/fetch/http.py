"""Resumable, verified HTTP downloads into a cache directory (no torch in here).

`fetch` streams a URL into `<dest>.part` with a progress bar, resumes a partial file with
an HTTP Range request (guarded by If-Range, so a changed file on the server restarts
cleanly; a server that ignores Range and answers 200 also restarts cleanly), retries
connection drops and 5xx/429 answers with bounded backoff (never a failed name lookup:
offline, that fails at once, naming a mirror and the tiny model as ways out), checks the
size (Content-Length / Content-Range and the expected size), the sha256 where known and
the Content-MD5 the server advertises (Azure Blob Storage does for blobs that carry one),
then renames the file into place atomically.
Every failure a user can fix becomes a one-line `UserError` saying what to do next; the
engine that downloads says what that is for its files (`Advice`: the command to re-run,
its mirror setting, the way out offline).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from text2img import __version__
from text2img.engines.fetch.disk import (
    CHUNK,
    RERUN,
    check_free_space,
    disk_full_error,
    fsync_replace,
    make_dir,
    progress_bar,
    say,
)
from text2img.errors import UserError


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failed request is retried (connection errors, drops, 5xx, 429)."""

    attempts: int = 5  # consecutive failures without progress before giving up
    backoff_s: float = 1.0  # first wait; doubles each time
    max_backoff_s: float = 30.0
    connect_timeout_s: float = 15.0
    read_timeout_s: float = 60.0

    def wait(self, failures: int) -> None:
        time.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** max(0, failures - 1)))


class _Retry(Exception):
    """One attempt failed in a way worth retrying (after a backoff)."""


@dataclass(frozen=True)
class Advice:
    """What a failed download tells the user to do, in the downloading engine's terms."""

    rerun: str = RERUN  # "run `text2img download --model glide` again"
    mirror_env: str | None = None  # the setting that points at a mirror, if the engine has one
    offline: str = "check the network connection (no name could be resolved)"

    @property
    def unreachable(self) -> str:
        mirror = f" (or set {self.mirror_env} to a mirror you can reach)" if self.mirror_env else ""
        return f"check the network connection{mirror}"

    def mirror_note(self, text: str) -> str:
        """`text` with the mirror setting filled in ("" when the engine has none)."""
        return text.format(env=self.mirror_env) if self.mirror_env else ""


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_DNS_TEXT = re.compile(
    r"name or service|nodename|servname|name resolution|getaddrinfo|no address associated",
    re.I,
)


def _is_dns_failure(exc: BaseException) -> bool:
    """True if name resolution failed (offline, no DNS): retrying does not fix that.

    httpx wraps the resolver's `socket.gaierror` (through httpcore); walk the chain, and
    fall back on the message for transports that keep only the text.
    """
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, socket.gaierror):
            return True
        seen = seen.__cause__ or seen.__context__
    return isinstance(exc, httpx.ConnectError) and bool(_DNS_TEXT.search(str(exc)))


def _describe_transport_error(exc: httpx.TransportError, url: str) -> str:
    host = httpx.URL(url).host
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        if _is_dns_failure(exc):
            return f"cannot resolve {host} (DNS failure: {text})"
        return f"cannot connect to {host} ({text})"
    if isinstance(exc, httpx.TimeoutException):
        return f"{host} timed out ({type(exc).__name__})"
    return f"connection to {host} broke off ({text})"


def _md5_header(response: httpx.Response, partial: bool) -> str | None:
    """The whole file's MD5 as hex, when the server states it (Azure Blob Storage does)."""
    value = response.headers.get("x-ms-blob-content-md5")
    if value is None and not partial:
        value = response.headers.get("content-md5")
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True).hex()
    except ValueError:
        return None


@dataclass
class _State:
    """What is known about the partial file across attempts (saved next to it)."""

    url: str
    etag: str | None = None
    total: int | None = None
    md5: str | None = None

    @classmethod
    def load(cls, path: Path, url: str) -> _State | None:
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if data.get("url") != url:
            return None
        return cls(url=url, etag=data.get("etag"), total=data.get("total"), md5=data.get("md5"))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__))


@dataclass(frozen=True)
class Fetched:
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class _Job:
    url: str
    dest: Path
    sha256: str | None
    size: int | None
    reserve: int  # bytes to keep free beyond the download itself
    progress: bool
    label: str
    advice: Advice

    @property
    def part(self) -> Path:
        return self.dest.with_name(self.dest.name + ".part")

    @property
    def state_path(self) -> Path:
        return self.dest.with_name(self.dest.name + ".part.json")


def fetch(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    retry: RetryPolicy | None = None,
    label: str | None = None,
    reserve: int = 0,
    advice: Advice | None = None,
) -> Fetched:
    """Download `url` to `dest` (resuming `dest.part`), verify it, rename it into place.

    `reserve`: disk space needed afterwards (e.g. for a converted copy), checked up front.
    """
    retry = retry or RetryPolicy()
    job = _Job(url, dest, sha256, size, reserve, progress, label or dest.name, advice or Advice())
    part = job.part
    make_dir(dest.parent)
    state = _State.load(job.state_path, url) if part.exists() else None
    if state is None:
        part.unlink(missing_ok=True)
        state = _State(url=url)
    timeout = httpx.Timeout(retry.read_timeout_s, connect=retry.connect_timeout_s)
    failures = 0
    agent = {"User-Agent": f"text2img/{__version__} (+weights download)"}
    with httpx.Client(follow_redirects=True, timeout=timeout, headers=agent) as client:
        while True:
            offset = part.stat().st_size if part.exists() else 0
            try:
                if _attempt(client, job, state, offset):
                    break
                if part.stat().st_size > offset:
                    continue  # the server answered part of the range: ask for the rest
                raise _Retry(f"the server sent no data at byte {offset} of {state.total}")
            except _Retry as exc:
                grew = part.exists() and part.stat().st_size > offset
                failures = 0 if grew else failures + 1
                if failures >= retry.attempts:
                    raise UserError(
                        f"could not download {job.label} from {url} after {failures} tries: "
                        f"{exc}; {job.advice.unreachable}, then {job.advice.rerun} (it resumes)"
                    ) from None
                say(f"{job.label}: {exc}; retrying", progress)
                retry.wait(failures)
    return _verify(job, state)


def _attempt(client: httpx.Client, job: _Job, state: _State, offset: int) -> bool:
    """One GET; True when the part file is complete, False to continue, _Retry on failure."""
    part, size = job.part, job.size
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if state.etag and not state.etag.startswith("W/"):
            headers["If-Range"] = state.etag
    try:
        with client.stream("GET", job.url, headers=headers) as response:
            status = response.status_code
            if status == 416 and offset:
                # Range starts at or past the end: complete if the sizes agree, else start over.
                m = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("content-range", ""))
                if m and int(m.group(1)) == offset and (size is None or size == offset):
                    state.total = offset
                    return True
                part.unlink()
                raise _Retry("the partial file no longer fits the server's copy; starting over")
            _raise_for_status(response, job)
            if status == 206:
                m = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", ""))
                if not m or int(m.group(1)) != offset:
                    part.unlink(missing_ok=True)
                    raise _Retry("the server answered a different byte range; starting over")
                total = None if m.group(3) == "*" else int(m.group(3))
            else:
                if offset:
                    say(f"{job.label}: the server does not resume; starting over", job.progress)
                offset = 0
                length = response.headers.get("content-length")
                encoded = response.headers.get("content-encoding", "identity") != "identity"
                total = int(length) if length and not encoded else None
            if size is not None and total is not None and total != size:
                raise UserError(
                    f"{job.url} is {total} bytes but {job.label} should be {size} bytes: this "
                    "is not the expected file"
                    + job.advice.mirror_note(" (check {env} if you use a mirror)")
                )
            state.total = total if total is not None else size
            state.etag = response.headers.get("etag")
            state.md5 = _md5_header(response, partial=status == 206) or state.md5
            state.save(job.state_path)
            if state.total is not None:
                check_free_space(part.parent, state.total - offset + job.reserve, job.label)
            _stream_body(response, job, offset, state.total)
    except httpx.TransportError as exc:
        if _is_dns_failure(exc):  # offline or no DNS: retrying would only make the user wait
            raise UserError(
                f"could not download {job.label} from {job.url}: "
                f"{_describe_transport_error(exc, job.url)}; {job.advice.offline}"
            ) from None
        raise _Retry(_describe_transport_error(exc, job.url)) from None
    written = part.stat().st_size
    if state.total is None or written == state.total:
        return True
    if written > state.total:
        part.unlink()
        raise _Retry(f"received more bytes than the {state.total} announced; starting over")
    return False


def _raise_for_status(response: httpx.Response, job: _Job) -> None:
    url, label, advice = job.url, job.label, job.advice
    status = response.status_code
    if status in (200, 206):
        return
    if status == 429 or status >= 500:
        raise _Retry(f"the server answered HTTP {status}")
    if status in (404, 410):
        raise UserError(
            f"{label} is not at {url} (HTTP {status})"
            + advice.mirror_note(
                "; if {env} points at a mirror, copy the file there or unset it to use the "
                "original source"
            )
        )
    if status in (401, 403):
        raise UserError(
            f"access to {url} was refused (HTTP {status}); check "
            + advice.mirror_note("the mirror's permissions ({env}) or ")
            + "a proxy in between"
        )
    raise UserError(f"unexpected HTTP {status} from {url} while fetching {label}")


def _stream_body(response: httpx.Response, job: _Job, offset: int, total: int | None) -> None:
    bar = progress_bar(total, job.label, job.progress, initial=offset, unit="B", unit_scale=True)
    with bar, job.part.open("ab" if offset else "wb") as f:
        for chunk in response.iter_raw():
            _write(f, chunk, job, total)
            bar.update(len(chunk))


def _write(f: IO[bytes], chunk: bytes, job: _Job, total: int | None) -> None:
    try:
        f.write(chunk)
        f.flush()
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            have = job.part.stat().st_size
            needed = (total - have if total is not None else len(chunk)) + job.reserve
            what = f"downloading {job.label} to"
            raise disk_full_error(exc, job.part, needed, what, True, job.advice.rerun) from None
        raise UserError(f"cannot write {job.part} ({exc.strerror}); check the cache dir") from None


def _verify(job: _Job, state: _State) -> Fetched:
    part, size, sha256 = job.part, job.size, job.sha256
    got = part.stat().st_size
    bad: str | None = None
    if size is not None and got != size:
        bad = f"it is {got} bytes, {size} expected (truncated or wrong file)"
    digest = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False)
    with part.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            md5.update(chunk)
    if bad is None and sha256 is not None and digest.hexdigest() != sha256.lower():
        bad = f"its sha256 is {digest.hexdigest()}, {sha256} expected (corrupted)"
    if bad is None and state.md5 is not None and md5.hexdigest() != state.md5:
        bad = f"its MD5 {md5.hexdigest()} differs from the server's {state.md5} (corrupted)"
    if bad is not None:
        part.unlink()
        job.state_path.unlink(missing_ok=True)
        raise UserError(
            f"downloaded {job.label} from {job.url} is damaged: {bad}; deleted it, "
            f"{job.advice.rerun}"
        )
    fsync_replace(part, job.dest)
    job.state_path.unlink(missing_ok=True)
    return Fetched(path=job.dest, size=got, sha256=digest.hexdigest())

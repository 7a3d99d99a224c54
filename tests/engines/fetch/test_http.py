"""`text2img.engines.fetch.http.fetch`, every engine's downloader, against a local HTTP
server with failure switches: resume, servers that ignore Range, truncation, corruption,
HTTP errors, no network, disk full."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.engines.glide.weights_helpers import (
    FileServer,
    local_only,  # noqa: F401  (autouse fixture: no proxy for 127.0.0.1)
    serve,
)
from text2img.engines.fetch import http as download
from text2img.engines.fetch.http import Advice, RetryPolicy, fetch
from text2img.engines.glide import weights as glide_weights
from text2img.errors import UserError

DATA = os.urandom(3 * download.CHUNK + 12345)
SHA = hashlib.sha256(DATA).hexdigest()
FAST = RetryPolicy(attempts=3, backoff_s=0.0)


@pytest.fixture
def server() -> Iterator[FileServer]:
    yield from serve({"/blob.bin": DATA})


def get(server: FileServer, dest: Path, **kw: object) -> download.Fetched:
    kw.setdefault("retry", FAST)
    kw.setdefault("progress", False)
    return fetch(f"{server.base_url}/blob.bin", dest, **kw)  # type: ignore[arg-type]


def test_fresh_download_verifies_and_renames_atomically(server, tmp_path, capfd):
    dest = tmp_path / "cache" / "blob.bin"
    got = get(server, dest, sha256=SHA, size=len(DATA), progress=True)
    assert dest.read_bytes() == DATA
    assert (got.size, got.sha256) == (len(DATA), SHA)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["blob.bin"]  # no .part left
    assert [r.status for r in server.requests] == [200]
    assert server.requests[0].user_agent.startswith("text2img/")
    err = capfd.readouterr().err  # not a terminal: one plain line per update, for logs
    assert "\r" not in err
    assert err.splitlines()[-1].startswith("blob.bin: 100%|##########| 3.16M/3.16M")


def test_resume_after_dropped_connection_uses_range(server, tmp_path):
    server.drop_after, server.drops_left = 1_500_000, 1
    dest = tmp_path / "blob.bin"
    get(server, dest, sha256=SHA)
    assert dest.read_bytes() == DATA
    first, second = server.requests
    assert (first.status, first.range) == (200, None)
    assert second.range == "bytes=1500000-"
    assert second.status == 206
    assert second.if_range == server.etag("/blob.bin")
    assert server.body_bytes("/blob.bin") == len(DATA)  # nothing fetched twice


def test_resume_across_runs_from_a_leftover_part_file(server, tmp_path):
    server.drop_after, server.drops_left, server.status_after_drops = 700_000, 1, 503
    dest = tmp_path / "blob.bin"
    with pytest.raises(UserError, match=r"after 3 tries: the server answered HTTP 503.*resumes"):
        get(server, dest)
    assert dest.with_name("blob.bin.part").stat().st_size == 700_000
    server.status_after_drops = None
    get(server, dest, sha256=SHA)  # a new run picks up the .part
    assert dest.read_bytes() == DATA
    assert server.requests[-1].range == "bytes=700000-"
    assert server.body_bytes("/blob.bin") == len(DATA)


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.drop_after, server.drops_left = 1_000_000, 1
    server.ignore_range = True
    dest = tmp_path / "blob.bin"
    get(server, dest, sha256=SHA)
    assert dest.read_bytes() == DATA
    assert server.requests[1].range == "bytes=1000000-"
    assert server.requests[1].status == 200
    assert server.body_bytes("/blob.bin") == 1_000_000 + len(DATA)


def test_file_changed_on_server_during_resume_restarts(server, tmp_path):
    server.drop_after, server.drops_left, server.status_after_drops = 1_000_000, 1, 503
    dest = tmp_path / "blob.bin"
    with pytest.raises(UserError):
        get(server, dest, retry=RetryPolicy(attempts=1, backoff_s=0))
    server.status_after_drops = None
    new = os.urandom(len(DATA))
    server.files["/blob.bin"] = new
    get(server, dest, sha256=hashlib.sha256(new).hexdigest())
    assert dest.read_bytes() == new  # If-Range with the old ETag got the whole new file
    assert server.requests[-1].status == 200


def test_truncated_file_is_rejected_and_deleted(server, tmp_path):
    server.files["/blob.bin"] = DATA[:-1000]
    dest = tmp_path / "blob.bin"
    with pytest.raises(UserError, match=r"damaged: its sha256 .* expected \(corrupted\)"):
        get(server, dest, sha256=SHA)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match=f"is {len(DATA) - 1000} bytes but blob.bin should be"):
        get(server, dest, size=len(DATA))  # known size: refused before the body is read
    assert not dest.exists()


def test_size_mismatch_is_refused_before_downloading(server, tmp_path):
    dest = tmp_path / "blob.bin"
    with pytest.raises(UserError, match=f"is {len(DATA)} bytes but blob.bin should be 10 bytes"):
        get(server, dest, size=10)
    assert server.body_bytes("/blob.bin") == 0 or not dest.exists()


def test_corrupted_bytes_fail_the_sha256_and_are_deleted(server, tmp_path):
    bad = bytearray(DATA)
    bad[123456] ^= 0xFF
    server.files["/blob.bin"] = bytes(bad)
    dest = tmp_path / "blob.bin"
    with pytest.raises(UserError, match=r"sha256 .* expected \(corrupted\); deleted it, run"):
        get(server, dest, sha256=SHA)
    assert not dest.exists()
    assert not dest.with_name("blob.bin.part").exists()


def test_server_md5_catches_corruption_when_no_sha_is_known(server, tmp_path):
    server.content_md5 = True
    server.md5_override["/blob.bin"] = DATA[:-1] + b"x"  # the server's own checksum disagrees
    with pytest.raises(UserError, match=r"MD5 .* differs from the server's"):
        get(server, tmp_path / "blob.bin")
    server.md5_override.clear()
    get(server, tmp_path / "blob.bin")  # the advertised MD5 matches: accepted


def test_http_404_and_403_are_one_line_errors(server, tmp_path):
    with pytest.raises(UserError, match=r"not at http://127.0.0.1:\d+/missing.bin \(HTTP 404\)"):
        fetch(f"{server.base_url}/missing.bin", tmp_path / "m", progress=False, retry=FAST)
    server.status["/blob.bin"] = 403
    with pytest.raises(UserError, match="refused \\(HTTP 403\\)"):
        get(server, tmp_path / "blob.bin")
    assert len(server.requests) == 2  # client errors are not retried


def test_5xx_is_retried_with_backoff_then_succeeds(server, tmp_path, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(download.time, "sleep", waits.append)
    server.fail_times["/blob.bin"] = 2
    get(server, tmp_path / "blob.bin", sha256=SHA, retry=RetryPolicy(attempts=3, backoff_s=0.5))
    assert [r.status for r in server.requests] == [500, 500, 200]
    assert waits == [0.5, 1.0]


def test_5xx_forever_gives_up_after_bounded_attempts(server, tmp_path):
    server.status["/blob.bin"] = 503
    with pytest.raises(UserError, match=r"after 3 tries: the server answered HTTP 503"):
        get(server, tmp_path / "blob.bin")
    assert len(server.requests) == 3


def test_no_network_is_a_clear_error(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match=r"cannot connect to 127.0.0.1 .*check the network"):
        fetch(f"http://127.0.0.1:{port}/x", tmp_path / "x", progress=False, retry=FAST)


def test_dns_failure_is_named():
    exc = httpx.ConnectError("[Errno -2] Name or service not known")
    msg = download._describe_transport_error(exc, "https://nowhere.example/x")
    assert msg.startswith("cannot resolve nowhere.example (DNS failure")


def test_disk_full_while_writing_keeps_part_and_says_how_much(server, tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full to produce a real ENOSPC")
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").symlink_to("/dev/full")  # every write fails with ENOSPC
    state = {"url": f"{server.base_url}/blob.bin"}  # as a previous run leaves it
    dest.with_name("blob.bin.part.json").write_text(json.dumps(state))
    with pytest.raises(UserError) as err:
        get(server, dest, size=len(DATA))
    msg = str(err.value)
    assert msg.startswith(f"disk full while downloading blob.bin to {tmp_path}")
    assert "3.2 MB more is needed" in msg
    assert "(it resumes)" in msg
    assert "\n" not in msg
    assert dest.with_name("blob.bin.part.json").exists()  # the partial download is kept
    assert not dest.exists()


def test_not_enough_free_space_is_refused_up_front(server, tmp_path, monkeypatch):
    real = shutil.disk_usage

    def tiny(path: object) -> object:
        return real(path)._replace(free=1000)  # type: ignore[arg-type]

    monkeypatch.setattr(shutil, "disk_usage", tiny)
    with pytest.raises(UserError, match=r"not enough disk space .* 3.2 MB needed, 1.0 KB free"):
        get(server, tmp_path / "blob.bin")
    part = tmp_path / "blob.bin.part"
    assert not part.exists() or part.stat().st_size == 0  # nothing was written


def test_complete_part_left_by_a_crash_is_finished_without_refetching(server, tmp_path):
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(DATA)  # killed after the body, before rename
    state = {"url": f"{server.base_url}/blob.bin", "etag": server.etag("/blob.bin")}
    dest.with_name("blob.bin.part.json").write_text(json.dumps(state))
    get(server, dest, sha256=SHA, size=len(DATA))
    assert dest.read_bytes() == DATA
    assert [r.status for r in server.requests] == [416]
    assert server.body_bytes("/blob.bin") == 0


def test_part_from_another_url_is_discarded(server, tmp_path):
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(b"x" * 5000)
    dest.with_name("blob.bin.part.json").write_text(json.dumps({"url": "http://elsewhere/b"}))
    get(server, dest, sha256=SHA)
    assert server.requests[0].range is None
    assert dest.read_bytes() == DATA


def test_server_answering_ranges_in_pieces_is_followed_to_the_end(server, tmp_path):
    server.drop_after, server.drops_left = 500_000, 1
    server.max_range = 1_000_000  # some servers cap each range answer
    dest = tmp_path / "blob.bin"
    get(server, dest, sha256=SHA, retry=RetryPolicy(attempts=1, backoff_s=0))
    assert dest.read_bytes() == DATA
    assert [r.status for r in server.requests] == [200, 206, 206, 206]  # 0.5 + 3 x 1 MB
    assert server.body_bytes("/blob.bin") == len(DATA)


def test_space_for_the_converted_copy_is_checked_before_downloading(server, tmp_path, monkeypatch):
    real = shutil.disk_usage
    free = len(DATA) + 20 * 1000**2  # room for the download, not for what comes after

    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=free))
    get(server, tmp_path / "a.bin")  # fits
    with pytest.raises(UserError, match=r"not enough disk space .*: 103.2 MB needed"):
        get(server, tmp_path / "b.bin", reserve=100 * 1000**2)


def test_unresolvable_host_fails_at_once_and_names_both_ways_out(tmp_path, monkeypatch):
    """Offline (no DNS) is not retried: `.invalid` never resolves (RFC 6761 section 6.4)."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)  # resolve here, not at a proxy
    slow = RetryPolicy(attempts=4, backoff_s=5.0)  # a retried DNS failure would take > 15 s
    started = time.monotonic()
    with pytest.raises(UserError) as err:
        fetch("http://weights.text2img.invalid/base.pt", tmp_path / "base.pt",
              progress=False, retry=slow, advice=glide_weights.ADVICE)  # fmt: skip
    assert time.monotonic() - started < 5.0  # a hang guard, not a performance claim
    msg = str(err.value)
    assert "cannot resolve weights.text2img.invalid (DNS failure" in msg
    assert "TEXT2IMG_WEIGHTS_URL" in msg  # the engine's own ways out
    assert 'make serve SERVE_ARGS="--model tiny"' in msg
    assert "tries" not in msg  # answered on the first try


def test_dns_failure_is_recognised_through_the_exception_chain():
    inner = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    wrapped = httpx.ConnectError("connect failed")
    wrapped.__cause__ = inner  # what `raise ... from` inside httpcore leaves
    assert download._is_dns_failure(wrapped)
    assert not download._is_dns_failure(httpx.ConnectError("[Errno 111] Connection refused"))


def test_messages_speak_the_engines_terms(server, tmp_path):
    """The downloader names what the engine gave it (its mirror setting, its command) and
    nothing else: a shared module has no GLIDE words of its own."""
    mine = Advice(rerun="run `text2img download --model mine` again", mirror_env="MY_MIRROR")
    gone = f"{server.base_url}/gone.bin"
    with pytest.raises(UserError) as err:
        fetch(gone, tmp_path / "gone.bin", progress=False, retry=FAST, advice=mine)
    assert "if MY_MIRROR points at a mirror" in str(err.value)
    with pytest.raises(UserError) as err:
        fetch(gone, tmp_path / "gone.bin", progress=False, retry=FAST)
    assert "mirror" not in str(err.value)
    assert "GLIDE" not in str(err.value)

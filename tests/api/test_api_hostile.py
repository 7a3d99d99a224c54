"""Hostile clients against a real `text2img serve` process: chunked floods without a
token, oversized bodies, throttled clients, slow headers and bodies, forged
X-Forwarded-For. What matters: the server reads nothing it does not need, its memory
stays flat, and everyone else is still served."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from api_support import AUTH
from serve_process import ServeProcess, serving

from tests.fakes.raw_http import answer_or_close, chunked_flood, slow_sender

pytestmark = pytest.mark.slow  # subprocesses or real servers: make test, not test-fast

FLOOD = 300 * 1024 * 1024  # what the attacker would send if allowed
READ_AT_MOST = 16 * 1024 * 1024  # socket buffers, not the body: far below FLOOD
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with serving(
        tmp_path_factory.mktemp("hostile"),
        TEXT2IMG_HEADER_TIMEOUT_S="1",
        TEXT2IMG_BODY_TIMEOUT_S="1",
    ) as proc:
        yield proc


def test_chunked_floods_without_a_token_are_refused_before_the_body(tmp_path: Path) -> None:
    with serving(tmp_path, TEXT2IMG_AUTH_MAX_FAILURES="3") as server:
        _floods(server)


def _floods(server: ServeProcess) -> None:
    before = server.rss_bytes()
    wrong = {"Authorization": "Bearer wrong-token-xxxxxxxx"}
    for i, headers in enumerate(({}, {}, {}, wrong, wrong, wrong)):
        t0 = time.perf_counter()
        # a different forged peer each time would not help: the throttle keys on the socket
        result = chunked_flood(server.port, "/v1/images/generations", headers, FLOOD)
        seconds = time.perf_counter() - t0
        print(f"flood {i}: {result.status} after {result.sent / MiB:.1f} MiB, {seconds:.2f} s")
        assert result.status == 401, result.head
        assert "application/json" in result.head
        assert result.sent < READ_AT_MOST
    grown = server.rss_bytes() - before
    print(f"server RSS grew {grown / MiB:.1f} MiB over six floods")
    assert grown < 64 * MiB
    # the throttle counted the wrong tokens for this client (3 allowed): the 4th is 429;
    # the floods without any token were not counted (they could not lock anyone out)
    assert chunked_flood(server.port, "/v1/jobs", wrong, FLOOD).status == 429


def test_an_oversized_chunked_body_is_cut_off_at_the_limit(server: ServeProcess) -> None:
    result = chunked_flood(server.port, "/v1/images/generations", AUTH, FLOOD)
    assert result.status == 413, result.head
    assert result.sent < READ_AT_MOST
    with httpx.Client(base_url=server.url, headers=AUTH) as client:
        r = client.post(
            "/v1/images/generations",
            content=b'{"prompt": "' + b"a" * 70_000 + b'"}',
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "body_too_large"


def test_slow_clients_do_not_stop_a_normal_request(server: ServeProcess) -> None:
    stalled_headers = [
        slow_sender(server.port, b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Ty")
        for _ in range(25)
    ]
    stalled_bodies = [
        slow_sender(
            server.port,
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: "
            + AUTH["Authorization"].encode()
            + b'\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"pro',
        )
        for _ in range(25)
    ]
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as client:
            ok = client.post("/v1/images/generations", json={"prompt": "a", "size": "64x64",
                                                              "steps": 2})  # fmt: skip
            assert ok.status_code == 200, ok.text
        # the deadlines (1 s here) answer 408 and close every stalled connection
        for sock in stalled_headers + stalled_bodies:
            status, closed = answer_or_close(sock, timeout=10)
            assert closed
            assert status in (408, None)
    finally:
        for sock in stalled_headers + stalled_bodies:
            sock.close()


def _wrong(address: str) -> dict[str, str]:
    return {"Authorization": "Bearer wrong-token-0000000000", "X-Forwarded-For": address}


def test_forwarded_addresses_are_ignored_unless_trusted(tmp_path: Path) -> None:
    """Default: the socket peer is the key, so forged X-Forwarded-For entries neither
    spread an attacker over many keys nor lock out the address they name."""
    with (
        serving(tmp_path, TEXT2IMG_AUTH_MAX_FAILURES="10") as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        codes = [client.get("/v1/status", headers=_wrong(f"198.51.100.{i}")).status_code
                 for i in range(50)]  # fmt: skip
        assert codes.index(429) == 10


def _throttle_cases(get: Callable[[dict[str, str]], int]) -> None:
    # 50 wrong tokens, each under a new forged first entry: the proxy's last entry counts
    codes = [get(_wrong(f"198.51.100.{i}, 203.0.113.9")) for i in range(50)]
    assert codes[:10] == [401] * 10
    assert set(codes[10:]) == {429}
    # 10 wrong tokens claiming someone else's address do not lock that address out
    for _ in range(10):
        get(_wrong("192.0.2.44, 203.0.113.10"))
    assert get({**AUTH, "X-Forwarded-For": "192.0.2.44"}) == 200


def test_behind_a_proxy_the_last_forwarded_entry_is_the_key(tmp_path: Path) -> None:
    with (
        serving(
            tmp_path, TEXT2IMG_AUTH_MAX_FAILURES="10", TEXT2IMG_TRUST_FORWARDED="true"
        ) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        _throttle_cases(lambda h: client.get("/v1/status", headers=h).status_code)

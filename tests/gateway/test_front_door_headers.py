"""Issue 20 item 3: request headers are bounded in size and count before anything else
is read, in the service and in the gateway (both run `text2img.slow_clients`' protocol):
431 in JSON and a closed connection, at a bounded cost."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes.raw_http import header_flood
from tests.gateway.front_door_stack import AUTH, Stack, front_door_stack
from text2img.engines.base import Engine
from text2img.engines.registry import load_engine
from text2img.slow_clients import MAX_HEADER_BYTES, MAX_HEADERS

FLOOD = 64 * 1024 * 1024
READ_AT_MOST = 16 * 1024 * 1024  # loopback socket buffers hold a few MB


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    engine: Engine = load_engine("tiny", device="cpu")
    with front_door_stack(engine) as running:
        yield running


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.mark.parametrize("side", ["gateway", "service"])
def test_a_header_flood_is_refused_at_the_bound(stack: Stack, side: str) -> None:
    port = _port(getattr(stack, side))
    # one endless header, and many small ones
    for line in (b"X-Fill: " + b"a" * 4000 + b"\r\n", b"X-A: b\r\n"):
        result = header_flood(port, line, FLOOD)
        assert result.status == 431, result.head
        assert '"code":"headers_too_large"' in result.head or result.closed
        assert result.closed
        # refused near the bound (plus what the kernel buffers), not after the 64 MB
        assert result.sent < READ_AT_MOST


@pytest.mark.parametrize("side", ["gateway", "service"])
def test_too_many_header_lines_are_refused(stack: Stack, side: str) -> None:
    port = _port(getattr(stack, side))
    lines = "".join(f"X-{i}: 1\r\n" for i in range(MAX_HEADERS + 1))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b'"code": "headers_too_large"' in answer


@pytest.mark.parametrize("side", ["gateway", "service"])
def test_requests_within_the_bounds_pass(stack: Stack, side: str) -> None:
    base = getattr(stack, side)
    near = {f"X-{i}": "v" * 500 for i in range(MAX_HEADERS - 10)}  # ~50 KiB in 90 lines
    assert httpx.get(base + "/healthz", headers=near).json() == {"status": "ok"}
    # a body that arrives in the same read as the headers is not counted as headers
    body = b'{"prompt": "' + b"a" * 60_000 + b'"}'
    resp = httpx.post(base + "/v1/translations", headers=AUTH, content=body)
    assert resp.status_code != 431


@pytest.mark.parametrize("side", ["gateway", "service"])
def test_a_flood_on_a_kept_alive_connection_is_refused_too(stack: Stack, side: str) -> None:
    first = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    result = header_flood(_port(getattr(stack, side)), b"X-A: b\r\n", FLOOD, prefix=first)
    # the first request's 200, or the 431 when the flood was read before that answer went
    # out; either way the connection is closed at the bound
    assert result.status in (200, 431)
    assert result.closed
    assert result.sent < READ_AT_MOST


@pytest.mark.parametrize("side", ["gateway", "service"])
def test_a_malformed_request_gets_json_not_plain_text(stack: Stack, side: str) -> None:
    with socket.create_connection(("127.0.0.1", _port(getattr(stack, side))), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"application/json" in answer
    assert b'"code": "invalid_http"' in answer


@pytest.mark.parametrize("side", ["gateway", "service"])
def test_the_size_bound_is_where_it_says(stack: Stack, side: str) -> None:
    base = getattr(stack, side)
    per_line = 1000

    def headers(total: int) -> dict[str, str]:
        return {f"X-{i:03d}": "v" * (per_line - 10) for i in range(total // per_line)}

    under = httpx.get(base + "/healthz", headers=headers(MAX_HEADER_BYTES - 4 * per_line))
    assert under.status_code == 200
    over = httpx.get(base + "/healthz", headers=headers(MAX_HEADER_BYTES + 2 * per_line))
    assert over.status_code == 431
    assert over.json()["error"]["code"] == "headers_too_large"


@pytest.mark.parametrize("side", ["gateway", "service"])
def test_headers_counted_across_reads(stack: Stack, side: str) -> None:
    """Headers that arrive in several reads are counted together (a count that restarted
    when the parser saw the request begin let 2 x 40 KiB through)."""
    lines = "".join(f"X-{i:03d}: {'v' * 990}\r\n" for i in range(80)).encode()  # ~80 KiB
    with socket.create_connection(("127.0.0.1", _port(getattr(stack, side))), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + lines[:40_000])
        time.sleep(0.2)  # a second read on the server side
        with contextlib.suppress(OSError):  # already refused and closed
            s.sendall(lines[40_000:] + b"\r\n")
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]

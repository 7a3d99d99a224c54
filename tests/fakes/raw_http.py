"""Hostile HTTP clients on raw sockets (loopback only): chunked floods and slow senders,
which httpx cannot be made to be."""

from __future__ import annotations

import select
import socket
from dataclasses import dataclass

CHUNK = 64 * 1024


@dataclass
class FloodResult:
    status: int | None  # None: the server closed without answering
    head: str
    sent: int  # body bytes the server let us send before it answered or closed
    closed: bool | None = None  # header floods: whether the server closed afterwards


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_answer(sock: socket.socket) -> tuple[int | None, str]:
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            part = sock.recv(65536)
            if not part:
                break
            data += part
    except (ConnectionResetError, TimeoutError):
        pass
    if not data.startswith(b"HTTP/1.1 "):
        return None, ""
    head = data.decode("latin-1")
    return int(head.split(" ", 2)[1]), head


def chunked_flood(
    port: int, path: str, headers: dict[str, str], total: int, *, timeout: float = 20.0
) -> FloodResult:
    """POST up to `total` bytes as chunked transfer encoding, stopping as soon as the
    server answers or closes; reports how much it managed to send."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(_head("POST", path, {**headers, "Content-Type": "application/json",
                                           "Transfer-Encoding": "chunked"}))  # fmt: skip
        block = b"%x\r\n" % CHUNK + b"a" * CHUNK + b"\r\n"
        sent, whole = _send_until_answered(sock, block, total, counts=CHUNK)
        if whole:
            sock.sendall(b"0\r\n\r\n")
        status, head = _read_answer(sock)
        return FloodResult(status, head, sent)
    finally:
        sock.close()


def _send_until_answered(
    sock: socket.socket, block: bytes, total: int, *, counts: int
) -> tuple[int, bool]:
    """Send `block` again and again, each counting `counts` bytes, until `total` are sent
    or the server answers or closes: (bytes counted, whether all `total` went out)."""
    sent = 0
    while sent < total:
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            return sent, False
        try:
            sock.sendall(block)
        except (BrokenPipeError, ConnectionResetError):
            return sent, False
        sent += counts
    return sent, True


def slow_sender(port: int, prefix: bytes) -> socket.socket:
    """A connection that sends `prefix` and then nothing (the caller keeps it open)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(prefix)
    return sock


def answer_or_close(sock: socket.socket, timeout: float) -> tuple[int | None, bool]:
    """Wait for the server to answer or close a stalled connection: (status, closed)."""
    sock.settimeout(timeout)
    status, _ = _read_answer(sock)
    try:
        rest = sock.recv(65536)
        closed = rest == b"" or status is not None
    except TimeoutError:
        closed = False
    except ConnectionResetError:
        closed = True
    return status, closed


def header_flood(
    port: int, header: bytes, total: int, *, prefix: bytes = b"", timeout: float = 20.0
) -> FloodResult:
    """Send `prefix`, a request line and then `header` lines (each ending in CRLF) up to
    `total` bytes without ever ending the headers, stopping as soon as the server answers
    or closes; reports how much of the headers it managed to send."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(prefix + b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        block = header * max(1, CHUNK // len(header))
        sent, _ = _send_until_answered(sock, block, total, counts=len(block))
        status, head = _read_answer(sock)
        return FloodResult(status, head, sent, closed=_closed(sock, timeout))
    finally:
        sock.close()


def _closed(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes the connection within `timeout` (the rest is read)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True

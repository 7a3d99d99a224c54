"""Bounds on request headers, which uvicorn's httptools protocol does not have.

- Time: a client that connects and then sends its headers a byte at a time would hold its
  connection (and a file descriptor) for as long as it likes. A timer is armed when a
  connection opens or a new request starts and disarmed when the headers are complete;
  when it fires the client gets a JSON 408 `header_timeout` and the connection is closed.
- Size: httptools keeps every header in memory until the headers end (one connection
  sending 64 MB of headers grew a process by 640 MB). The bytes of the request line and
  headers are counted as they arrive, before the parser sees them, and so is the number
  of header lines; past `MAX_HEADER_BYTES` or `MAX_HEADERS` the client gets a JSON 431
  `headers_too_large` and the connection is closed.
- A request the parser refuses gets a JSON 400 `invalid_http` instead of uvicorn's plain
  text.

Request bodies have their own limits in `text2img.http_guard`.

Used by `text2img serve` and the gateway (`uvicorn.Config(http=...)`).
"""

from __future__ import annotations

import asyncio
import json

# Far above any real client (a browser's cookies and an ID token fit in a few KiB) and at
# Cloud Run's own bound for HTTP/1 requests' headers (see docs: the gateway's security)
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100  # as Python's http.client and h11 allow


def _answer(status: bytes, code: str, message: str) -> bytes:
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    ).encode()
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n" + body
    )


RESPONSE_408 = _answer(
    b"408 Request Timeout", "header_timeout", "the request headers did not arrive in time"
)
RESPONSE_431 = _answer(
    b"431 Request Header Fields Too Large",
    "headers_too_large",
    f"the request headers are larger than {MAX_HEADER_BYTES} bytes or more than "
    f"{MAX_HEADERS} lines; send fewer or shorter headers",
)
RESPONSE_400 = _answer(
    b"400 Bad Request", "invalid_http", "the request is not valid HTTP/1.1; check the client"
)


def header_timeout_protocol(
    seconds: float, max_bytes: int = MAX_HEADER_BYTES, max_headers: int = MAX_HEADERS
) -> type[asyncio.Protocol] | str:
    """uvicorn's `http` setting: httptools with the header deadline and size bounds, or
    "auto" when httptools is not installed (then only uvicorn's own limits apply)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools
        return "auto"

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        """HttpToolsProtocol that answers 408 when headers take too long and 431 when
        they are too large, and closes the connection."""

        _header_timer: asyncio.TimerHandle | None = None
        _in_headers = False  # between the start of a request and the end of its headers
        _header_bytes = 0
        _header_lines = 0
        _tail = b""  # the last bytes seen, to find a header end split across reads
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._begin_headers()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._in_headers:
                # count only up to the end of the headers (a body may share this read)
                seen = self._tail + data
                end = seen.find(b"\r\n\r\n")
                counted = len(data) if end < 0 else max(0, end + 4 - len(self._tail))
                self._header_bytes += counted
                self._tail = seen[-3:]
                if self._header_bytes > max_bytes:
                    self._refuse(RESPONSE_431)
                    return
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            # the byte count began with the connection or the previous message's end:
            # resetting it here (inside the parser, after this read was counted) would
            # forget the bytes of earlier reads
            self._in_headers = True
            self._header_lines = 0
            self._arm()

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_lines += 1
            if self._header_lines > max_headers:
                # stops the parser; send_400_response below answers 431 instead
                raise _TooManyHeaders
            super().on_header(name, value)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            # what follows on this connection is the next request's line and headers
            self._in_headers, self._header_bytes, self._tail = True, 0, b""

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._disarm()
            super().on_headers_complete()

        def send_400_response(self, msg: str) -> None:
            if self._header_lines > max_headers:
                self._refuse(RESPONSE_431)
            else:
                self._refuse(RESPONSE_400)

        def _begin_headers(self) -> None:
            self._in_headers = True
            self._header_bytes = self._header_lines = 0
            self._tail = b""
            self._arm()

        def _refuse(self, response: bytes) -> None:
            self._refused = True
            self._disarm()
            if not self.transport.is_closing():
                self.transport.write(response)
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            self._refuse(RESPONSE_408)

    return HeaderDeadlineProtocol


class _TooManyHeaders(Exception):
    """Raised from the parser's header callback to stop reading more headers."""

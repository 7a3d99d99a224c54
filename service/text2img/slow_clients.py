"""A deadline for request headers, which uvicorn does not have.

uvicorn closes idle keep-alive connections, but a client that connects and then sends its
headers a byte at a time holds its connection (and a file descriptor) for as long as it
likes. `header_timeout_protocol(s)` is uvicorn's httptools protocol with one more timer:
armed when a connection opens or a new request starts, disarmed when the headers are
complete; when it fires the client gets a JSON 408 and the connection is closed. Request
bodies have their own deadline in `text2img.http_guard`.

Used by `text2img serve` and the gateway (`uvicorn.Config(http=...)`).
"""

from __future__ import annotations

import asyncio
import json

_BODY = json.dumps(
    {
        "error": {
            "message": "the request headers did not arrive in time",
            "type": "invalid_request_error",
            "param": None,
            "code": "header_timeout",
        }
    }
).encode()
RESPONSE_408 = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _BODY
)


def header_timeout_protocol(seconds: float) -> type[asyncio.Protocol] | str:
    """uvicorn's `http` setting: httptools with a header deadline, or "auto" when
    httptools is not installed (then only uvicorn's own keep-alive timeout applies)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools
        return "auto"

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        """HttpToolsProtocol that answers 408 and closes when headers take too long."""

        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

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
            if not self.transport.is_closing():
                self.transport.write(RESPONSE_408)
                self.transport.close()

    return HeaderDeadlineProtocol

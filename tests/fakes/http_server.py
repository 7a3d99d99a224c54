"""Run a stdlib HTTP handler on a threading server in the background, on 127.0.0.1 and a
free port unless told otherwise (the fakes of Google APIs, the Hub, file mirrors); the
WSGI/ASGI apps have asgi_server.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextmanager
def serve_http(
    handler: type[BaseHTTPRequestHandler],
    *,
    address: tuple[str, int] = ("127.0.0.1", 0),
    poll_interval: float = 0.5,
    server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer,
) -> Iterator[ThreadingHTTPServer]:
    """Yields the running server; on exit it is shut down, closed and its thread joined.
    Request threads are daemons: a client that never hangs up cannot hold a test."""
    server = server_class(address, handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": poll_interval}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def base_url(server: ThreadingHTTPServer) -> str:
    """http://host:port of a running server."""
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}"

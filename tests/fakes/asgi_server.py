"""Run an ASGI app on uvicorn in a background thread, on 127.0.0.1 and a free port."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


@contextmanager
def serve_in_thread(
    app: Any,
    *,
    timeout_s: float = 10.0,
    graceful_shutdown_s: float | None = None,
    must_stop: bool = False,
    **config: Any,
) -> Iterator[str]:
    """Yields the base URL; the server shuts down (lifespan included) on exit. With
    `must_stop`, a server thread still alive after `timeout_s` fails the test (tests of
    the app itself; stand-ins that hang on purpose leave a daemon thread behind). Other
    keywords go to `uvicorn.Config` (e.g. `port`, `http`)."""
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "log_level": "warning",
        "lifespan": "on",
        "access_log": False,
        "timeout_graceful_shutdown": graceful_shutdown_s,
    }
    options.update(config)
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout_s)
        assert not (must_stop and thread.is_alive()), "uvicorn did not stop"

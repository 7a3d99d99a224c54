"""SIGTERM on a real `text2img serve --model tiny` process: waiting and running jobs get
the JSON 503 `shutting_down` with Retry-After, the process exits cleanly and quickly."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import AUTH
from serve_process import start

pytestmark = pytest.mark.slow  # subprocesses or real servers: make test, not test-fast

# long on the tiny model (many steps at 256x256): still drawing when SIGTERM arrives
LONG = {"prompt": "a long one", "n": 4, "size": "256x256", "steps": 250, "upsample_steps": 250}
QUEUED = {"prompt": "a quick one", "size": "64x64", "steps": 2}  # other settings: own batch
GRACE_S = 2


def _post(url: str, body: dict[str, Any], out: dict[str, httpx.Response]) -> threading.Thread:
    def run() -> None:
        out[body["prompt"]] = httpx.post(
            f"{url}/v1/images/generations", json=body, headers=AUTH, timeout=120
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _assert_shutting_down(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["error"]["code"] == "shutting_down"
    assert int(resp.headers["retry-after"]) >= 1


def test_sigterm_answers_every_waiter_with_json_503_and_exits_cleanly(tmp_path: Path) -> None:
    server = start(tmp_path, TEXT2IMG_SHUTDOWN_GRACE_S=str(GRACE_S), TEXT2IMG_BATCH_WINDOW_S="0")
    proc, url, lines = server.proc, server.url, server.lines
    try:
        with httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
            end = time.monotonic() + 60
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < end
                time.sleep(0.05)
            out: dict[str, httpx.Response] = {}
            running = _post(url, LONG, out)
            while client.get("/v1/status").json()["jobs_in_flight"] != 1:
                assert time.monotonic() < end
                time.sleep(0.02)
            queued = _post(url, QUEUED, out)
            while client.get("/v1/status").json()["queue_depth"] != 1:
                assert time.monotonic() < end
                time.sleep(0.02)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            queued.join(30)
            _assert_shutting_down(out[QUEUED["prompt"]])
            queued_s = time.monotonic() - t0
            # during the grace new work is refused in JSON too (the socket is still open)
            try:
                late = httpx.post(f"{url}/v1/images/generations", json=QUEUED, headers=AUTH,
                                  timeout=30)  # fmt: skip
            except httpx.ConnectError:
                late = None  # the grace had already ended: refused at the socket
            if late is not None:
                _assert_shutting_down(late)
            running.join(60)
            _assert_shutting_down(out[LONG["prompt"]])
        # uvicorn re-raises the signal once it has shut down: docker sees exit 143
        assert proc.wait(60) in (0, -signal.SIGTERM)
        total_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    log = "".join(lines)
    assert "Traceback" not in log, log
    assert "Exception in ASGI application" not in log, log
    assert queued_s < GRACE_S, "the waiting job was held for the grace period"
    assert total_s < 60, total_s  # far below docker's stop timeout (120 s)

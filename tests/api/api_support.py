"""Helpers for the service tests: constants, settings, a readiness wait, and a real
uvicorn server on 127.0.0.1:<free port>."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from text2img.settings import Settings

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Few sampling steps keep the tiny model at ~0.1-1 s per request on a loaded 2-core box.
FAST = {"steps": 2, "upsample_steps": 2}
FAST64 = {"size": "64x64", "steps": 2}

JA_EN = {
    "テディベアがバタフライで泳いでいる": "A teddy bear swimming the butterfly stroke",
    "赤いりんご": "a red apple",
    "猫": "cat",
}


@dataclass
class FakeTranslate:
    """POST /v3/projects/{p}/locations/global:translateText with a small JA->EN dictionary."""

    url: str = ""
    fail: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model": "tiny",
        "translation": "off",
        "api_token": TOKEN,
        "queue_limit": 16,
        "request_timeout_s": 120.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def wait_ready(client: TestClient | httpx.Client, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if client.get("/readyz", headers=AUTH).status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("the service did not become ready")


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run the app with uvicorn on 127.0.0.1:<free port>; yields the base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > end or not thread.is_alive():
            raise AssertionError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "uvicorn did not stop"

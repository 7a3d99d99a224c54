"""Helpers for the service tests: constants, settings, a readiness wait, and a real
uvicorn server on 127.0.0.1:<free port>."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.fakes.asgi_server import serve_in_thread
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
    denials: int = 0  # answer 403 PERMISSION_DENIED to this many calls first
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
    with serve_in_thread(app, timeout_s=30.0, graceful_shutdown_s=5.0, must_stop=True) as url:
        yield url


def job_events(client: TestClient, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a job's server-sent events, read until the stream ends."""
    events: list[tuple[str, dict[str, Any]]] = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=AUTH) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    return events

"""Fixtures for the service tests: the real tiny engine, a fake Cloud Translation REST
server, and the real app served by uvicorn on 127.0.0.1:<free port>."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest
import torch
from api_support import JA_EN, FakeTranslate, make_settings, serve, wait_ready
from fastapi.testclient import TestClient

from tests.fakes.http_server import base_url, serve_http
from text2img.api.app import create_app
from text2img.engines.base import Engine
from text2img.engines.registry import load_engine


@pytest.fixture(scope="session", autouse=True)
def _few_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_engine() -> Engine:
    """The real tiny engine (seeded random weights), shared: generate() keeps no state."""
    return load_engine("tiny", device="cpu")


# -- fake Cloud Translation v3 (REST) --------------------------------------------------------


@pytest.fixture(scope="session")
def fake_translate() -> Iterator[FakeTranslate]:
    fake = FakeTranslate()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            path = self.path.split("?", 1)[0]
            fake.paths.append(path)
            fake.requests.append(body)
            if not path.endswith("/locations/global:translateText"):
                self._send(
                    404, {"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}
                )
                return
            if fake.denials > 0:
                fake.denials -= 1
                error = {"code": 403, "message": "denied", "status": "PERMISSION_DENIED"}
                self._send(403, {"error": error})
                return
            if fake.fail:
                self._send(
                    500,
                    {"error": {"code": 500, "message": "backend exploded", "status": "INTERNAL"}},
                )
                return
            out = []
            for text in body.get("contents", []):
                english = JA_EN.get(text)
                out.append(
                    {
                        "translatedText": english if english else text,
                        "detectedLanguageCode": "ja" if english else "en",
                    }
                )
            self._send(200, {"translations": out})

    with serve_http(Handler) as server:
        fake.url = base_url(server)
        yield fake


@pytest.fixture
def translate_ok(fake_translate: FakeTranslate) -> Iterator[FakeTranslate]:
    fake_translate.fail = False
    fake_translate.denials = 0
    fake_translate.requests.clear()
    fake_translate.paths.clear()
    yield fake_translate
    fake_translate.fail = False


# -- apps ------------------------------------------------------------------------------------


@pytest.fixture
def make_client(tiny_engine: Engine) -> Iterator[Callable[..., TestClient]]:
    """An in-process client of a fresh app (lifespan run) sharing the tiny engine."""
    clients: list[TestClient] = []

    def make(engine: Any = None, **overrides: Any) -> TestClient:
        app = create_app(make_settings(**overrides), engine=engine or tiny_engine)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        assert app.state.service.wait_loaded(30), "the service did not become ready"
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def live(tiny_engine: Engine) -> Iterator[Callable[..., str]]:
    """Start real servers: live(**settings) -> base URL (stopped after the test)."""
    stack: list[Any] = []

    def start(engine: Any = None, **overrides: Any) -> str:
        app = create_app(make_settings(**overrides), engine=engine or tiny_engine)
        ctx = serve(app)
        url = ctx.__enter__()
        stack.append(ctx)
        with httpx.Client(base_url=url) as client:
            wait_ready(client)
        return url

    yield start
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)

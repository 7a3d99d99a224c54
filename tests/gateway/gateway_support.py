"""Fixtures: a fake Compute API, a local upstream service, and the gateway in front."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.asgi_server import serve_in_thread
from tests.fakes.compute import FakeCompute
from text2img.gateway.app import create_app
from text2img.gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VM = "text2img-vm"
BIG_SIZE = 20 * 1024 * 1024


@dataclass
class Upstream:
    """A stand-in for the service on the VM: /readyz, SSE, a big body, an echo."""

    ready: bool = True
    readyz_delay_s: float = 0.0
    readyz_calls: int = 0
    throttle_wrong_tokens: bool = False  # answer wrong tokens like a throttling service
    release_sse: threading.Event = field(default_factory=threading.Event)
    sse_finished: threading.Event = field(default_factory=threading.Event)
    seen: list[dict[str, Any]] = field(default_factory=list)
    slow_disconnected: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def app(self) -> Starlette:
        async def readyz(request: Request) -> Response:
            self.readyz_calls += 1
            await asyncio.sleep(self.readyz_delay_s)
            if request.headers.get("authorization") != AUTH["Authorization"]:
                if self.throttle_wrong_tokens:
                    return JSONResponse({"error": {"code": "auth_throttled"}}, status_code=429)
                return JSONResponse({"error": {"code": "invalid_api_key"}}, status_code=401)
            if self.ready:
                return JSONResponse({"ready": True, "model": "tiny"})
            return JSONResponse({"ready": False, "phase": "loading_model"}, status_code=503)

        async def sse(request: Request) -> Response:
            async def events() -> AsyncIterator[bytes]:
                yield b'event: progress\ndata: {"fraction": 0.1}\n\n'
                # wait until the test has seen the first event through the gateway
                while not self.release_sse.is_set():
                    await asyncio.sleep(0.01)
                yield b'event: progress\ndata: {"fraction": 1.0}\n\n'
                yield b"event: done\ndata: {}\n\n"
                self.sse_finished.set()

            return StreamingResponse(
                events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )

        async def sse_dies(request: Request) -> Response:
            """One event, then the service process dies mid-stream."""

            async def events() -> AsyncIterator[bytes]:
                yield b'event: progress\ndata: {"fraction": 0.1}\n\n'
                raise RuntimeError("the service died")

            return StreamingResponse(events(), media_type="text/event-stream")

        async def big(request: Request) -> Response:
            chunk = bytes(range(256)) * 4096  # 1 MiB

            async def body() -> AsyncIterator[bytes]:
                for _ in range(BIG_SIZE // len(chunk)):
                    yield chunk

            return StreamingResponse(
                body(),
                media_type="image/png",
                headers={
                    "Content-Disposition": 'attachment; filename="big.png"',
                    "Cache-Control": "private, max-age=60",
                    "Content-Length": str(BIG_SIZE),
                },
            )

        async def echo(request: Request) -> Response:
            digest = hashlib.sha256()
            size = 0
            async for chunk in request.stream():
                digest.update(chunk)
                size += len(chunk)
            self.seen.append(dict(request.headers))
            return JSONResponse(
                {
                    "size": size,
                    "sha256": digest.hexdigest(),
                    "query": str(request.url.query),
                    "method": request.method,
                },
                status_code=201,
            )

        async def busy(request: Request) -> Response:
            return JSONResponse(
                {"error": {"message": "queue full", "type": "rate_limit_error", "code": "busy"}},
                status_code=429,
                headers={"Retry-After": "7", "X-Upstream": "yes"},
            )

        async def slow(request: Request) -> Response:
            """A long generation: notices when its client goes away (like the service)."""
            await request.body()
            for _ in range(400):
                if await request.is_disconnected():
                    self.slow_disconnected.set()
                    break
                await asyncio.sleep(0.025)
            return JSONResponse({"done": True})

        async def hang(request: Request) -> Response:
            await asyncio.sleep(30)
            return JSONResponse({})

        async def status(request: Request) -> Response:
            return JSONResponse({"ready": self.ready, "model": "tiny", "idle_seconds": 12.5})

        return Starlette(
            routes=[
                Route("/readyz", readyz),
                Route("/v1/ready", readyz),  # what the gateway probes
                Route("/v1/status", status),
                Route("/sse", sse),
                Route("/sse-dies", sse_dies),
                Route("/big", big),
                Route("/echo", echo, methods=["POST", "PUT"]),
                # documented paths that wake the VM, answered like /echo
                Route("/v1/translations", echo, methods=["POST"]),
                Route("/v1/images/generations", echo, methods=["POST"]),
                Route("/busy", busy, methods=["POST"]),
                Route("/slow", slow, methods=["POST"]),
                Route("/hang", hang),
            ]
        )


@pytest.fixture
def fake() -> Iterator[FakeCompute]:
    with FakeCompute() as server:
        server.add_instance(VM, status="TERMINATED")
        yield server


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    with serve_in_thread(up.app()) as url:
        up.url = url
        yield up
    up.release_sse.set()


@pytest.fixture
def static_dir(tmp_path: Path) -> Path:
    root = tmp_path / "static"
    root.mkdir()
    (root / "index.html").write_text("<!doctype html><title>text2img</title>", "utf-8")
    (root / "app.js").write_text("console.log('hi')", "utf-8")
    return root


GatewayFactory = Callable[..., Any]


@pytest.fixture
def make_gateway(
    fake: FakeCompute, upstream: Upstream, static_dir: Path
) -> Iterator[Callable[..., str]]:
    """Start a gateway (real uvicorn) with settings overrides; returns its base URL."""
    stack: list[Any] = []

    def start(**overrides: Any) -> str:
        values: dict[str, Any] = {
            "api_token": TOKEN,
            "project": fake.project,
            "zone": fake.zone,
            "instance": VM,
            "compute_endpoint": fake.endpoint,
            "upstream_url": upstream.url,
            "start_cooldown_s": 30.0,
            "typical_wake_s": 100.0,
            "egress_warmup_s": 0.5,  # a fresh instance's retries, kept short in tests
        }
        values.update(overrides)
        app = create_app(GatewaySettings(**values), static_root=static_dir)
        ctx = serve_in_thread(app)
        url = ctx.__enter__()
        stack.append(ctx)
        return url

    yield start
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)

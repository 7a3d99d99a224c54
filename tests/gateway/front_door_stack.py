"""The real gateway in front of the real service (tiny model) and the fake Compute API,
with a count of every request that reaches the service, plus a raw-socket client for
request targets that httpx would clean up (dot segments, absolute form, odd bytes)."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from tests.fakes.asgi_server import serve_in_thread
from tests.fakes.compute import FakeCompute
from text2img.api.app import create_app as create_service
from text2img.engines.base import Engine
from text2img.gateway.app import create_app as create_gateway
from text2img.settings import Settings
from text2img.slow_clients import header_timeout_protocol

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "front-door-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VM = "text2img-vm"


def vm_service_env() -> dict[str, str]:
    """The service's environment as the VM's startup script writes it (service.env)."""
    text = (ROOT / "systemd" / "startup.sh").read_text(encoding="utf-8")
    block = re.search(r'put_file 0600 "\$ETC/service.env" <<EOF\n(.*?)\nEOF', text, re.S)
    assert block, "systemd/startup.sh no longer writes service.env"
    return dict(line.split("=", 1) for line in block.group(1).splitlines() if "=" in line[:40])


class Counting:
    """ASGI middleware that records every HTTP request reaching the wrapped app."""

    def __init__(self, app: ASGIApp, seen: list[tuple[str, str]]) -> None:
        self.app, self.seen = app, seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append((scope["method"], scope["path"]))
        await self.app(scope, receive, send)


@dataclass
class Stack:
    gateway: str
    service: str
    fake: FakeCompute
    upstream_hits: list[tuple[str, str]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.gateway.rsplit(":", 1)[1])


@contextmanager
def front_door_stack(engine: Engine, **gateway: Any) -> Iterator[Stack]:
    """Fake Compute with the VM RUNNING (so anything let through would be proxied), the
    service configured as on the VM, and the gateway in front of it."""
    env = vm_service_env()
    with ExitStack() as stack:
        fake = stack.enter_context(FakeCompute())
        fake.add_instance(VM, status="RUNNING")
        service_settings = Settings(
            _env_file=None,
            model="tiny",
            translation="off",
            api_token=TOKEN,
            trust_forwarded=env.get("TEXT2IMG_TRUST_FORWARDED", "false") == "true",
        )
        hits: list[tuple[str, str]] = []
        service_app = create_service(service_settings, engine=engine)
        service = stack.enter_context(
            # as `text2img serve` runs it: uvicorn's own X-Forwarded-For rewriting off
            serve_in_thread(
                Counting(service_app, hits),
                http=header_timeout_protocol(15.0),
                proxy_headers=False,
            )
        )
        settings = fake.gateway_settings(
            TOKEN,
            VM,
            upstream_url=service,
            egress_warmup_s=0.5,
            **gateway,
        )
        url = stack.enter_context(
            serve_in_thread(
                create_gateway(settings), http=header_timeout_protocol(15.0), proxy_headers=False
            )
        )
        yield Stack(url, service, fake, hits)


@dataclass
class RawAnswer:
    status: int | None
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(
    port: int,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    *,
    chunked: bool = False,
) -> RawAnswer:
    """Send one request exactly as written (target included) and read the whole answer."""
    lines = [f"{method} {target} HTTP/1.1", "Host: gateway.test", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        payload = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n" if body else b"0\r\n\r\n"
    else:
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        payload = body
    data = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + payload
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, rest = raw.partition(b"\r\n\r\n")
    if not head:
        return RawAnswer(None, {}, b"")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    if parsed.get("transfer-encoding") == "chunked":
        rest = _dechunk(rest)
    return RawAnswer(int(status_line.split()[1]), parsed, rest)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out

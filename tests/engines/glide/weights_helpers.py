"""Test helpers for the weights download: a local HTTP file server with failure switches,
and small generated checkpoints."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from tests.fakes.http_server import base_url, serve_http
from text2img.engines.glide.cache import CheckpointSpec, Manifest, RemoteFile


@dataclass
class Request:
    path: str
    range: str | None
    if_range: str | None
    user_agent: str | None = None
    status: int = 0
    body_bytes: int = 0


@dataclass
class FileServer:
    """Serves `files` (URL path -> bytes) on 127.0.0.1 with switchable misbehaviour."""

    files: dict[str, bytes] = field(default_factory=dict)
    ignore_range: bool = False
    drop_after: int | None = None  # close the connection after this many body bytes …
    drops_left: int = 0  # … this many times
    status_after_drops: int | None = None  # once the drops are used up, answer only this
    max_range: int | None = None  # answer a Range request with at most this many bytes
    status: dict[str, int] = field(default_factory=dict)  # path -> forced status, every time
    fail_times: dict[str, int] = field(default_factory=dict)  # path -> 500s before it works
    content_md5: bool = False  # send Content-MD5 like Azure Blob Storage
    md5_override: dict[str, bytes] = field(default_factory=dict)  # advertise another file's MD5
    requests: list[Request] = field(default_factory=list)
    base_url: str = ""

    def etag(self, path: str) -> str:
        return '"' + hashlib.sha256(self.files[path]).hexdigest()[:16] + '"'

    def body_bytes(self, path: str) -> int:
        return sum(r.body_bytes for r in self.requests if r.path == path)


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path
            req = Request(path, self.headers.get("Range"), self.headers.get("If-Range"))
            req.user_agent = self.headers.get("User-Agent")
            server.requests.append(req)
            if path in server.status:
                return self._plain(req, server.status[path])
            if server.status_after_drops and server.drop_after and server.drops_left == 0:
                return self._plain(req, server.status_after_drops)
            if server.fail_times.get(path, 0) > 0:
                server.fail_times[path] -= 1
                return self._plain(req, 500)
            if path not in server.files:
                return self._plain(req, 404)
            data = server.files[path]
            etag = server.etag(path)
            start = 0
            if req.range and not server.ignore_range and req.if_range in (None, etag):
                start = int(req.range.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    req.status = 416
                    return None
                end = len(data) if server.max_range is None else start + server.max_range
                end = min(end, len(data))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                req.status = 206
                data = data[:end]
            else:
                self.send_response(200)
                req.status = 200
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", etag)
            if server.content_md5:
                md5_of = server.md5_override.get(path, data)
                digest = base64.b64encode(hashlib.md5(md5_of).digest()).decode()
                self.send_header("x-ms-blob-content-md5", digest)
            self.end_headers()
            if server.drop_after is not None and server.drops_left > 0:
                server.drops_left -= 1
                body = body[: server.drop_after]
                self.close_connection = True
            try:
                self.wfile.write(body)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):  # the client gave up: fine
                self.close_connection = True
                return None
            req.body_bytes = len(body)
            return None

        def _plain(self, req: Request, status: int) -> None:
            req.status = status
            payload = f"<html><body>error {status}</body></html>".encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


@pytest.fixture(autouse=True)
def local_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests to the local test server never go through a proxy from the environment."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionResetError, BrokenPipeError)):  # clients hang up
            super().handle_error(request, client_address)  # type: ignore[arg-type]


def serve(files: dict[str, bytes]) -> Generator[FileServer, None, None]:
    """Run a FileServer in a thread for the duration of a fixture."""
    state = FileServer(files=files)
    with serve_http(_handler(state), poll_interval=0.02, server_class=_QuietServer) as httpd:
        state.base_url = base_url(httpd)
        yield state


def random_state_dict(shapes: Mapping[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) for k, s in shapes.items()}


def checkpoint_bytes(state: object, tmp: Path) -> bytes:
    path = tmp / f"ckpt-{id(state)}.pt"
    torch.save(state, path)
    data = path.read_bytes()
    path.unlink()
    return data


SHAPES_BASE = {
    "positional_embedding": (8, 16),
    "input_blocks.0.0.weight": (32, 3, 3, 3),
    "input_blocks.0.0.bias": (32,),
    "out.2.weight": (6, 32, 3, 3),
    "token_embedding.weight": (100, 16),
}
SHAPES_UPSAMPLE = {
    "input_blocks.0.0.weight": (16, 6, 3, 3),
    "input_blocks.0.0.bias": (16,),
    "out.2.weight": (6, 16, 3, 3),
}
TOKENIZER = {
    "encoder.json.gz": b"\x1f\x8b fake encoder " + bytes(range(256)) * 40,
    "vocab.bpe.gz": b"\x1f\x8b fake vocab " + bytes(range(255, -1, -1)) * 30,
}


def count(shapes: Mapping[str, tuple[int, ...]]) -> int:
    return sum(torch.Size(s).numel() for s in shapes.values())


def fake_manifest(base_url: str, *, fingerprint: bool = True) -> Manifest:
    """A manifest like the real one, for the generated files served at `base_url`; the
    checkpoints are unpinned unless a test pins them as users do ($TEXT2IMG_WEIGHTS_PINS)."""
    from text2img.engines.glide.cache import listing_fingerprint, pinned

    def spec(name: str, shapes: Mapping[str, tuple[int, ...]]) -> CheckpointSpec:
        return CheckpointSpec(
            name,
            pinned(RemoteFile(f"{name}.pt", f"{base_url}/{name}.pt")),  # $TEXT2IMG_WEIGHTS_PINS
            num_tensors=len(shapes),
            num_params=count(shapes),
            listing_sha256=listing_fingerprint(shapes) if fingerprint else None,
        )

    tok = [
        RemoteFile(
            f"tokenizer/{n}",
            f"{base_url}/{n}",
            sha256=hashlib.sha256(d).hexdigest(),
            size=len(d),
        )
        for n, d in TOKENIZER.items()
    ]
    return Manifest(
        checkpoints=(spec("base", SHAPES_BASE), spec("upsample", SHAPES_UPSAMPLE)),
        tokenizer=(tok[0], tok[1]),
    )


def pin_files(monkeypatch: pytest.MonkeyPatch, where: Path, files: Mapping[str, bytes]) -> Path:
    """Pin `files` (name -> the bytes they must be) the documented way: a JSON file named
    by $TEXT2IMG_WEIGHTS_PINS."""
    from text2img.engines.glide.cache import PINS_ENV

    pins = {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        for name, data in files.items()
    }
    path = where / "pins.json"
    path.write_text(json.dumps(pins))
    monkeypatch.setenv(PINS_ENV, str(path))
    return path

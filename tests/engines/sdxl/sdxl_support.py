"""A local fake Hugging Face Hub (stdlib HTTP server on 127.0.0.1) and tiny real-format
files for every pinned path, so the download and load paths run offline for real.

The server answers what `hf_hub_download` asks: HEAD and GET on
`/{repo}/resolve/{revision}/{path}` with `X-Repo-Commit`, `ETag` (sha256 for weights, the
git blob id for small files, as the Hub does) and `Content-Length`, and honours `Range`.
Faults on demand: `cut` (first GET of a path sends half the body, then closes), `corrupt`
(every GET serves one flipped byte under the right etag and size), `refuse` (503).
"""

from __future__ import annotations

import hashlib
import json
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import torch

from tests.fakes.http_server import base_url, serve_http
from text2img.engines.sdxl import files, tiny

PUBLISHED = Path(__file__).parent / "data" / "published_configs.json"


def published(which: str) -> dict[str, Any]:
    """A pinned published config: "unet", "scheduler" (SDXL base) or "vae" (fp16-fix)."""
    data = json.loads(PUBLISHED.read_text())
    suffix = {"unet": "/unet/config.json", "scheduler": "/scheduler/scheduler_config.json",
              "vae": "sdxl-vae-fp16-fix@"}[which]  # fmt: skip
    (key,) = [k for k in data if k.endswith(suffix) or (which == "vae" and suffix in k)]
    return dict(data[key])


def etag_of(path: str, data: bytes) -> str:
    if path.endswith(".safetensors"):  # LFS on the Hub: the etag is the sha256
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class FakeHub:
    """Content per (repo, revision, path) and the faults to inject; logs every request."""

    content: dict[tuple[str, str, str], bytes]
    cut: set[str] = field(default_factory=set)
    corrupt: set[str] = field(default_factory=set)
    refuse: bool = False
    log: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""

    def lookup(self, url_path: str) -> tuple[str, bytes] | None:
        for (repo, rev, path), data in self.content.items():
            if url_path == f"/{repo}/resolve/{rev}/{path}":
                return path, data
        return None


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _head(self, send_body: bool) -> None:
            hub.log.append((self.command, self.path, self.headers.get("Range")))
            found = hub.lookup(self.path.split("?")[0])
            if hub.refuse:
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if found is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path, data = found
            tag = etag_of(path, data)
            if send_body and path in hub.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            start = 0
            if send_body and (rng := self.headers.get("Range")):
                start = int(rng.removeprefix("bytes=").split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            rev = self.path.split("/resolve/")[1].split("/")[0]
            self.send_header("X-Repo-Commit", rev)
            self.send_header("ETag", f'"{tag}"')
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if not send_body:
                return
            body = data[start:]
            if path in hub.cut and start == 0:
                hub.cut.discard(path)
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

        def do_HEAD(self) -> None:
            self._head(send_body=False)

        def do_GET(self) -> None:
            self._head(send_body=True)

    return Handler


@contextmanager
def serve(hub: FakeHub) -> Iterator[FakeHub]:
    with serve_http(_handler(hub), poll_interval=0.05) as server:
        hub.url = base_url(server)
        yield hub


def _safetensors(module: torch.nn.Module, dtype: torch.dtype) -> bytes:
    from safetensors.torch import save

    return save({k: v.to(dtype).contiguous() for k, v in module.state_dict().items()})


def tiny_hub_content() -> dict[tuple[str, str, str], bytes]:
    """Every pinned path, filled with a tiny file of the right format."""
    from diffusers import UNet2DConditionModel

    parts = tiny.build_components()
    by_path: dict[str, bytes] = {
        "LICENSE.md": b"CreativeML Open RAIL++-M (test copy)\n",
        # SDXL base's own scheduler config ("leading" spacing): the engine must override it
        "scheduler/scheduler_config.json": json.dumps(published("scheduler")).encode(),
        "diffusion_pytorch_model.safetensors": _safetensors(parts["vae"], torch.float32),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("text_encoder", "text_encoder_2"):
            parts[name].to(torch.float16).save_pretrained(Path(tmp) / name, variant="fp16")
            for f in ("config.json", "model.fp16.safetensors"):
                by_path[f"{name}/{f}"] = (Path(tmp) / name / f).read_bytes()
        folder = tiny.write_tokenizer(Path(tmp) / "tok")
        special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                   "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}  # fmt: skip
        (folder / "special_tokens_map.json").write_text(json.dumps(special))
        for name in ("tokenizer", "tokenizer_2"):
            for f in (
                "vocab.json",
                "merges.txt",
                "special_tokens_map.json",
                "tokenizer_config.json",
            ):
                by_path[f"{name}/{f}"] = (folder / f).read_bytes()
    for steps in files.UNET_STEPS:
        torch.manual_seed(steps)
        unet = UNet2DConditionModel(**tiny.TINY_UNET)
        by_path[files.unet_file(steps).path] = _safetensors(unet, torch.float16)
    return {(f.repo, f.revision, f.path): by_path[f.path] for f in files.FILES}

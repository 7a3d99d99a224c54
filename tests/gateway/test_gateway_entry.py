"""`python -m text2img.gateway` as Cloud Run runs it: $PORT, no torch, one-line errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.fakes.compute import FakeCompute
from tests.gateway.gateway_support import TOKEN

pytestmark = pytest.mark.slow  # subprocesses or real servers: make test, not test-fast


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEXT2IMG_", "GOOGLE_"))}
    env.update(extra)
    return env


def test_the_gateway_imports_no_model_code() -> None:
    code = (
        "import sys, text2img.gateway.app, text2img.gateway.__main__\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'numpy', 'PIL', 'safetensors') or m.startswith('text2img.api.') "
        "or m.startswith('text2img.engines.glide'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_module_entry_serves_on_port(fake: FakeCompute) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = _env(
        PORT=str(port),
        HOST="127.0.0.1",
        TEXT2IMG_API_TOKEN=TOKEN,
        TEXT2IMG_GATEWAY_PROJECT=fake.project,
        TEXT2IMG_GATEWAY_ZONE=fake.zone,
        TEXT2IMG_GATEWAY_INSTANCE="text2img-vm",
        TEXT2IMG_GATEWAY_COMPUTE_ENDPOINT=fake.endpoint,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "text2img.gateway"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert resp.json() == {"status": "ok"}
        woke = httpx.post(
            f"http://127.0.0.1:{port}/v1/images/generations",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={"prompt": "x"},
        )
        assert woke.status_code == 503
        assert fake.calls["start"] == 1
    finally:
        proc.terminate()
        output = proc.communicate(timeout=15)[0]
    assert TOKEN not in output  # the token never reaches the logs
    records = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert any("started VM" in r["message"] for r in records), output
    assert {r["severity"] for r in records} <= {"INFO", "WARNING"}


def test_module_entry_without_token_is_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "text2img.gateway"],
        env=_env(TEXT2IMG_GATEWAY_PROJECT="p", TEXT2IMG_GATEWAY_ZONE="z",
                 TEXT2IMG_GATEWAY_INSTANCE="i"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "TEXT2IMG_API_TOKEN" in proc.stderr

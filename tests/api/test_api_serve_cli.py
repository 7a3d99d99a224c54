"""`text2img serve`: loopback without a token, refusal of other hosts, a real start."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from text2img.cli import main
from text2img.commands.serve import is_loopback, resolve_host
from text2img.errors import UserError

pytestmark = pytest.mark.slow  # subprocesses or real servers: make test, not test-fast


def test_host_rules() -> None:
    assert resolve_host(None, has_token=False) == "127.0.0.1"
    assert resolve_host(None, has_token=True) == "127.0.0.1"
    assert resolve_host("::1", has_token=False) == "::1"
    assert resolve_host("0.0.0.0", has_token=True) == "0.0.0.0"
    with pytest.raises(UserError, match="without an API token"):
        resolve_host("0.0.0.0", has_token=False)
    assert is_loopback("localhost")
    assert is_loopback("127.0.0.2")
    assert not is_loopback("192.168.1.10")
    assert not is_loopback("example.com")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEXT2IMG_")}
    env.update({"TEXT2IMG_TRANSLATION": "off", "TEXT2IMG_MODEL_CACHE": str(tmp_path / "cache"),
                "OMP_NUM_THREADS": "1"})  # fmt: skip
    env.update(extra)
    return env


def test_refuses_a_public_host_without_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for key in list(os.environ):
        if key.startswith("TEXT2IMG_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "--model", "tiny", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0 without an API token" in err
    assert "Traceback" not in err


def _start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "text2img.cli", "serve", *args],
        env=env, cwd=cwd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip


def test_serve_tiny_on_loopback_without_a_token(tmp_path: Path) -> None:
    proc = _start(["--model", "tiny", "--port", "0"], _env(tmp_path), tmp_path)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        port = None
        end = time.monotonic() + 60
        while port is None and time.monotonic() < end:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"web UI and API at http://127\.0\.0\.1:(\d+)/", line)
            port = int(match.group(1)) if match else None
        assert port, "".join(lines)
        text = "".join(lines)
        assert port != 0  # the line people copy names the port --port 0 picked
        assert "no API token set" in text
        assert "listening on 127.0.0.1 only" in text
        assert "RANDOM WEIGHTS" in text
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        end = time.monotonic() + 30
        while httpx.get(f"{url}/readyz").status_code != 200:
            assert time.monotonic() < end
            time.sleep(0.05)
        assert httpx.get(f"{url}/v1/status").json()["model"] == "tiny"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0


def test_a_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _start(["--model", "tiny", "--port", str(port)], _env(tmp_path), tmp_path)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "Traceback" not in err


def test_missing_glide_weights_exit_with_what_to_run(tmp_path: Path) -> None:
    proc = _start(["--model", "glide", "--port", "0", "--no-download"], _env(tmp_path), tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "text2img download" in err
    assert "Traceback" not in err


def test_bad_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TEXT2IMG_QUEUE_LIMIT", "0")
    assert main(["serve", "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "TEXT2IMG_QUEUE_LIMIT" in err
    assert "Traceback" not in err
    monkeypatch.setenv("TEXT2IMG_QUEUE_LIMIT", "4")
    monkeypatch.setenv("TEXT2IMG_API_TOKEN", "short")
    assert main(["serve", "--model", "tiny"]) == 2
    assert "shorter than 16" in capsys.readouterr().err

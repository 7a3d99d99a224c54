"""A real `text2img serve --model tiny` process on 127.0.0.1:<free port> (for what only a
real server shows: signals, its memory, its socket timeouts)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from api_support import AUTH, TOKEN


@dataclass
class ServeProcess:
    proc: subprocess.Popen[str]
    url: str
    port: int
    lines: list[str] = field(default_factory=list)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def rss_bytes(self) -> int:
        """The server process's resident memory (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


def start(tmp_path: Path, **env_extra: str) -> ServeProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEXT2IMG_")}
    env.update({"TEXT2IMG_TRANSLATION": "off", "TEXT2IMG_API_TOKEN": TOKEN,
                "OMP_NUM_THREADS": "1"})  # fmt: skip
    env.update(env_extra)
    proc = subprocess.Popen(
        [sys.executable, "-m", "text2img.cli", "serve", "--model", "tiny", "--port", "0"],
        env=env, cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    stderr = proc.stderr
    lines: list[str] = []
    end = time.monotonic() + 60
    while time.monotonic() < end:
        line = stderr.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"web UI and API at http://127\.0\.0\.1:(\d+)", line)
        if match:
            threading.Thread(target=lambda: lines.extend(stderr), daemon=True).start()
            port = int(match.group(1))
            server = ServeProcess(proc, f"http://127.0.0.1:{port}", port, lines)
            with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as client:
                while client.get("/readyz").status_code != 200:
                    assert time.monotonic() < end, "the service did not become ready"
                    time.sleep(0.05)
            return server
    proc.kill()
    raise AssertionError("serve did not start:\n" + "".join(lines))


@contextmanager
def serving(tmp_path: Path, **env_extra: str) -> Iterator[ServeProcess]:
    server = start(tmp_path, **env_extra)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
        server.proc.wait(10)

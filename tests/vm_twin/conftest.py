"""Fixtures of the VM twin tests: the cached Debian root (built here when absent), a fake
metadata server + Secret Manager on a loopback address at port 80 (the twin's /etc/hosts
names it metadata.google.internal), and twins booted from our systemd/ files.

Outside CI these tests are skipped, with one line at the end of the run saying so, when
this machine cannot run them (not root, no debootstrap/unshare, no Debian mirror). In CI
(CI=true) a skip is a failure: CI must run them (.ci/run installs what they need)."""

from __future__ import annotations

import os
import random
import socket
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.systemd.sandbox import API_TOKEN, REPO, FakeGoogle, fake_google, rendered_metadata
from tests.vm_twin import profile, rootfs
from tests.vm_twin.twin import Twin

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
VENV = str(Path(sys.prefix).resolve())


def unavailable() -> str | None:
    """Why the twin cannot run here, or None."""
    missing = rootfs.missing_tools()
    if missing:
        return f"missing {', '.join(missing)} (sudo apt-get install debootstrap util-linux)"
    if sys.prefix == sys.base_prefix:
        return "the tests must run from the project's venv (make test)"
    try:
        rootfs.ensure_root(log=lambda m: print(m, file=sys.stderr))
    except Exception as exc:  # debootstrap failed: no mirror, no space, ...
        return f"cannot build the Debian root: {exc}"
    return None


@pytest.fixture(scope="session")
def twin_ready() -> None:
    reason = unavailable()
    if reason:
        if IN_CI:
            pytest.fail(f"vm twin: {reason} (CI must run these tests)", pytrace=False)
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


@dataclass
class Setup:
    twin: Twin
    google: FakeGoogle
    port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


KNOBS = {
    "TEXT2IMG_CONSOLE": "/var/log/vmtwin/ttyS0",
    "TEXT2IMG_SECRETMANAGER_ENDPOINT": "http://metadata.google.internal",
    "TEXT2IMG_DRIVER_TIMEOUT": "4",
    "TEXT2IMG_DRIVER_POLL": "1",
    "TEXT2IMG_RETRY_DELAY": "1",
    "TEXT2IMG_IAM_DELAY": "2",
    "TEXT2IMG_PORT_WAIT": "3",
}
PREFETCH = "tiny/*.safetensors"


def make_setup(
    stack: ExitStack, tmp: Path, *, squatter: bool = False, knobs: dict[str, str] | None = None
) -> Setup:
    """A twin on its own loopback address and free port, not booted yet."""
    ip = f"127.77.{random.randrange(1, 250)}.{random.randrange(2, 250)}"
    google = stack.enter_context(fake_google((ip, 80)))
    port = free_port()
    google.internal_ip = ip  # the address docker publishes on, besides 127.0.0.1
    google.attributes.update(rendered_metadata())
    google.attributes.update(
        {
            "text2img-model": "tiny",
            "text2img-port": str(port),
            "text2img-translation": "off",
            "text2img-translate-project": "",
            "text2img-prefetch": PREFETCH,
        }
    )
    twin = Twin(tmp, venv=VENV, repo=str(REPO))
    stack.callback(twin.kill)  # only if it did not power off by itself
    profile.install(
        twin.disk,
        metadata_ip=ip,
        port=port,
        venv=VENV,
        repo=str(REPO),
        knobs={**KNOBS, **(knobs or {})},
        squatter=squatter,
    )
    # weights in the model cache, as a wake finds them
    weights = twin.disk / "var/lib/text2img/models/tiny/model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"\0" * 4096)
    return Setup(twin, google, port)


@pytest.fixture
def setup(twin_ready: None, tmp_path: Path) -> Iterator[Setup]:
    with ExitStack() as stack:
        yield make_setup(stack, tmp_path)


__all__ = ["API_TOKEN", "Setup", "make_setup"]

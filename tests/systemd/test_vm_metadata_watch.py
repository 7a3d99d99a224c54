"""The metadata watcher (systemd/metadata_watch.py) against the fake metadata server:
a new image in the metadata re-runs the startup script without a reboot."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.systemd.sandbox import IMAGE2, REPO, FakeGoogle


class Watcher:
    def __init__(self, tmp: Path, google: FakeGoogle) -> None:
        self.tmp = tmp
        self.calls = tmp / "redeploy.calls"
        self.log = tmp / "watch.log"
        trigger = tmp / "redeploy"
        trigger.write_text(f'#!/bin/bash\necho "$*" >>{self.calls}\n')
        trigger.chmod(0o755)
        env = {
            "PATH": "/usr/bin:/bin",
            "GCE_METADATA_HOST": google.host,
            "TEXT2IMG_WATCH_COMMAND": f"{trigger} startup",
            "TEXT2IMG_WATCH_TIMEOUT_SEC": "2",
            "TEXT2IMG_WATCH_MAX_BACKOFF": "0.2",
        }
        program = REPO / "systemd" / "metadata_watch.py"
        self.log_handle = self.log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(program)],
            env=env,
            stdout=self.log_handle,
            stderr=subprocess.STDOUT,
        )

    def triggers(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log_handle.close()


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


@pytest.fixture
def watcher(tmp_path: Path, google: FakeGoogle) -> Iterator[Watcher]:
    w = Watcher(tmp_path, google)
    yield w
    w.stop()


def test_a_new_image_triggers_one_rerun_of_the_startup_script(
    watcher: Watcher, google: FakeGoogle
) -> None:
    assert wait_until(lambda: "watching" in watcher.output())
    assert wait_until(lambda: len([r for r in google.requests if "attributes/?" in r[1]]) >= 2)
    assert watcher.triggers() == []  # the first read is the baseline, not a change

    google.set_attribute("enable-oslogin", "FALSE")  # not ours: ignored
    time.sleep(0.5)
    assert watcher.triggers() == []

    google.set_attribute("text2img-image", IMAGE2)
    assert wait_until(lambda: watcher.triggers() == ["startup"])
    assert wait_until(lambda: "startup script finished" in watcher.output())
    assert f"changed: text2img-image (image {IMAGE2})" in watcher.output()

    # long polls carry the ETag and the Metadata-Flavor header
    polls = [r for r in google.requests if "wait_for_change=true" in r[1]]
    assert polls
    assert all("last_etag=etag-" in r[1] for r in polls)
    assert all(r[2].get("Metadata-Flavor") == "Google" for r in polls)
    time.sleep(0.5)
    assert watcher.triggers() == ["startup"]  # once per change


def test_metadata_errors_back_off_and_changes_are_not_lost(
    watcher: Watcher, google: FakeGoogle
) -> None:
    assert wait_until(lambda: "watching" in watcher.output())
    assert wait_until(lambda: any("wait_for_change" in r[1] for r in google.requests))
    google.metadata_failures = 10_000  # the server starts failing ...
    google.set_attribute("enable-oslogin", "FALSE")  # ... once this poll returns
    assert wait_until(lambda: "HTTPError" in watcher.output())
    google.set_attribute("text2img-idle-minutes", "45")  # changed while unreachable
    time.sleep(0.3)
    assert watcher.triggers() == []
    google.metadata_failures = 0
    assert wait_until(lambda: watcher.triggers() == ["startup"])
    assert "retrying in" in watcher.output()
    assert "changed: text2img-idle-minutes" in watcher.output()


def test_a_changed_systemd_file_triggers_a_rerun(watcher: Watcher, google: FakeGoogle) -> None:
    # infra delivers systemd/'s files as text2img-file-* attributes: editing one is a change
    assert wait_until(lambda: "watching" in watcher.output())
    assert wait_until(lambda: any("wait_for_change" in r[1] for r in google.requests))
    google.set_attribute("text2img-file-autostop-py", "#!/usr/bin/env python3\n# v2\n")
    assert wait_until(lambda: watcher.triggers() == ["startup"])
    assert "changed: text2img-file-autostop-py" in watcher.output()

"""scripts/vm as a user runs it (the bash launcher): errors are one line, ssh execs gcloud."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.scripts.vm_support import ROOT, VM, Env

pytestmark = pytest.mark.slow  # subprocesses or real servers: make test, not test-fast


def launch(
    env: Env, *argv: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GOOGLE_")}
    environ.update(extra_env or {})
    return subprocess.run(
        [str(ROOT / "scripts" / "vm"), *argv],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )


def _one_line(proc: subprocess.CompletedProcess[str], command: str) -> str:
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"scripts/vm {command}: error: ")
    return proc.stderr


def test_unknown_instance(env: Env) -> None:
    env.set_outputs(env.outputs(instance_name="no-such-vm"))
    err = _one_line(launch(env, "status"), "status")
    assert "VM 'no-such-vm' (project proj, zone asia-northeast1-a) does not exist" in err


def test_no_credentials(env: Env, tmp_path: Path) -> None:
    err = _one_line(
        launch(
            env,
            "start",
            extra_env={
                "TEXT2IMG_COMPUTE_ENDPOINT": "",
                "HOME": str(tmp_path),
                "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
                "NO_GCE_CHECK": "True",
                "GCE_METADATA_HOST": "127.0.0.1:9",
                "GCE_METADATA_IP": "127.0.0.1:9",
            },
        ),
        "start",
    )
    assert "gcloud auth application-default login" in err
    assert env.fake.calls["start"] == 0


def test_pulumi_missing_or_without_stack(env: Env) -> None:
    (env.bin_dir / "pulumi").unlink()
    err = _one_line(launch(env, "status"), "status")
    assert "pulumi is not installed" in err
    assert "--project, --zone and --instance" in err
    env.set_outputs(fail="no stack selected; use `pulumi stack select`")
    err = _one_line(launch(env, "stop"), "stop")
    assert "cannot read the stack outputs (error: no stack selected" in err


def test_ssh_execs_gcloud_through_iap(env: Env) -> None:
    proc = launch(env, "ssh", "--", "-L", "8080:localhost:8080")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "stub gcloud ran"
    assert env.gcloud_calls() == [
        [
            "compute", "ssh", VM, "--zone", "asia-northeast1-a", "--project", "proj",
            "--tunnel-through-iap", "--", "-L", "8080:localhost:8080",
        ]
    ]  # fmt: skip


def test_missing_venv_is_one_line(env: Env, tmp_path: Path) -> None:
    proc = launch(env, "status", extra_env={"TEXT2IMG_PYTHON": str(tmp_path / "nope")})
    assert proc.returncode == 1
    assert "run `make venv`" in proc.stderr

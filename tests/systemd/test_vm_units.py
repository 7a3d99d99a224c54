"""Static checks of what runs on the VM: shellcheck, systemd-analyze verify on every unit
the startup script writes, ruff and mypy on the Python programs it embeds."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.systemd.sandbox import REPO, STARTUP

BIN = Path(sys.executable).parent
# Programs the units run that this test machine lacks; the VM has them (docker.io,
# python3 and the Google guest agent). Stand-ins are put into the verify root.
VM_BINARIES = {"/usr/bin/docker", "/usr/bin/python3", "/usr/bin/google_metadata_script_runner"}


def test_startup_script_is_shellcheck_clean() -> None:
    result = subprocess.run(
        [str(BIN / "shellcheck"), "--shell=bash", "--severity=style", str(STARTUP)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_startup_script_is_small_enough_for_instance_metadata() -> None:
    # one metadata value may hold 256 KB; stay well under it
    assert STARTUP.stat().st_size < 96 * 1024
    assert STARTUP.read_text().startswith("#!/bin/bash\n")


def test_no_standalone_copies_to_drift_from_the_script() -> None:
    # the script is the single source: units and programs are embedded, not duplicated
    assert sorted(p.name for p in (REPO / "systemd").iterdir()) == ["startup.sh"]


def exec_binaries(unit_text: str) -> set[str]:
    out = set()
    for match in re.finditer(r"^Exec\w+=([-@:+!]*)(\S+)", unit_text, re.MULTILINE):
        out.add(match.group(2))
    return out


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or not Path("/usr/lib/systemd/system").is_dir(),
    reason="needs systemd-analyze and the system's unit directory",
)
def test_every_unit_passes_systemd_analyze_verify(installed: Path, tmp_path: Path) -> None:
    units = sorted((installed / "etc/systemd/system").glob("text2img*"))
    assert [u.name for u in units] == [
        "text2img-autostop.service",
        "text2img-autostop.timer",
        "text2img-metadata-watch.service",
        "text2img-redeploy.service",
        "text2img.service",
    ]
    binaries = set().union(*(exec_binaries(u.read_text()) for u in units))
    assert binaries == VM_BINARIES  # every command is an absolute path we know the VM has

    root = tmp_path / "verify-root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/lib/systemd/system/docker.service").write_text(
        "[Unit]\nDescription=Docker (stand-in for the docker.io package)\n"
        "[Service]\nExecStart=/usr/bin/dockerd\n"
    )
    for binary in VM_BINARIES | {"/usr/bin/dockerd"}:
        path = root / binary.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    target = root / "etc/systemd/system"
    target.mkdir(parents=True)
    for unit in units:
        shutil.copy(unit, target / unit.name)

    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--generators=no", f"--root={root}"]
        + [u.name for u in units],
        capture_output=True,
        text=True,
        check=False,
        cwd=target,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""  # not even a warning


PROGRAMS = ["autostop.py", "metadata_watch.py"]


@pytest.mark.parametrize("name", PROGRAMS)
def test_embedded_python_is_ruff_clean(installed: Path, name: str) -> None:
    program = installed / "usr/local/lib/text2img" / name
    config = str(REPO / "pyproject.toml")
    for args in (["check"], ["format", "--check", "--diff"]):
        result = subprocess.run(
            [str(BIN / "ruff"), *args, "--config", config, str(program)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_embedded_python_is_mypy_strict_clean(installed: Path) -> None:
    programs = [str(installed / "usr/local/lib/text2img" / name) for name in PROGRAMS]
    result = subprocess.run(
        [str(BIN / "mypy"), "--strict", "--python-version=3.10", "--no-incremental", *programs],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", PROGRAMS)
def test_embedded_python_compiles_for_python_3_10(installed: Path, name: str) -> None:
    # Ubuntu 22.04 images ship Python 3.10: no 3.11-only syntax in the programs
    import ast

    source = (installed / "usr/local/lib/text2img" / name).read_text()
    ast.parse(source, feature_version=(3, 10))

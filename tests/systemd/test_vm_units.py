"""Static checks of what runs on the VM, on the files of systemd/ as they are: shellcheck,
systemd-analyze verify on every unit file, mypy --strict for Python 3.10 on the programs
(`make lint` also runs ruff and mypy over systemd/)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.systemd.sandbox import REPO, STARTUP

SYSTEMD = REPO / "systemd"
UNITS = [
    "text2img-autostop.service",
    "text2img-autostop.timer",
    "text2img-metadata-watch.service",
    "text2img-redeploy.service",
    "text2img.service",
]

BIN = Path(sys.executable).parent
# Programs the units run that this test machine lacks; the VM has them (docker.io,
# python3 and the Google guest agent). Stand-ins are put into the verify root.
VM_BINARIES = {"/usr/bin/docker", "/usr/bin/python3", "/usr/bin/google_metadata_script_runner"}


def test_startup_script_is_shellcheck_clean() -> None:
    result = subprocess.run(
        # -x follows `source startup-lib.sh`, so both files are checked together
        [
            str(BIN / "shellcheck"),
            "-x",
            "--source-path=SCRIPTDIR",
            "--shell=bash",
            "--severity=style",
            str(STARTUP),
            str(SYSTEMD / "startup-lib.sh"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_startup_script_is_the_boot_steps_only() -> None:
    text = STARTUP.read_text()
    assert text.startswith("#!/bin/bash\n")
    assert "<<'__UNIT__'" not in text  # no unit or program carried in a heredoc
    assert "[Service]" not in text
    assert "def main(" not in text  # no program either (small JSON/lock one-liners only)


def test_systemd_holds_each_thing_as_the_file_it_is() -> None:
    names = sorted(p.name for p in SYSTEMD.iterdir())
    programs = ["autostop.py", "metadata_watch.py", "startup.sh", "startup-lib.sh"]
    assert names == sorted([*UNITS, *programs])
    assert len(STARTUP.read_text().splitlines()) < 460  # the boot steps; helpers in the lib


def exec_binaries(unit_text: str) -> set[str]:
    out = set()
    for match in re.finditer(r"^Exec\w+=([-@:+!]*)(\S+)", unit_text, re.MULTILINE):
        out.add(match.group(2))
    return out


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or not Path("/usr/lib/systemd/system").is_dir(),
    reason="needs systemd-analyze and the system's unit directory",
)
def test_every_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    units = [SYSTEMD / name for name in UNITS]
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


@pytest.mark.slow
def test_programs_are_mypy_strict_clean_for_python_3_10() -> None:
    # stricter than `make lint`: the VM runs them with the image's own python3
    programs = [str(SYSTEMD / name) for name in PROGRAMS]
    result = subprocess.run(
        [str(BIN / "mypy"), "--strict", "--python-version=3.10", "--no-incremental", *programs],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", PROGRAMS)
def test_programs_compile_for_python_3_10_with_the_standard_library_only(name: str) -> None:
    # Ubuntu 22.04 images ship Python 3.10 and nothing from PyPI
    import ast

    tree = ast.parse((SYSTEMD / name).read_text(), feature_version=(3, 10))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}

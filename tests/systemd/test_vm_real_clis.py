"""Every docker and systemctl command line the VM runs is accepted by the real CLI.

The stubs accept anything, so a misspelt flag would pass the sandbox tests. Here each
recorded command (and the unit's Exec lines, expanded as systemd would) goes through
the real `docker` client pointed at a socket where no daemon listens: flag errors show
up as "unknown flag", well-formed commands get as far as "Cannot connect"."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.systemd.sandbox import IMAGE2, Sandbox, env_file

DOCKER = shutil.which("docker", path="/usr/local/bin:/usr/bin:/bin")
pytestmark = pytest.mark.skipif(DOCKER is None, reason="needs a docker CLI (no daemon needed)")


def unit_commands(unit: str, env: dict[str, str]) -> list[list[str]]:
    """ExecStartPre/ExecStart/ExecStop of a unit, continuation lines joined, ${VAR} expanded."""
    text = unit.replace("\\\n", " ")
    out = []
    for match in re.finditer(r"^Exec\w+=[-@:+!]*(.+)$", text, re.MULTILINE):
        line = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], match.group(1))
        out.append(shlex.split(line))
    return out


@pytest.mark.slow
def test_docker_command_lines_are_valid(sandbox: Sandbox, tmp_path: Path) -> None:
    assert sandbox.run().returncode == 0
    sandbox.google.set_attribute("text2img-image", IMAGE2)
    assert sandbox.run().returncode == 0
    recorded = sandbox.calls("docker")
    unit = sandbox.path("/etc/systemd/system/text2img.service").read_text()
    from_unit = unit_commands(unit, env_file(sandbox.path("/etc/text2img/unit.env")))
    assert [c[1] for c in from_unit] == ["rm", "run", "stop"]

    service_env = str(sandbox.path("/etc/text2img/service.env"))
    commands = [[a.replace("/etc/text2img/service.env", service_env) for a in c] for c in from_unit]
    commands += recorded
    verbs = {tuple(c[1:3]) if c[1] == "image" else (c[1],) for c in commands}
    assert verbs >= {
        ("login",),
        ("pull",),
        ("logout",),
        ("run",),
        ("rm",),
        ("stop",),
        ("info",),
        ("image", "inspect"),
        ("image", "ls"),
        ("image", "rm"),
    }

    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DOCKER_CONFIG": str(tmp_path / "docker-config"),
        "DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock",
    }
    for command in commands:
        if command[1] == "login":
            # the CLI logs in by itself when no daemon answers: keep it off the network
            assert command[-1] == "https://asia-northeast1-docker.pkg.dev"
            command = [*command[:-1], "https://127.0.0.1:9"]
        result = subprocess.run(
            [str(DOCKER), *command[1:]],
            input="not-a-token",
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        output = result.stdout + result.stderr
        for bad in ("unknown flag", "unknown shorthand", "invalid argument", "requires at least"):
            assert bad not in output, (command, output)
        if command[1] == "login":
            assert "127.0.0.1:9" in output, output  # it got as far as the registry
        elif command[1] != "logout":  # logout only edits the client's config
            assert "Cannot connect to the Docker daemon" in output, (command, output)


SYSTEMCTL = shutil.which("systemctl", path="/usr/bin:/bin")


# Only where systemd is NOT running: on a machine booted with systemd these calls would
# really restart docker.service and friends.
@pytest.mark.skipif(
    SYSTEMCTL is None or Path("/run/systemd/system").exists(),
    reason="needs systemctl on a machine where systemd is not running (it would act)",
)
def test_systemctl_command_lines_are_valid(sandbox: Sandbox) -> None:
    assert sandbox.run().returncode == 0
    sandbox.google.set_attribute("text2img-image", IMAGE2)
    assert sandbox.run().returncode == 0
    calls = sandbox.calls("systemctl")
    assert {c[1] for c in calls if not c[1].startswith("-")} >= {
        "daemon-reload",
        "is-enabled",
        "enable",
        "is-active",
        "restart",
        "reset-failed",
    }
    for call in calls:
        result = subprocess.run(
            [str(SYSTEMCTL), *call[1:]], capture_output=True, text=True, timeout=30, check=False
        )
        output = result.stdout + result.stderr
        for bad in ("unrecognized option", "Unknown command verb", "invalid option", "requires"):
            assert bad not in output, (call, output)

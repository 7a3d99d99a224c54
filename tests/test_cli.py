"""The `text2img` entry point: every subcommand is registered and documented."""

from __future__ import annotations

import subprocess
import sys

import pytest

from text2img.cli import COMMANDS, build_parser


def test_help_lists_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "text2img.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([name, "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage: text2img " + name)

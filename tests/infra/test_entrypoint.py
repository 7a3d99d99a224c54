"""The program runs the way Pulumi's Python language host runs it: `main: infra/` makes the
host chdir into infra/ and runpy.run_path(".") the folder (a fresh interpreter here)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from infra_harness import ROOT

SCRIPT = textwrap.dedent(
    """
    import os, runpy, sys
    sys.path.insert(0, {harness!r})
    import infra_harness as h
    os.chdir({infra!r})
    registered = []
    monitor = h.RecordingMonitor(h.Mocks())
    import pulumi
    pulumi.runtime.set_mocks(monitor.mocks, project="text2img", stack="dev", preview=False,
                             monitor=monitor)
    values = h.project_defaults() | {{"project": h.TEST_PROJECT}}
    config = {{f"text2img:{{k}}": h.config_value(v) for k, v in values.items()}}
    pulumi.runtime.set_all_config(config)
    pulumi.export = lambda name, value: None
    pulumi.runtime.test(lambda: runpy.run_path(".", run_name="__main__"))()
    import secrets, token
    assert secrets.__file__.startswith(sys.base_prefix), secrets.__file__
    assert sys.modules["infra.config"].__file__.startswith({infra!r})
    print("resources", len(monitor.registrations))
    """
)


@pytest.mark.slow
def test_program_runs_from_its_folder_like_the_language_host(tmp_path: Path) -> None:
    script = SCRIPT.format(harness=str(Path(__file__).parent), infra=str(ROOT / "infra"))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) > 40

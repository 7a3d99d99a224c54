"""Fixtures for the Pulumi program tests: the real startup script and Dockerfiles when the
checkout has them, stand-ins (tests-only overrides) while they are still being written."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from infra_harness import ROOT, Plan, run_program

STARTUP_ENV = "TEXT2IMG_INFRA_STARTUP_SCRIPT"
CONTEXT_ENV = "TEXT2IMG_INFRA_BUILD_CONTEXT"


@pytest.fixture(scope="session", autouse=True)
def program_inputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Yield the startup script the program reads; set the tests-only overrides if needed."""
    saved = {key: os.environ.get(key) for key in (STARTUP_ENV, CONTEXT_ENV)}
    tmp = tmp_path_factory.mktemp("infra-inputs")
    script = ROOT / "systemd" / "startup.sh"
    if not script.is_file():
        script = tmp / "startup.sh"
        script.write_text("#!/bin/bash\n# stand-in until systemd/startup.sh exists\nexit 0\n")
        os.environ[STARTUP_ENV] = str(script)
    if not (ROOT / "service" / "Dockerfile").is_file():
        context = tmp / "context"
        (context / "service").mkdir(parents=True)
        (context / "pyproject.toml").write_text("[project]\nname = 'stand-in'\n")
        (context / "service" / "Dockerfile").write_text("FROM scratch\n")
        (context / "service" / "gateway.Dockerfile").write_text("FROM scratch\n")
        os.environ[CONTEXT_ENV] = str(context)
    yield script
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


_CACHE: dict[tuple[str, tuple[tuple[str, Any], ...]], Plan] = {}


@pytest.fixture
def plan_for() -> Callable[..., Plan]:
    """plan_for(stack="dev", **overrides) -> the recorded plan (memoised per config)."""

    def run(stack: str = "dev", **overrides: Any) -> Plan:
        key = (stack, tuple(sorted(overrides.items())))
        if key not in _CACHE:
            _CACHE[key] = run_program(stack, overrides)
        return _CACHE[key]

    return run


@pytest.fixture
def plan(plan_for: Callable[..., Plan]) -> Plan:
    """The default configuration (Pulumi.yaml defaults + a project)."""
    return plan_for()

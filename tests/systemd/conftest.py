"""Fixtures for the VM tests: a sandbox per test with fake Google endpoints."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.systemd.sandbox import FakeGoogle, Sandbox, fake_google  # noqa: E402


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    with fake_google() as fake:
        yield fake


@pytest.fixture
def sandbox(tmp_path: Path, google: FakeGoogle) -> Sandbox:
    return Sandbox(tmp_path, google)

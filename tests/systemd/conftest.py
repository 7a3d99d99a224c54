"""Fixtures for the VM tests: a sandbox per test with fake Google endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.systemd.sandbox import FakeGoogle, Sandbox, fake_google


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    with fake_google() as fake:
        yield fake


@pytest.fixture
def sandbox(tmp_path: Path, google: FakeGoogle) -> Sandbox:
    return Sandbox(tmp_path, google)

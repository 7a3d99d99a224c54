"""Fixtures for the SDXL engine tests: the tiny engine, the fake Hub and its content."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engines.sdxl.sdxl_support import FakeHub, serve, tiny_hub_content


@pytest.fixture(scope="session")
def hub_content() -> dict[tuple[str, str, str], bytes]:
    return tiny_hub_content()


@pytest.fixture
def hub(
    hub_content: dict[tuple[str, str, str], bytes],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[FakeHub]:
    """The fake Hub, reached through HF_ENDPOINT like a mirror; no token, no offline flag."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no token file of the host
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TEXT2IMG_MODEL_CACHE", raising=False)
    with serve(FakeHub(dict(hub_content))) as running:
        monkeypatch.setenv("HF_ENDPOINT", running.url)
        yield running

"""The fixtures (the repository root is on pytest's pythonpath, see pyproject.toml)."""

from __future__ import annotations

from tests.gateway.gateway_support import fake, make_gateway, static_dir, upstream

__all__ = ["fake", "make_gateway", "static_dir", "upstream"]

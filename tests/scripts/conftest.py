"""The fixtures (the repository root is on pytest's pythonpath, see pyproject.toml)."""

from __future__ import annotations

from tests.scripts.vm_support import env, vm_module

__all__ = ["env", "vm_module"]

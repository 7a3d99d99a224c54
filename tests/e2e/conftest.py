"""Provides `vm_module` (the repository root is on pytest's pythonpath)."""

from __future__ import annotations

from tests.scripts.vm_support import vm_module

__all__ = ["vm_module"]

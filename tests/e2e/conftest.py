"""Puts the repository root on sys.path (for `tests.fakes`) and provides `vm_module`."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.scripts.vm_support import vm_module  # noqa: E402

__all__ = ["vm_module"]

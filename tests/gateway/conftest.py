"""Puts the repository root on sys.path (for `tests.fakes`) and provides the fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.gateway.gateway_support import fake, make_gateway, static_dir, upstream  # noqa: E402

__all__ = ["fake", "make_gateway", "static_dir", "upstream"]

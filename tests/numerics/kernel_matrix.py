"""Re-run the numeric tests under several CPU kernel choices on one machine.

PyTorch picks its CPU kernels by instruction set at run time, and three knobs force a
choice: `ATEN_CPU_CAPABILITY` (ATen's vectorised loops: default = no SIMD, avx2,
avx512), `ONEDNN_MAX_CPU_ISA` (oneDNN's convolutions: AVX2, AVX512_CORE,
AVX512_CORE_AMX) and `MKL_ENABLE_INSTRUCTIONS` (MKL's GEMM: AVX2, AVX512). A test whose
bound holds on the developer's CPU but not on another (the seed test once failed on an
AVX-512/AMX Xeon) shows up here on whatever CPU CI has. A choice the CPU lacks is
reported as such and skipped; asking for it would silently fall back to what the CPU has.

    .venv/bin/python -m tests.numerics.kernel_matrix      # prints the table
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The tests whose numeric bounds depend on the kernels: a seed's image alone and in a
# batch (service and pipeline). The bfloat16 and fp16-on-CPU tests have loose bounds and
# take minutes under ATen's no-SIMD kernels; run them by hand with --all.
NUMERIC_TESTS = (
    "tests/api/test_api_scheduling.py::test_seed_i_draws_the_same_image_alone_or_in_a_batch",
    "tests/engines/glide/test_pipeline.py::test_seed_is_deterministic_and_position_independent",
)
MORE_TESTS = (
    "tests/engines/glide/test_bf16.py::test_bf16_images_are_close_to_float32_and_valid_pngs",
    "tests/engines/glide/test_half.py::test_half_layout_forward_plumbing_on_cpu_kernels",
)


@dataclass(frozen=True)
class Choice:
    """One kernel choice: the environment it sets and the CPU flags it needs."""

    aten: str  # ATEN_CPU_CAPABILITY
    onednn: str  # ONEDNN_MAX_CPU_ISA
    mkl: str  # MKL_ENABLE_INSTRUCTIONS
    needs: tuple[str, ...] = field(default=())  # /proc/cpuinfo flags

    @property
    def name(self) -> str:
        return f"aten={self.aten} onednn={self.onednn} mkl={self.mkl}"

    def env(self) -> dict[str, str]:
        return {
            "ATEN_CPU_CAPABILITY": self.aten,
            "ONEDNN_MAX_CPU_ISA": self.onednn,
            "MKL_ENABLE_INSTRUCTIONS": self.mkl,
        }


AVX512 = ("avx512f", "avx512bw", "avx512vl", "avx512dq")
CHOICES = (
    Choice("default", "AVX2", "AVX2", ("avx2", "fma")),
    Choice("avx2", "AVX2", "AVX2", ("avx2", "fma")),
    Choice("avx512", "AVX512_CORE", "AVX512", AVX512),
    Choice("avx512", "AVX512_CORE_AMX", "AVX512", (*AVX512, "amx_tile", "amx_bf16")),
)


def cpu_flags() -> set[str]:
    """The CPU's feature flags (empty off Linux/x86, where every choice is skipped)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@dataclass
class Outcome:
    choice: Choice
    ran: bool
    passed: bool = False
    seconds: float = 0.0
    capability: str = ""  # what ATen reports it actually uses
    measurements: list[dict[str, object]] = field(default_factory=list)
    output: str = ""
    reason: str = ""


def locate(test_id: str) -> str:
    """The test id with its file found under tests/ even if its folder moved."""
    path, sep, name = test_id.partition("::")
    if (ROOT / path).exists():
        return test_id
    wanted = Path(path)
    for found in sorted((ROOT / "tests").rglob(wanted.name)):
        if found.parent.name == wanted.parent.name:
            return f"{found.relative_to(ROOT)}{sep}{name}"
    return test_id  # pytest then reports it missing


def run_choice(choice: Choice, tests: tuple[str, ...] = NUMERIC_TESTS,
               timeout_s: float = 600) -> Outcome:  # fmt: skip
    """Run `tests` in a fresh interpreter under `choice`; collects the recorded drifts."""
    missing = [f for f in choice.needs if f not in cpu_flags()]
    if missing:
        return Outcome(choice, ran=False, reason=f"this CPU lacks {', '.join(missing)}")
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "numerics.jsonl"
        env = {**os.environ, **choice.env(), "TEXT2IMG_NUMERICS_LOG": str(log)}
        env.setdefault("OMP_NUM_THREADS", "1")
        probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
        capability = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True,
            timeout=120, check=False,
        ).stdout.strip()  # fmt: skip
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 *map(locate, tests)],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s,
                check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else ""
            return Outcome(choice, ran=True, capability=capability, output=output,
                           reason=f"timed out after {timeout_s:.0f} s")  # fmt: skip
        seconds = time.monotonic() - started
        lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    return Outcome(
        choice,
        ran=True,
        passed=proc.returncode == 0,
        seconds=seconds,
        capability=capability,
        measurements=[json.loads(line) for line in lines],
        output=(proc.stdout + proc.stderr)[-4000:],
    )


def table(outcomes: list[Outcome]) -> str:
    """One line per kernel choice and measurement: what a reviewer records."""
    rows = []
    for o in outcomes:
        if not o.ran:
            rows.append(f"{o.choice.name:<52} skipped: {o.reason}")
            continue
        verdict = "passed" if o.passed else f"FAILED {o.reason}".strip()
        rows.append(f"{o.choice.name:<52} {verdict} in {o.seconds:.0f} s (ATen: {o.capability})")
        for m in o.measurements:
            psnr = "identical" if m["psnr_db"] is None else f"PSNR {m['psnr_db']:.1f} dB"
            rows.append(
                f"    {m['test']}: {m['what']}: mean {m['mean_abs']:.3f}, max {m['max_abs']}, "
                f"{float(m['changed']):.2%} changed, {psnr}"  # type: ignore[arg-type]
            )
    return "\n".join(rows)


def main() -> int:
    tests = NUMERIC_TESTS + (MORE_TESTS if "--all" in sys.argv[1:] else ())
    outcomes = [run_choice(choice, tests) for choice in CHOICES]
    print(table(outcomes))
    return 0 if all(o.passed for o in outcomes if o.ran) else 1


if __name__ == "__main__":
    sys.exit(main())

"""benchmarks/gpu/gpu_check.py, the script a GPU machine runs once, checked on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "benchmarks" / "gpu" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():  # the module itself, for its pure functions
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_dry_run_runs_every_section_and_writes_one_results_file(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GPU_CHECK_TMP": str(tmp_path)}
    run = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["dry_run"] is True
    for section in ("glide", "service", "sdxl"):
        assert "error" not in results[section], results[section]
    assert results["glide"]["within_tolerance"] is True  # fp32 vs fp32: identical
    assert set(results["glide"]["seconds_per_image"]) == {"1", "2"}
    assert results["service"]["status"] == 200
    assert results["service"]["images"] == [[1024, 1024]]
    assert set(results["sdxl"]["batches"]) == {"1", "2"}
    assert results["sdxl"]["swap"]["bytes"] > 100_000  # the tiny UNet file, read back
    assert results["t4_projection"]["estimate"] is True
    # every wheel the GPU machine is told to install is a real, importable distribution
    assert results["requirements_installed"]
    assert all(results["requirements_installed"].values()), results["requirements_installed"]


def test_the_t4_projection_is_a_labelled_range(gpu_check) -> None:
    results = {"sdxl": {"batches": {"4": {"seconds_per_image": 1.0}}},
               "glide": {"seconds_per_image": {"8": 0.5}}}  # fmt: skip
    got = gpu_check.t4_projection("NVIDIA H100 80GB HBM3", results)
    assert got["estimate"] is True
    assert "ESTIMATE" in got["method"]
    low, high = got["sdxl_seconds_per_image"]["4"]
    # H100 vs T4: 3.35 TB/s / 320 GB/s = 10.5x bandwidth, 989 / 65 TFLOP/s = 15.2x compute
    assert low == pytest.approx(3.35e12 / 320e9)
    assert high == pytest.approx(989e12 / 65e12)
    assert got["glide_seconds_per_image"]["8"] == [pytest.approx(low / 2), pytest.approx(high / 2)]
    assert gpu_check.t4_projection("Some GPU", results)["estimate"] is True


def test_without_cuda_and_without_dry_run_it_says_what_to_do() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, str(SCRIPT), "--wheels", "/nonexistent"],
                         capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert run.returncode == 2
    assert "--dry-run" in run.stderr

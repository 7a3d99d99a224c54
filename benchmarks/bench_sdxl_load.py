"""Cold load of a size-true SDXL UNet: our strict loader vs diffusers' own `from_pretrained`.

A random fp16 state dict with the real SDXL UNet's keys and shapes (2,567,463,684 values,
5.1 GB; the architecture from engines/sdxl/configs.py) is written once as a safetensors
file laid out as a diffusers folder (`unet/config.json`,
`unet/diffusion_pytorch_model.fp16.safetensors`). Each load runs in a FRESH PROCESS after
the file's pages were dropped from the page cache (fsync + posix_fadvise(DONTNEED)); the
time is taken inside the child after its imports and includes touching every tensor (so
lazily mapped tensors pay for their reads). Ours: `loading.load_strict` (meta-device
UNet, header check, `safetensors.torch.load_file`, `load_state_dict(assign=True)`).
Baseline: `UNet2DConditionModel.from_pretrained(..., variant="fp16",
torch_dtype=float16)`. "hashed": ours plus what every real load now does (issue 20.4):
the file's sha256 computed on another thread while the loader reads it
(`verify.content_hash`, as `verify.Hashing` runs it). Median of REPEAT; the temp dir
(5.1 GB) is removed at the end. Targets: baseline / ours >= 1.0; the cost of hashing,
hashed / ours, reported as a ratio (on a machine whose disk is slower than one core's
sha256 the hash hides behind the read). BENCH_KINDS=ours,hashed picks the loads to run.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_glide_load import evict  # drop a file's pages from the page cache

REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
THREADS = int(os.environ.get("BENCH_THREADS", "1"))
NEEDED_DISK = 6 * 1000**3
NEEDED_RAM = 12 * 1000**3  # the file's pages + one loaded copy + headroom

CHILD = r"""
import sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
kind, folder = sys.argv[1], sys.argv[2]
from pathlib import Path
from diffusers import UNet2DConditionModel
from text2img.engines.sdxl.loading import load_strict, meta_module
def touch(module):
    return sum(float(t.reshape(-1)[::2048].float().sum()) for t in module.state_dict().values())
t0 = time.perf_counter()
path = Path(folder) / "unet" / "diffusion_pytorch_model.fp16.safetensors"
if kind == "ours":
    unet = load_strict(meta_module("unet"), path, torch.device("cpu"), torch.float16, "UNet")
elif kind == "hashed":
    from concurrent.futures import ThreadPoolExecutor
    from text2img.engines.sdxl.verify import content_hash
    with ThreadPoolExecutor(1) as pool:
        digest = pool.submit(content_hash, path, "0" * 64)
        unet = load_strict(meta_module("unet"), path, torch.device("cpu"), torch.float16, "UNet")
        assert len(digest.result()) == 64
else:
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", variant="fp16",
                                                torch_dtype=torch.float16)
touch(unet)
print(time.perf_counter() - t0)
"""


def available_memory() -> int:
    """MemAvailable from /proc/meminfo (free + reclaimable page cache), in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def write_unet(folder: Path) -> Path:
    """The size-true random UNet, written tensor by tensor's worth of memory at a time."""
    import torch
    from safetensors.torch import save_file

    from text2img.engines.sdxl.configs import SDXL_UNET_CONFIG
    from text2img.engines.sdxl.loading import expected_listing, meta_module

    listing = expected_listing(meta_module("unet"))
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(s, generator=gen) * 0.02).half() for k, s in listing.items()}
    unet_dir = folder / "unet"
    unet_dir.mkdir(parents=True)
    config = {"_class_name": "UNet2DConditionModel", **SDXL_UNET_CONFIG}
    (unet_dir / "config.json").write_text(json.dumps(config))
    path = unet_dir / "diffusion_pytorch_model.fp16.safetensors"
    save_file(state, str(path), metadata={"format": "pt"})
    return path


def main() -> int:
    tmp_root = Path(os.environ.get("BENCH_TMP", tempfile.gettempdir()))
    free = shutil.disk_usage(tmp_root).free
    ram = available_memory()
    if free < NEEDED_DISK or ram < NEEDED_RAM:
        print(f"skipped: needs {NEEDED_DISK / 1e9:.0f} GB disk in {tmp_root} (has "
              f"{free / 1e9:.1f}) and {NEEDED_RAM / 1e9:.0f} GB available RAM "
              f"(has {ram / 1e9:.1f})")  # fmt: skip
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench-sdxl-load-", dir=tmp_root))
    try:
        t0 = time.perf_counter()
        path = write_unet(tmp)
        size = path.stat().st_size
        print(f"size-true SDXL UNet (random fp16): {size / 1e9:.2f} GB, written in "
              f"{time.perf_counter() - t0:.0f} s; {THREADS} thread(s) per child")  # fmt: skip
        kinds = os.environ.get("BENCH_KINDS", "diffusers,ours,hashed").split(",")
        runs: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(REPEAT):
            for kind in runs:
                evict(path)
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, kind, str(tmp), str(THREADS)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                runs[kind].append(float(out.stdout.strip().splitlines()[-1]))
        med = {k: statistics.median(v) for k, v in runs.items()}
        for kind, values in runs.items():
            rate = size / med[kind] / 1e6
            spread = ", ".join(f"{v:.2f}" for v in values)
            print(f"cold {kind:<10} {med[kind]:6.2f} s  {rate:7.0f} MB/s   ({spread})")
        if "diffusers" in med and "ours" in med:
            print(f"diffusers from_pretrained / ours = {med['diffusers'] / med['ours']:.2f}x "
                  "(target >= 1.0x)")  # fmt: skip
        if "hashed" in med and "ours" in med:
            print(f"cold load with the sha256 in parallel / without = "
                  f"{med['hashed'] / med['ours']:.2f}x")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

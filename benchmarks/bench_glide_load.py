"""Cold load of the fp16 safetensors cache against `torch.load` of the original fp32 `.pt`.

A full-size random state dict shaped like GLIDE base (from base_params.json in
tests/data/glide-reference, or GLIDE_REFERENCE_DIR) is saved as upstream ships it (fp32,
`torch.save`), converted once through `text2img.engines.glide.convert` (the real conversion
path), then each file is loaded in a FRESH PROCESS after its pages were evicted from the
page cache (fsync, then posix_fadvise(DONTNEED)); every tensor is touched page by page so
that lazy (mmap) loads pay for their reads too. Time is measured inside the child, after
`import torch`. Reports medians of REPEAT runs and the ratio. Temporary files are removed at
the end.

Then, IN ONE PROCESS, the cost of verifying the cache on load (issue 13 item 4): our
`load_state_dict` (sha256 per 16 MiB segment of a copy-on-write mapping of the file,
hashed on `files.hash_threads()` = min(4, cores) threads, tensors viewing it) against
loading the same file without any check (`safe_open` + `get_tensor`, what the loader did
before), cold and warm, alternating; and plain one-thread sha256 of the file for scale.
Thread policy: torch uses 1 thread (`torch.set_num_threads(1)`) in that part; hashing
uses min(4, cores) threads. `BENCH_PART=verify` runs only that part.
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

REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
REFERENCE = Path(
    os.environ.get("GLIDE_REFERENCE_DIR")
    or Path(__file__).resolve().parents[1] / "tests" / "data" / "glide-reference"
)

CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(2)
kind, path, listing = sys.argv[1], sys.argv[2], sys.argv[3]
def touch(sd):
    # read one element per 512 (>= one per 4 KiB page for fp16 and fp32)
    return sum(float(t.reshape(-1)[::512].float().sum()) for t in sd.values())
t0 = time.perf_counter()
if kind == "pt":
    sd = torch.load(path, map_location="cpu", weights_only=True)
elif kind == "pt-mmap":
    sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
else:
    from pathlib import Path
    from text2img.engines.glide.convert import load_state_dict
    expected = {k: tuple(v) for k, v in json.loads(open(listing).read())["shapes"].items()}
    sd = load_state_dict(Path(path), "base", expected)
touch(sd)
print(time.perf_counter() - t0)
"""


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (works for clean pages, no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def child(kind: str, target: Path, listing: Path, files: list[Path], cold: bool) -> float:
    if cold:
        for f in files:
            evict(f)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(target), str(listing)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def verify_cost(cache_dir: Path, shapes: dict[str, list[int]]) -> int:
    """Verified load / unverified load of the same fp16 cache file, in this process."""
    import hashlib

    import torch
    from safetensors import safe_open

    from text2img.engines.fetch.disk import CHUNK, hash_threads
    from text2img.engines.glide.convert import load_state_dict

    torch.set_num_threads(1)
    cached = cache_dir / "base.fp16.safetensors"
    expected = {k: tuple(v) for k, v in shapes.items()}

    def unverified() -> dict[str, torch.Tensor]:
        with safe_open(str(cached), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118

    def verified() -> dict[str, torch.Tensor]:
        return load_state_dict(cache_dir, "base", expected)

    def hash_only() -> dict[str, torch.Tensor]:
        h = hashlib.sha256()
        with cached.open("rb") as f:
            while chunk := f.read(16 * CHUNK):
                h.update(chunk)
        return {}

    def touch(sd: dict[str, torch.Tensor]) -> float:
        return sum(float(t.reshape(-1)[::512].float().sum()) for t in sd.values())

    runs: dict[str, list[float]] = {}
    for cold in (True, False):
        temp = "cold" if cold else "warm"
        for _ in range(REPEAT):
            for name, load in (("unverified", unverified), ("verified", verified),
                               ("sha256, 1 thread", hash_only)):  # fmt: skip
                if cold:
                    evict(cached)
                t0 = time.perf_counter()
                touch(load())
                runs.setdefault(f"{temp} {name}", []).append(time.perf_counter() - t0)
    size = cached.stat().st_size
    threads = hash_threads()
    print(f"verify on load, one process, {size / 1e9:.2f} GB fp16 cache, torch 1 thread, "
          f"{threads} hashing threads, {os.cpu_count()} cores, median of {REPEAT}:")  # fmt: skip
    med = {k: statistics.median(v) for k, v in runs.items()}
    for key, times in runs.items():
        spread = ", ".join(f"{t:.2f}" for t in times)
        print(f"  {key:<18} {med[key]:6.2f} s   ({spread})")
    for temp in ("cold", "warm"):
        ratio = med[f"{temp} verified"] / med[f"{temp} unverified"]
        extra = med[f"{temp} verified"] - med[f"{temp} unverified"]
        print(f"  {temp}: verified / unverified load = {ratio:.2f}x ({extra:+.2f} s)")
    return 0


def main() -> int:
    import torch

    torch.set_num_threads(2)
    listing = REFERENCE / "base_params.json"
    if not listing.exists():
        print(f"skipped: no {listing} (set GLIDE_REFERENCE_DIR)")
        return 0
    shapes = json.loads(listing.read_text())["shapes"]
    tmp = Path(tempfile.mkdtemp(prefix="bench-glide-load-"))
    try:
        gen = torch.Generator().manual_seed(0)
        sd = {k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}
        n = sum(v.numel() for v in sd.values())
        pt = tmp / "base.pt"
        torch.save(sd, pt)
        del sd
        from text2img.engines.fetch.disk import sha256_file
        from text2img.engines.glide import records as glide_records
        from text2img.engines.glide.convert import load_state_dict

        # stands in for `text2img download`, the only thing that may vouch for a .pt
        glide_records.record(tmp, "base.pt", sha256_file(pt), "download")
        t0 = time.perf_counter()
        load_state_dict(tmp, "base", {k: tuple(v) for k, v in shapes.items()})  # converts once
        convert_s = time.perf_counter() - t0
        cached = tmp / "base.fp16.safetensors"
        files = [pt, cached]
        print(f"base-shaped state dict: {len(shapes)} tensors, {n:,} values")
        print(f".pt (fp32, torch.save): {pt.stat().st_size / 1e9:.2f} GB")
        print(f"cache (fp16 safetensors): {cached.stat().st_size / 1e9:.2f} GB")
        print(f"one-time conversion: {convert_s:.1f} s")
        print(f"cold = fresh process + posix_fadvise(DONTNEED) on both files; median of {REPEAT}")
        if os.environ.get("BENCH_PART") == "verify":
            return verify_cost(tmp, shapes)
        results: dict[str, list[float]] = {}
        for cold in (True, False):
            for _ in range(REPEAT):
                kinds = (("pt", pt), ("pt-mmap", pt), ("cache", tmp))
                for kind, target in kinds if cold else (kinds[0], kinds[2]):
                    key = f"{'cold' if cold else 'warm'} {kind}"
                    results.setdefault(key, []).append(child(kind, target, listing, files, cold))
        med = {k: statistics.median(v) for k, v in results.items()}
        for key, runs in results.items():
            spread = ", ".join(f"{r:.2f}" for r in runs)
            print(f"{key:<14} {med[key]:6.2f} s   ({spread})")
        for temp in ("cold", "warm"):
            base, ours = med[f"{temp} pt"], med[f"{temp} cache"]
            print(f"{temp}: torch.load(.pt) / fp16 cache load = {base / ours:.2f}x")
        mmap_ratio = med["cold pt-mmap"] / med["cold cache"]
        print(f"cold: torch.load(.pt, mmap=True) / fp16 cache load = {mmap_ratio:.2f}x")
        verify_cost(tmp, shapes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One run on a GPU machine gives our first real figures (issue 21, "A GPU check").

    python benchmarks/gpu/gpu_check.py [--out FILE]     # on a CUDA machine, < 8 min on an H100
    python benchmarks/gpu/gpu_check.py --dry-run        # on a CPU, in CI: checks the script

The machine needs PyTorch with CUDA and nothing else: the other packages are installed
offline from benchmarks/gpu/wheels (README.md says how to fill it). Sections, each timed,
each recorded even when it fails (the run goes on):

1. glide: the released GLIDE architecture with seeded random weights, CUDA fp16 against
   CUDA fp32 on the same inputs and the same fp16-rounded weights (images must agree
   within TOLERANCE), then seconds per 256x256 image at batch 1, 4 and 8 (fp16);
2. sdxl: SDXL at full size from the real configs (engines/sdxl/configs.py), random
   weights, the process capped at a T4's memory (`set_per_process_memory_fraction`):
   seconds per 1024x1024 image at 4 steps for batch 1, 2 and 4, peak memory each, and a
   step-change swap (a 5.1 GB UNet file read tensor by tensor into the loaded UNet while
   its sha256 is computed, as the engine does) timed cold;
3. service: `tiny-sdxl` on CUDA through the real HTTP app (uvicorn on 127.0.0.1);
4. t4_projection: the figures scaled to a T4 by peak fp16 FLOP/s and memory bandwidth
   ratios: an ESTIMATE, labelled as one.

`--dry-run` runs every section on the CPU with tiny models and small sizes (no memory cap,
no install), so CI proves the script itself works; its figures mean nothing.
Writes one JSON file (default benchmarks/gpu/results-<gpu>.json) and prints a summary.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
T4_MEMORY_GIB = 15.0  # a T4 has 16 GB; ~15 GiB usable after the CUDA context
# GLIDE fp16 vs fp32 with identical (fp16-rounded) weights and inputs: the 256x256 images
# may differ by rounding only. Stated in docs/models.md: mean |difference| <= 2 levels of
# 255 and at most 1% of pixels differing by more than 16 levels.
TOLERANCE = {"mean_levels": 2.0, "share_over_16": 0.01}
# Peak dense fp16 tensor FLOP/s and memory bandwidth (vendor data sheets), for the
# projection: T4 65 TFLOP/s, 320 GB/s.
PEAKS = {
    "T4": (65e12, 320e9),
    "A100": (312e12, 2.0e12),
    "L4": (121e12, 300e9),
    "H100": (989e12, 3.35e12),
    "H200": (989e12, 4.8e12),
}


def requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def install(wheels: Path) -> None:
    """pip install, offline, what requirements.txt lists and is not installed yet."""
    missing = [req for req in requirements() if not _installed(req)]
    if not missing:
        return
    if not wheels.is_dir():
        raise SystemExit(f"{len(missing)} packages missing and no {wheels}: see README.md")
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels)]
    subprocess.run([*cmd, *missing], check=True)


def _installed(requirement: str) -> bool:
    name = re.split(r"[<>=!\[ ]", requirement, maxsplit=1)[0]
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def timed(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


# --- 1. GLIDE fp16 vs fp32 ------------------------------------------------------------


def glide(dev: Any, dry: bool, sync: Callable[[], None]) -> dict[str, Any]:
    import numpy as np
    import torch

    from text2img.engines.base import ImageRequest
    from text2img.engines.glide.config import BASE_OPTIONS, UPSAMPLE_OPTIONS
    from text2img.engines.glide.engine import GlideEngine
    from text2img.engines.glide.pipeline import Pipeline
    from text2img.engines.glide.spec import TINY
    from text2img.engines.glide.tiny import TINY_BASE_OPTIONS, TINY_UPSAMPLE_OPTIONS, randomize_
    from text2img.engines.glide.tokenizer import ByteTokenizer
    from text2img.engines.glide.unet import build_model

    options = (
        (TINY_BASE_OPTIONS, TINY_UPSAMPLE_OPTIONS) if dry else (BASE_OPTIONS, UPSAMPLE_OPTIONS)
    )
    extra = {"n_vocab": 257, "dropout": 0.0}

    def engine(half: bool) -> GlideEngine:
        models = []
        for seed, opts in ((1, options[0]), (2, options[1])):
            model = randomize_(build_model({**opts, **extra}), seed).float()
            model.convert_to_fp16()  # the fp16-rounded layers
            if not half:  # the same rounded values, computed in fp32
                model = model.float()
                model.dtype = torch.float32
            models.append(model.to(dev).eval().requires_grad_(False))
        dtype = torch.float16 if half else torch.float32
        pipe = Pipeline("gpu-check", dev, models[0], models[1], ByteTokenizer(),
                        max_batch=8, random_weights=True, dtype=dtype)  # fmt: skip
        return GlideEngine(TINY, pipe)

    size = 64 if dry else 256
    steps = (2, 2) if dry else (25, 15)
    settings = TINY.settings(size=f"{size}x{size}", steps=steps[0], upsample_steps=steps[1])
    reqs = [ImageRequest("a teddy bear swimming the butterfly stroke", s) for s in range(2)]
    half_ok = dev.type == "cuda"
    full = engine(False)
    ref = [np.asarray(g.image, dtype=np.int16) for g in full.generate(reqs, settings)]
    del full
    fast = engine(half_ok)
    got = [np.asarray(g.image, dtype=np.int16) for g in fast.generate(reqs, settings)]
    diff = np.abs(np.stack(got) - np.stack(ref))
    out: dict[str, Any] = {
        "compared": "fp16 vs fp32" if half_ok else "fp32 vs fp32 (no CUDA: plumbing only)",
        "mean_levels": float(diff.mean()),
        "share_over_16": float((diff > 16).mean()),
        "tolerance": TOLERANCE,
    }
    out["within_tolerance"] = all(out[k] <= v for k, v in TOLERANCE.items())
    per_image = {}
    for batch in (1, 2) if dry else (1, 4, 8):
        many = [ImageRequest("a red fox", s) for s in range(batch)]

        def draw(m: list[ImageRequest] = many) -> None:
            fast.generate(m, settings)

        seconds = timed(draw, sync)
        per_image[str(batch)] = seconds / batch
    out["seconds_per_image"] = per_image
    out["size"] = f"{size}x{size}, {steps[0]}+{steps[1]} steps"
    return out


# --- 2. SDXL at full size ---------------------------------------------------------------


def random_(module: Any, seed: int) -> Any:
    """Fill every parameter in place, on its device: norms ~1, biases small, weights
    z / sqrt(fan_in); enough to run at full size without a 2.6B-value CPU init."""
    import torch

    gen = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            z = torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * z)
            elif name.endswith("bias") or p.dim() < 2:
                p.copy_(0.02 * z)
            else:
                p.copy_(z / max(1, p[0].numel()) ** 0.5)
    return module


def sdxl_parts(dev: Any, dtype: Any, dry: bool) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    from text2img.engines.sdxl import tiny
    from text2img.engines.sdxl.configs import SDXL_UNET_CONFIG, SDXL_VAE_CONFIG

    if dry:
        parts = tiny.build_components(dtype)
        return {k: v.to(dev) if isinstance(v, torch.nn.Module) else v for k, v in parts.items()}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(str(tiny.write_tokenizer(Path(tmp))))
    # SDXL base's two text encoders (their config.json: CLIP ViT-L and OpenCLIP bigG)
    te1 = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                         num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu",
                         projection_dim=768)  # fmt: skip
    te2 = CLIPTextConfig(vocab_size=49408, hidden_size=1280, intermediate_size=5120,
                         num_hidden_layers=32, num_attention_heads=20, hidden_act="gelu",
                         projection_dim=1280)  # fmt: skip
    built: dict[str, Any] = {}
    makers: dict[str, Callable[[], Any]] = {
        "unet": lambda: UNet2DConditionModel.from_config(dict(SDXL_UNET_CONFIG)),
        "vae": lambda: AutoencoderKL.from_config(dict(SDXL_VAE_CONFIG)),
        "text_encoder": lambda: CLIPTextModel(te1),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(te2),
    }
    for seed, (name, make) in enumerate(makers.items()):
        with torch.device("meta"):
            module = make()
        module = module.to_empty(device=dev).to(dtype)
        built[name] = random_(module, seed).eval().requires_grad_(False)
    built["tokenizer"] = tokenizer
    built["tokenizer_2"] = tokenizer
    built["scheduler"] = EulerDiscreteScheduler(**tiny.SCHEDULER)
    return built


def sdxl(dev: Any, dry: bool, sync: Callable[[], None]) -> dict[str, Any]:
    import torch

    from text2img.engines.sdxl.engine import _pipeline

    out: dict[str, Any] = {}
    if dev.type == "cuda":
        total = torch.cuda.get_device_properties(dev).total_memory
        fraction = min(1.0, T4_MEMORY_GIB * 2**30 / total)
        torch.cuda.set_per_process_memory_fraction(fraction, dev)
        out["memory_cap_gib"] = round(fraction * total / 2**30, 2)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    pipe = _pipeline(sdxl_parts(dev, dtype, dry))
    if dev.type == "cuda":
        pipe.vae.enable_slicing()  # as engine.load does on CUDA
    out["build_seconds"] = time.perf_counter() - t0
    size = 256 if dry else 1024
    runs = {}
    for batch in (1, 2) if dry else (1, 2, 4):
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)

        def draw(n: int = batch) -> None:
            pipe(prompt=["a lighthouse at dusk"] * n, height=size, width=size,
                 num_inference_steps=4, guidance_scale=0.0, output_type="pt")  # fmt: skip

        draw()  # warm-up (kernels, allocator)
        seconds = timed(draw, sync)
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        runs[str(batch)] = {"seconds_per_image": seconds / batch, "peak_gib": peak}
    out["batches"] = runs
    out["size"] = f"{size}x{size}, 4 steps, {str(dtype).removeprefix('torch.')}"
    out["swap"] = swap(pipe.unet, dry)
    return out


def swap(unet: Any, dry: bool) -> dict[str, Any]:
    """A step change as the engine does it: the UNet file read tensor by tensor into the
    loaded UNet (`loading.swap_into`) while a second thread hashes it (`verify`)."""
    from concurrent.futures import ThreadPoolExecutor

    from safetensors.torch import save_file

    from text2img.engines.sdxl.loading import swap_into
    from text2img.engines.sdxl.verify import content_hash

    with tempfile.TemporaryDirectory(dir=os.environ.get("GPU_CHECK_TMP")) as tmp:
        path = Path(tmp) / "unet.safetensors"
        state = {k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()}
        save_file(state, str(path))
        del state
        size = path.stat().st_size
        _evict(path)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(1) as pool:
            digest = pool.submit(content_hash, path, "0" * 64)
            swap_into(unet, path)
            digest.result()
        seconds = time.perf_counter() - t0
    return {"bytes": size, "seconds_cold": seconds, "gb_per_s": size / seconds / 1e9}


def _evict(path: Path) -> None:
    """Drop the file's pages from the page cache (as a disk read after a reboot)."""
    with path.open("rb") as f:
        os.fsync(f.fileno())
        with contextlib.suppress(AttributeError, OSError):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


# --- 3. the service end to end ------------------------------------------------------------


def service(dev: Any, dry: bool, sync: Callable[[], None]) -> dict[str, Any]:
    import base64
    import io
    import threading

    import httpx
    import uvicorn
    from PIL import Image

    from text2img.api.app import create_app
    from text2img.engines.registry import load_engine
    from text2img.settings import Settings

    token = "gpu-check-token-0123456789abcdef"
    settings = Settings(_env_file=None, model="tiny-sdxl", translation="off",  # type: ignore[call-arg]
                        api_token=token, device=dev.type)  # fmt: skip
    app = create_app(settings, engine=load_engine("tiny-sdxl", device=dev.type))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        n = 1 if dry else 2
        body = {"prompt": "a lighthouse", "n": n, "size": "1024x1024", "steps": 4}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600,
                          headers={"Authorization": f"Bearer {token}"}) as client:  # fmt: skip
            client.post("/v1/images/generations", json=body)  # warm-up
            t0 = time.perf_counter()
            r = client.post("/v1/images/generations", json=body)
            seconds = time.perf_counter() - t0
            models = client.get("/v1/models").json()
        r.raise_for_status()
        images = [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))) for d in r.json()["data"]]
        return {
            "status": r.status_code,
            "device": models["data"][0].get("device", dev.type),
            "images": [list(i.size) for i in images],
            "seconds_per_request": seconds,
            "images_per_request": n,
        }
    finally:
        server.should_exit = True
        thread.join(30)


# --- 4. T4 projection ---------------------------------------------------------------------


def t4_projection(gpu: str, results: dict[str, Any]) -> dict[str, Any]:
    key = next((k for k in PEAKS if k in gpu.upper()), None)
    if key is None:
        return {"estimate": True, "note": f"no peak figures for {gpu!r}: no projection"}
    flops, bandwidth = PEAKS[key]
    t4_flops, t4_bw = PEAKS["T4"]
    low, high = sorted((bandwidth / t4_bw, flops / t4_flops))
    out: dict[str, Any] = {
        "estimate": True,
        "method": f"{key} figures x ({key}/T4 peak bandwidth .. peak fp16 FLOP/s) = "
        f"x{low:.1f} .. x{high:.1f}; real T4 efficiency differs: an ESTIMATE, not a measurement",
    }
    sdxl_runs = results.get("sdxl", {}).get("batches", {})
    out["sdxl_seconds_per_image"] = {
        b: [r["seconds_per_image"] * low, r["seconds_per_image"] * high]
        for b, r in sdxl_runs.items()
    }
    glide_runs = results.get("glide", {}).get("seconds_per_image", {})
    out["glide_seconds_per_image"] = {b: [s * low, s * high] for b, s in glide_runs.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny models: check the script")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--wheels", type=Path, default=HERE / "wheels")
    args = ap.parse_args(argv)
    if not args.dry_run:
        install(args.wheels)
    sys.path.insert(0, str(ROOT / "service"))
    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("no CUDA device: run with --dry-run to check the script on a CPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda" if cuda else "cpu")
    gpu = torch.cuda.get_device_name(dev) if cuda else "cpu (dry run)"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    results: dict[str, Any] = {
        "gpu": gpu,
        "dry_run": args.dry_run,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "requirements_installed": {r: _installed(r) for r in requirements()},
    }
    failed = []
    for name, section in (("glide", glide), ("service", service), ("sdxl", sdxl)):
        t0 = time.perf_counter()
        try:
            results[name] = section(dev, args.dry_run, sync)
        except Exception as exc:  # record and go on: one run must give every figure it can
            failed.append(name)
            results[name] = {"error": f"{type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc()[-3000:]}  # fmt: skip
        results[name]["section_seconds"] = time.perf_counter() - t0
        print(f"{name}: {json.dumps(results[name], default=str)[:600]}", flush=True)
    results["t4_projection"] = t4_projection(gpu, results)
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    out = args.out or HERE / f"results-{slug}.json"
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"wrote {out}; failed sections: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

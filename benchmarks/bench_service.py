"""Service benchmarks (issue 4), both through the real HTTP server (uvicorn on 127.0.0.1):

1. batching: 4 concurrent single-image requests vs one request alone (target <= 1.6x);
2. overhead: end-to-end time of one request vs `pipeline.generate` alone in the same
   process (HTTP, queue, PNG encoding, base64; target <= 5% of model time).

Models have random weights (no download): `mid` (default) is a mid-size GLIDE-shaped
pair, `glide-arch` the released architecture itself (for a GPU), `tiny` the smoke model.

    python benchmarks/bench_service.py [--config mid|glide-arch|tiny] [--device cpu|cuda]
        [--size 64|256] [--steps N] [--repeats N] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

import httpx
import torch
import uvicorn

from text2img.api.app import create_app
from text2img.api.encoding import encode_image
from text2img.engines.base import Engine, ImageRequest
from text2img.engines.glide.config import BASE_OPTIONS, UPSAMPLE_OPTIONS
from text2img.engines.glide.engine import GlideEngine
from text2img.engines.glide.pipeline import Pipeline
from text2img.engines.glide.spec import TINY
from text2img.engines.glide.tiny import randomize_
from text2img.engines.glide.tokenizer import ByteTokenizer
from text2img.engines.glide.unet import build_model
from text2img.engines.registry import load_engine
from text2img.settings import Settings

TOKEN = "bench-token-0123456789abcdef"
# GLIDE's layout (channel multipliers, attention resolutions, text transformer) at about
# 1/6 of its width and 1/4 of its text transformer: between `tiny` and the real model.
MID = {"num_channels": 32, "num_res_blocks": 2, "xf_width": 128, "xf_layers": 4, "xf_heads": 4,
       "text_ctx": 64, "num_head_channels": 32, "n_vocab": 257, "dropout": 0.0}  # fmt: skip


def build_engine(config: str, device: str) -> Engine:
    """The tiny engine, or a GLIDE-layout pair with random weights behind the same spec."""
    if config == "tiny":
        return load_engine("tiny", device=device)
    extra = MID if config == "mid" else {"n_vocab": 257, "dropout": 0.0}
    dev = torch.device(device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    models = []
    for seed, options in ((1, BASE_OPTIONS), (2, UPSAMPLE_OPTIONS)):
        model = randomize_(build_model({**options, **extra}), seed).float()
        if dtype == torch.float16:
            model.convert_to_fp16()  # type: ignore[operator]
        models.append(model.to(dev).eval().requires_grad_(False))
    pipeline = Pipeline(config, dev, models[0], models[1], ByteTokenizer(),  # type: ignore[arg-type]
                        max_batch=8, random_weights=True, dtype=dtype)  # fmt: skip
    return GlideEngine(TINY, pipeline)


class Server:
    def __init__(self, engine: Engine) -> None:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            model="tiny",
            translation="off",
            api_token=TOKEN,
            queue_limit=64,
            request_timeout_s=3600,
        )
        self.app = create_app(settings, engine=engine)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=0,
                                                    log_level="warning"))  # fmt: skip
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        assert self.app.state.service.wait_loaded(60)
        return f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def batches(app: Any) -> float:
    registry = app.state.service.metrics.registry
    return float(registry.get_sample_value("text2img_batch_images_count") or 0.0)


def batch_seconds(app: Any) -> float:
    """Total seconds the worker spent inside `pipeline.generate` so far."""
    registry = app.state.service.metrics.registry
    return float(registry.get_sample_value("text2img_batch_duration_seconds_sum") or 0.0)


async def post(client: httpx.AsyncClient, body: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    r = await client.post("/v1/images/generations", json=body)
    r.raise_for_status()
    return time.perf_counter() - t0


async def measure(url: str, body: dict[str, Any], concurrent: int) -> float:
    """Wall time until `concurrent` single-image requests sent at once all returned."""
    async with httpx.AsyncClient(base_url=url, timeout=3600,
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as c:  # fmt: skip
        t0 = time.perf_counter()
        await asyncio.gather(*(post(c, {**body, "seed": i}) for i in range(concurrent)))
        return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=["mid", "glide-arch", "tiny"], default="mid")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, choices=[64, 256], default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--upsample-steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    engine = build_engine(args.config, args.device)
    settings = TINY.settings(size=f"{args.size}x{args.size}", steps=args.steps,
                             upsample_steps=args.upsample_steps)  # fmt: skip
    body = {"prompt": "a teddy bear swimming the butterfly stroke", "n": 1,
            "size": f"{args.size}x{args.size}", "steps": args.steps,
            "upsample_steps": args.upsample_steps}  # fmt: skip
    req = [ImageRequest(str(body["prompt"]), 0)]
    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} threads, device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else "")
    )
    print(
        f"config: {args.config}, size {args.size}, steps {args.steps}"
        + (f"+{args.upsample_steps}" if args.size == 256 else "")
        + f", repeats {args.repeats} (medians)"
    )

    image = engine.generate(req, settings)[0].image  # warm-up
    png_s = statistics.median(_timed(lambda: encode_image(image)) for _ in range(5))
    server = Server(engine)
    with server as url:
        asyncio.run(measure(url, body, 1))  # warm-up through HTTP
        ones, fours, overheads, models = [], [], [], []
        sampling_batches: list[float] = []
        for _ in range(args.repeats):  # interleaved, so load drift hits both alike
            before = batch_seconds(server.app)
            ones.append(asyncio.run(measure(url, body, 1)))
            inside = batch_seconds(server.app) - before
            overheads.append((ones[-1] - inside) / inside * 100)
            models.append(inside)
            before_batches = batches(server.app)
            fours.append(asyncio.run(measure(url, body, 4)))
            sampling_batches.append(batches(server.app) - before_batches)
        one, four = statistics.median(ones), statistics.median(fours)
    overhead = statistics.median(overheads)
    model_s = statistics.median(models)
    print(f"model (generate), 1 image:     {model_s * 1000:9.1f} ms")
    print(f"PNG encoding, 1 image:         {png_s * 1000:9.1f} ms")
    print(
        f"service, 1 request:            {one * 1000:9.1f} ms  (overhead {overhead:+.1f}% "
        "of the model time of that request; target <= 5%)"
    )
    print(
        f"service, 4 concurrent:         {four * 1000:9.1f} ms  (ratio {four / one:.2f}x "
        f"of one; target <= 1.6x; 4.00x = no batching gain; sampling batches per "
        f"round: {', '.join(str(int(b)) for b in sampling_batches)})"
    )
    return 0


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    raise SystemExit(main())

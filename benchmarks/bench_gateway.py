"""What the Cloud Run gateway's proxy costs: the same requests direct to a stand-in
service and through the gateway (`python -m text2img.gateway`), each in its own process.

Reports ratios gateway / direct (baseline: direct, same run): a 20 MiB image body, a
small JSON request, and the time to the first server-sent event. Run:
`python benchmarks/run.py gateway`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOKEN = "bench-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BIG = 20 * 1024 * 1024
CHUNK = bytes(range(256)) * 4096  # 1 MiB


def upstream_app() -> object:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def readyz(request: Request) -> Response:
        return JSONResponse({"ready": True, "model": "tiny"})

    async def big(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(BIG // len(CHUNK)):
                yield CHUNK

        headers = {"Content-Length": str(BIG)}
        return StreamingResponse(body(), media_type="image/png", headers=headers)

    async def small(request: Request) -> Response:
        return JSONResponse({"ok": True, "size": len(await request.body())})

    async def sse(request: Request) -> Response:
        async def events() -> AsyncIterator[bytes]:
            yield b'event: progress\ndata: {"fraction": 0.5}\n\n'
            await asyncio.sleep(0.2)
            yield b"event: done\ndata: {}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    routes = [
        Route("/readyz", readyz),
        Route("/big", big),
        Route("/small", small, methods=["POST"]),
        Route("/sse", sse),
    ]
    return Starlette(routes=routes)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url + "/healthz", timeout=1)
            return
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{url} did not start") from None
            time.sleep(0.2)


def measure(base: str, runs: int) -> dict[str, float]:
    with httpx.Client(headers=AUTH, timeout=60) as client:
        big, small, first = [], [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            with client.stream("GET", base + "/big") as resp:
                size = sum(len(c) for c in resp.iter_raw())
            big.append(time.perf_counter() - t0)
            assert size == BIG, size
        for _ in range(runs * 40):
            t0 = time.perf_counter()
            client.post(base + "/small", content=b"x" * 200).raise_for_status()
            small.append(time.perf_counter() - t0)
        for _ in range(runs * 4):
            t0 = time.perf_counter()
            with client.stream("GET", base + "/sse") as resp:
                next(resp.iter_lines())
                first.append(time.perf_counter() - t0)
    return {
        "big": statistics.median(big),
        "small": statistics.median(small),
        "first_event": statistics.median(first),
    }


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--upstream":
        import uvicorn

        uvicorn.run(upstream_app(), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")  # type: ignore[arg-type]
        return 0
    from tests.fakes.compute import FakeCompute

    up_port, gw_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEXT2IMG_")}
    with FakeCompute() as fake:
        fake.add_instance("vm", status="RUNNING")
        upstream = subprocess.Popen([sys.executable, __file__, "--upstream", str(up_port)])
        gateway = subprocess.Popen(
            [sys.executable, "-m", "text2img.gateway"],
            env={
                **env,
                "PORT": str(gw_port),
                "HOST": "127.0.0.1",
                "TEXT2IMG_API_TOKEN": TOKEN,
                "TEXT2IMG_GATEWAY_PROJECT": fake.project,
                "TEXT2IMG_GATEWAY_ZONE": fake.zone,
                "TEXT2IMG_GATEWAY_INSTANCE": "vm",
                "TEXT2IMG_GATEWAY_COMPUTE_ENDPOINT": fake.endpoint,
                "TEXT2IMG_GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{up_port}",
            },
            stdout=subprocess.DEVNULL,
        )
        try:
            direct, through = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}"
            deadline = time.monotonic() + 60
            while True:  # the stand-in has no /healthz: wait for /readyz
                try:
                    httpx.get(direct + "/readyz", timeout=1).raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise SystemExit("the stand-in service did not start") from None
                    time.sleep(0.2)
            wait_up(through, gateway)
            measure(direct, 1), measure(through, 1)  # warm up
            base = measure(direct, 5)
            gw = measure(through, 5)
        finally:
            for proc in (gateway, upstream):
                proc.terminate()
                proc.wait(timeout=15)
    print(f"{'request':<28}{'direct':>12}{'gateway':>12}{'ratio':>8}")
    rows = [
        ("20 MiB body (s)", "big", 1.0),
        ("small POST (ms)", "small", 1000.0),
        ("first SSE event (ms)", "first_event", 1000.0),
    ]
    for label, key, scale in rows:
        ratio = gw[key] / base[key]
        print(f"{label:<28}{base[key] * scale:>12.2f}{gw[key] * scale:>12.2f}{ratio:>8.2f}")
    print(f"20 MiB throughput: direct {BIG / base['big'] / 2**20:.0f} MiB/s, "
          f"gateway {BIG / gw['big'] / 2**20:.0f} MiB/s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

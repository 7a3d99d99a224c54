"""The GPU queue with the real tiny engine: bounded queue, batching, seeds, cancellation,
time limits, out-of-memory retries, a worker that never dies, clean shutdown."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from api_support import AUTH, FAST, FAST64, make_settings
from fastapi import FastAPI

from tests.fakes.engine import EngineDouble
from tests.numerics.image_compare import drift, record
from text2img.api.app import create_app
from text2img.engines.base import Engine, EngineSettings, ImageRequest, OutOfMemory

# Long enough that only cancellation or the time limit ends it (minutes on the tiny model).
HEAVY = {"size": "256x256", "steps": 250, "upsample_steps": 250}


class FaultyGPU(EngineDouble):
    """The real tiny engine behind a fault injector: raises out-of-memory for
    batches above `oom_above` images, or `fail_next` once. Everything else is real."""

    def __init__(self, inner: Engine, oom_above: int = 64) -> None:
        super().__init__(inner)
        self.oom_above = oom_above
        self.fail_next: Exception | None = None
        self.calls: list[int] = []

    def generate(self, requests: Sequence[ImageRequest], settings: EngineSettings,
                 **kwargs: Any) -> list[Any]:  # fmt: skip
        self.calls.append(len(requests))
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        if len(requests) > self.oom_above:
            raise OutOfMemory("CUDA out of memory. Tried to allocate 2 GiB")
        return self.inner.generate(requests, settings, **kwargs)


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("text2img-", "uvicorn-test"))]


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan, called in-process (same event loop as the test)."""
    async with app.router.lifespan_context(app):
        assert await asyncio.to_thread(app.state.service.wait_loaded, 30)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service",
                                     headers=AUTH, timeout=120) as client:  # fmt: skip
            yield client


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_16_clients_against_a_queue_of_4(tiny_engine: Engine) -> None:
    before = set(threading.enumerate())
    app = create_app(make_settings(queue_limit=4), engine=tiny_engine)
    async with running(app) as client:

        async def one(i: int) -> httpx.Response:
            body = {"prompt": f"a cat number {i}", "n": 1, "seed": i, **FAST}
            return await client.post("/v1/images/generations", json=body)

        responses = await asyncio.gather(*(one(i) for i in range(16)))
        codes = sorted(r.status_code for r in responses)
        assert set(codes) <= {200, 429}, codes
        assert codes.count(429) >= 1, "16 at once must overflow a queue of 4"
        assert codes.count(200) >= 4  # at least the 4 the queue holds
        for r in responses:
            if r.status_code == 200:
                png = base64.b64decode(r.json()["data"][0]["b64_json"])
                assert png.startswith(b"\x89PNG")
            else:
                error = r.json()["error"]
                assert error["code"] == "queue_full"
                assert int(r.headers["Retry-After"]) >= 1
        status = (await client.get("/v1/status")).json()
        assert status["queue_depth"] == 0
        assert status["jobs_in_flight"] == 0
        metrics = (await client.get("/metrics")).text
        assert metric(metrics, "text2img_queue_rejections_total") == codes.count(429)
        assert metric(metrics, "text2img_images_generated_total") == codes.count(200)
    # nothing left behind: no tasks besides this test, no worker threads
    assert asyncio.all_tasks() == {asyncio.current_task()}
    leaked = [t for t in set(threading.enumerate()) - before if t.name.startswith("text2img")]
    assert leaked == []


@pytest.mark.slow
async def test_compatible_requests_share_a_sampling_batch(tiny_engine: Engine) -> None:
    gpu = FaultyGPU(tiny_engine)
    app = create_app(make_settings(), engine=gpu)  # type: ignore[arg-type]
    async with running(app) as client:
        bodies = [{"prompt": f"dog {i}", "n": 1, **FAST64} for i in range(5)]
        bodies.append({"prompt": "other", "n": 1, **FAST64, "guidance_scale": 7.0})
        responses = await asyncio.gather(
            *(client.post("/v1/images/generations", json=b) for b in bodies)
        )
    assert [r.status_code for r in responses] == [200] * 6
    # 6 images, the guidance 7 one never shares a batch with guidance 3 ones
    assert sum(gpu.calls) == 6
    assert len(gpu.calls) <= 3, gpu.calls
    assert max(gpu.calls) >= 4, gpu.calls


@pytest.mark.slow
async def test_seed_i_draws_the_same_image_alone_or_in_a_batch(tiny_engine: Engine) -> None:
    app = create_app(make_settings(), engine=tiny_engine)
    async with running(app) as client:
        three = await client.post(
            "/v1/images/generations", json={"prompt": "a fox", "n": 3, "seed": 40, **FAST64}
        )
        alone = await client.post(
            "/v1/images/generations", json={"prompt": "a fox", "n": 1, "seed": 41, **FAST64}
        )
        unseeded = await client.post(
            "/v1/images/generations", json={"prompt": "a fox", "n": 2, **FAST64}
        )
    data = three.json()["data"]
    assert [d["seed"] for d in data] == [40, 41, 42]
    png = [base64.b64decode(d["b64_json"]) for d in data]
    alone_png = base64.b64decode(alone.json()["data"][0]["b64_json"])
    # the same picture up to float rounding of batched kernels (tests/numerics/image_compare)
    same = drift(alone_png, png[1])
    record("api_seed_alone_vs_batch", "seed 41 alone vs in a batch of 3", same)
    assert same.same_picture(), same
    # ... a bound that a wrong seed always breaks, by far
    wrong = drift(alone_png, png[0])
    record("api_seed_alone_vs_batch", "seed 41 alone vs seed 40", wrong)
    assert wrong.other_picture(), wrong
    assert not wrong.same_picture()
    seeds = [d["seed"] for d in unseeded.json()["data"]]
    assert seeds[1] == seeds[0] + 1


@pytest.mark.slow
async def test_out_of_memory_retries_smaller_batches_then_503(tiny_engine: Engine) -> None:
    gpu = FaultyGPU(tiny_engine, oom_above=1)
    app = create_app(make_settings(), engine=gpu)  # type: ignore[arg-type]
    async with running(app) as client:
        r = await client.post(
            "/v1/images/generations", json={"prompt": "a cat", "n": 4, "seed": 1, **FAST64}
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]) == 4
        assert gpu.calls[0] == 4
        assert gpu.calls[-4:] == [1, 1, 1, 1]
        assert app.state.service.scheduler.max_batch == 1  # later batches start small
        gpu.oom_above = 0  # not even one image fits
        r = await client.post("/v1/images/generations", json={"prompt": "a cat", **FAST64})
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "gpu_out_of_memory"
        gpu.oom_above = 64
        r = await client.post("/v1/images/generations", json={"prompt": "a cat", **FAST64})
        assert r.status_code == 200


async def test_the_worker_survives_a_failing_batch(tiny_engine: Engine) -> None:
    gpu = FaultyGPU(tiny_engine)
    app = create_app(make_settings(), engine=gpu)  # type: ignore[arg-type]
    async with running(app) as client:
        gpu.fail_next = RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR")
        r = await client.post("/v1/images/generations", json={"prompt": "a cat", **FAST64})
        assert r.status_code == 500
        assert r.json()["error"]["code"] == "generation_failed"
        assert "cuDNN" not in r.text  # internals stay in the log
        assert app.state.service.scheduler.alive
        r = await client.post("/v1/images/generations", json={"prompt": "a cat", **FAST64})
        assert r.status_code == 200


async def test_per_request_time_limit(tiny_engine: Engine) -> None:
    app = create_app(make_settings(request_timeout_s=1.0), engine=tiny_engine)
    async with running(app) as client:
        t0 = time.monotonic()
        running_one = client.post("/v1/images/generations", json={"prompt": "a", **HEAVY})
        queued_one = client.post(
            "/v1/images/generations", json={"prompt": "b", **HEAVY, "guidance_scale": 5.0}
        )
        first, second = await asyncio.gather(running_one, queued_one)
        assert time.monotonic() - t0 < 30
        for r in (first, second):
            assert r.status_code == 504
            assert r.json()["error"]["code"] == "request_timeout"
        status = (await client.get("/v1/status")).json()
        assert (status["queue_depth"], status["jobs_in_flight"]) == (0, 0)


async def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.05)


def test_a_client_that_goes_away_is_dropped_or_cancelled(live: Callable[..., str]) -> None:
    url = live(request_timeout_s=120)
    with httpx.Client(base_url=url, headers=AUTH, timeout=60) as c:
        # a job keeps the worker busy ...
        busy = c.post("/v1/jobs", json={"prompt": "busy", **HEAVY}).json()
        # ... while a generation waits behind it, and its client hangs up
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{url}/v1/images/generations",
                headers=AUTH,
                timeout=1.0,
                json={"prompt": "waiting", **HEAVY, "guidance_scale": 5.0},
            )

        def status() -> dict[str, Any]:
            return c.get("/v1/status").json()

        end = time.monotonic() + 10
        while status()["queue_depth"] != 0:  # dropped before it ever runs
            assert time.monotonic() < end, status()
            time.sleep(0.05)
        assert status()["jobs_in_flight"] == 1
        assert c.get(f"/v1/jobs/{busy['id']}").json()["status"] == "running"
        c.delete(f"/v1/jobs/{busy['id']}")
        assert c.get(f"/v1/jobs/{busy['id']}").json()["status"] == "cancelled"

        # a running generation whose client hangs up is cancelled mid-sampling
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{url}/v1/images/generations",
                headers=AUTH,
                timeout=1.5,
                json={"prompt": "running", **HEAVY},
            )
        end = time.monotonic() + 10
        while status()["jobs_in_flight"] != 0:
            assert time.monotonic() < end, status()
            time.sleep(0.05)
        metrics = c.get("/metrics").text
        assert metric(metrics, 'text2img_sampling_batches_total{outcome="cancelled"}') == 2
        assert metric(metrics, 'text2img_sampling_batches_total{outcome="ok"}') == 0


async def test_shutdown_cancels_work_and_leaves_no_threads(tiny_engine: Engine) -> None:
    app = create_app(make_settings(), engine=tiny_engine)
    async with running(app) as client:
        job = (await client.post("/v1/jobs", json={"prompt": "x", **HEAVY})).json()
        await wait_for(lambda: app.state.service.scheduler.jobs_in_flight == 1)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 15
    assert app.state.service.jobs.get(job["id"]).state.value == "cancelled"  # type: ignore[union-attr]
    assert not [t for t in threading.enumerate() if t.name == "text2img-gpu"]


def test_a_full_queue_refuses_before_paying_for_translation(
    make_client: Callable[..., Any], translate_ok: Any
) -> None:
    client = make_client(queue_limit=1, translation="on", translate_project="demo",
                         translate_endpoint=translate_ok.url)  # fmt: skip
    running = client.post("/v1/jobs", json={"prompt": "a", **HEAVY}, headers=AUTH).json()
    end = time.monotonic() + 10
    while client.get("/v1/status", headers=AUTH).json()["jobs_in_flight"] != 1:
        assert time.monotonic() < end
        time.sleep(0.02)
    waiting = client.post("/v1/jobs", json={"prompt": "b", **HEAVY, "guidance_scale": 5.0},
                          headers=AUTH).json()  # fmt: skip
    refused = client.post("/v1/images/generations", json={"prompt": "猫", **FAST64},
                          headers=AUTH)  # fmt: skip
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "queue_full"
    assert translate_ok.requests == []  # the Translation API was never called
    for job in (waiting, running):
        client.delete(f"/v1/jobs/{job['id']}", headers=AUTH)

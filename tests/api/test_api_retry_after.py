"""Retry-After under load grows with the queue, from measured batch times (issue: it was
always ~7 s while the real wait was ~26 s, so most retries were refused again)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from api_support import FAST64, make_settings
from test_api_scheduling import running

from tests.fakes.engine import EngineDouble
from text2img.api.app import create_app
from text2img.engines.base import Engine, EngineSettings, ImageRequest


class SlowGPU(EngineDouble):
    """The real tiny engine, made slow: every batch takes at least `batch_s` seconds,
    and none starts while `gate` is closed (so the queue can be filled meanwhile)."""

    def __init__(self, inner: Engine, batch_s: float) -> None:
        super().__init__(inner)
        self.batch_s = batch_s
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def generate(self, requests: Sequence[ImageRequest], settings: EngineSettings,
                 **kwargs: Any) -> list[Any]:  # fmt: skip
        self.entered.set()
        t0 = time.monotonic()
        self.gate.wait(60)
        images = self.inner.generate(requests, settings, **kwargs)
        time.sleep(max(0.0, self.batch_s - (time.monotonic() - t0)))
        return images


@pytest.mark.slow
async def test_retry_after_grows_with_the_queue(tiny_engine: Engine) -> None:
    gpu = SlowGPU(tiny_engine, batch_s=1.0)
    app = create_app(make_settings(queue_limit=5, batch_window_s=0), engine=gpu)  # type: ignore[arg-type]
    async with running(app) as client:
        scheduler = app.state.service.scheduler
        full = {"prompt": "x", "n": scheduler.max_batch, **FAST64}  # one whole batch each
        r = await client.post("/v1/images/generations", json=full)  # measures a batch
        assert r.status_code == 200
        gpu.gate.clear()
        gpu.entered.clear()
        assert (await client.post("/v1/jobs", json=full)).status_code == 202
        assert await asyncio.to_thread(gpu.entered.wait, 30)  # being drawn, gate closed
        estimates = [scheduler.retry_after()]
        for _ in range(5):
            assert (await client.post("/v1/jobs", json=full)).status_code == 202
            estimates.append(scheduler.retry_after())
        refused = await client.post("/v1/images/generations", json=full)
        gpu.gate.set()
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "queue_full"
    # each queued batch adds about one measured batch time (>= 1 s here) to the wait
    assert all(b > a for a, b in itertools.pairwise(estimates)), estimates
    assert estimates[-1] >= 5
    told = int(refused.headers["Retry-After"])
    assert estimates[-1] <= told <= estimates[-1] + estimates[-1] // 3  # the jitter
    assert f"retry after {told} s" in refused.json()["error"]["message"]


async def test_a_crowd_refused_together_is_told_different_waits(tiny_engine: Engine) -> None:
    # 30 clients refused by the same full queue in the same second: the same Retry-After
    # for all would bring them back in the same second, to be refused again together
    gpu = SlowGPU(tiny_engine, batch_s=0.0)
    gpu.gate.clear()
    app = create_app(make_settings(queue_limit=1, batch_window_s=0), engine=gpu)  # type: ignore[arg-type]
    async with running(app) as client:
        body = {"prompt": "x", "n": 1, **FAST64}
        assert (await client.post("/v1/jobs", json=body)).status_code == 202
        assert await asyncio.to_thread(gpu.entered.wait, 30)  # drawn, held at the gate
        assert (await client.post("/v1/jobs", json=body)).status_code == 202  # queue full
        estimate = app.state.service.scheduler.retry_after()
        refused = [await client.post("/v1/jobs", json=body) for _ in range(30)]
        gpu.gate.set()
    assert {r.json()["error"]["code"] for r in refused} == {"queue_full"}
    waits = [int(r.headers["Retry-After"]) for r in refused]
    assert estimate >= 10  # nothing measured yet: the default batch time
    assert all(estimate <= w <= estimate + estimate // 3 for w in waits), (estimate, waits)
    assert len(set(waits)) > 1, waits
    for r, wait in zip(refused, waits, strict=True):
        assert f"retry after {wait} s" in r.json()["error"]["message"]

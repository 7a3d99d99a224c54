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
    assert int(refused.headers["Retry-After"]) == estimates[-1]

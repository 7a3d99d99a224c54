"""The service with the real `tiny-sdxl` engine (SDXL architecture, random weights, diffusers):
the OpenAI SDK at 1024x1024 in PNG, JPEG and WebP, seeds, progress, cancellation,
batching of compatible requests, and the 400s of an SDXL server."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import openai
import pytest
from api_support import AUTH, TOKEN, job_events
from fastapi.testclient import TestClient
from PIL import Image

from tests.fakes.engine import EngineDouble
from text2img.engines import registry
from text2img.engines.base import Engine, EngineSettings, ImageRequest

pytestmark = pytest.mark.slow
FAST = {"steps": 2}
SIGNATURES = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff", "webp": b"RIFF"}


@pytest.fixture(scope="module")
def tiny_sdxl() -> Engine:
    return registry.load_engine("tiny-sdxl", device="cpu")


class Recorder(EngineDouble):
    """The real engine; records the size of every batch it is asked to draw."""

    def __init__(self, inner: Engine) -> None:
        super().__init__(inner)
        self.batches: list[int] = []
        self.started = threading.Event()

    def generate(self, requests: Sequence[ImageRequest], settings: EngineSettings,
                 **kwargs: Any) -> list[Any]:  # fmt: skip
        self.batches.append(len(requests))
        self.started.set()
        return self.inner.generate(requests, settings, **kwargs)


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0, timeout=300)


def decode(b64: str) -> tuple[bytes, Image.Image]:
    raw = base64.b64decode(b64)
    return raw, Image.open(io.BytesIO(raw))


def test_sdk_draws_two_1024_images_in_each_format(
    live: Callable[..., str], tiny_sdxl: Engine
) -> None:
    client = sdk(live(engine=tiny_sdxl, model="tiny-sdxl"))
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny-sdxl"]
    assert "1024x1024" in (models[0].model_extra or {})["sizes"]
    drawn: dict[str, list[np.ndarray]] = {}
    for fmt in ("png", "jpeg", "webp"):
        result = client.images.generate(
            prompt="a lighthouse at dusk", n=2, size="1024x1024", model="tiny-sdxl",
            extra_body={**FAST, "seed": 11, "output_format": fmt,
                        **({} if fmt == "png" else {"output_compression": 80})},
        )  # fmt: skip
        assert len(result.data or []) == 2
        seeds = [(d.model_extra or {})["seed"] for d in result.data or []]
        assert seeds == [11, 12]
        pixels = []
        for item in result.data or []:
            raw, image = decode(item.b64_json or "")
            assert raw.startswith(SIGNATURES[fmt]), fmt
            assert image.size == (1024, 1024)
            pixels.append(np.asarray(image.convert("RGB"), dtype=np.float64))
        assert np.abs(pixels[0] - pixels[1]).mean() > 10  # seeds 11 and 12 differ
        drawn[fmt] = pixels
    # the same seed draws the same picture in every format: a lossy copy of seed 11 is
    # closer to seed 11's PNG than a lossy copy of seed 12 is (random weights: noisy images)
    for fmt in ("jpeg", "webp"):
        same = np.abs(drawn["png"][0] - drawn[fmt][0]).mean()
        other = np.abs(drawn["png"][0] - drawn[fmt][1]).mean()
        assert same < other / 2, (fmt, same, other)


def test_openai_sizes_are_drawn_at_the_nearest_native_size(
    make_client: Callable[..., TestClient], tiny_sdxl: Engine
) -> None:
    client = make_client(engine=tiny_sdxl, model="tiny-sdxl")
    r = client.post("/v1/images/generations", headers=AUTH,
                    json={"prompt": "a wide valley", "size": "1536x1024", **FAST})  # fmt: skip
    assert r.status_code == 200, r.text
    _, image = decode(r.json()["data"][0]["b64_json"])
    assert image.size == (1216, 832)


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"size": "256x256"}, "size", "unsupported_size"),
        ({"model": "glide"}, "model", "model_not_found"),
        ({"upsample_steps": 5}, "upsample_steps", "unsupported_parameter"),
        ({"guidance_scale": 3.0}, "guidance_scale", "unsupported_parameter"),
        ({"steps": 3}, "steps", None),
    ],
)
def test_an_sdxl_server_refuses_what_it_cannot_draw(
    make_client: Callable[..., TestClient], tiny_sdxl: Engine,
    body: dict[str, Any], param: str, code: str | None,
) -> None:  # fmt: skip
    client = make_client(engine=tiny_sdxl, model="tiny-sdxl")
    r = client.post("/v1/images/generations", json={"prompt": "x", **body}, headers=AUTH)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param
    assert error["code"]  # every 400 has a code
    if code is not None:
        assert error["code"] == code
    assert param in error["message"]


def test_progress_events_per_step_then_done(
    make_client: Callable[..., TestClient], tiny_sdxl: Engine
) -> None:
    client = make_client(engine=tiny_sdxl, model="tiny-sdxl")
    job = client.post("/v1/jobs", json={"prompt": "a boat", "steps": 8, "size": "768x1344"},
                      headers=AUTH)  # fmt: skip
    assert job.status_code == 202, job.text
    events = job_events(client, job.json()["id"])
    assert events[-1][0] == "done"
    assert events[-1][1]["status"] == "succeeded"
    fractions = [e["progress"]["fraction"] for k, e in events if k == "progress"]
    assert fractions == sorted(fractions)
    assert len(set(fractions)) >= 3  # per step, not only start and end
    # the stages shown are the ones the spec labels for the web UI
    stages = {e["progress"]["stage"] for k, e in events if k == "progress"} - {"queued"}
    assert stages == set(tiny_sdxl.spec.stages) == {"denoise"}


def test_compatible_requests_share_a_batch_and_a_cancel_frees_the_engine(
    make_client: Callable[..., TestClient], tiny_sdxl: Engine
) -> None:
    engine = Recorder(tiny_sdxl)
    client = make_client(engine=engine, model="tiny-sdxl", batch_window_s=1.0)
    body = {"prompt": "a cat", "size": "1024x1024", **FAST}
    a = client.post("/v1/jobs", json={**body, "seed": 1}, headers=AUTH).json()
    b = client.post("/v1/jobs", json={**body, "seed": 2}, headers=AUTH).json()
    for job in (a, b):
        deadline = time.monotonic() + 120
        while client.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()["status"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert engine.batches == [2]  # one batch of two images, not two batches
    engine.started.clear()
    slow = client.post("/v1/jobs", json={**body, "steps": 8, "n": 2}, headers=AUTH).json()
    assert engine.started.wait(60)
    assert client.delete(f"/v1/jobs/{slow['id']}", headers=AUTH).json()["status"] == "cancelled"
    after = client.post("/v1/images/generations", json=body, headers=AUTH)
    assert after.status_code == 200  # the worker moved on after the cancel


@pytest.fixture(autouse=True)
def _quiet_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # tiny-sdxl never downloads

"""`stream: true` on POST /v1/images/generations, read by the official `openai` SDK's own
streaming client (`images.generate(..., stream=True)`) against the real service."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import openai
import pytest
from api_support import FAST, TOKEN
from PIL import Image

from tests.fakes.engine import EngineDouble
from text2img.engines import registry
from text2img.engines.base import BadOutput, Engine, EngineSettings, ImageRequest, Progress

AUTH = {"Authorization": f"Bearer {TOKEN}"}
# minutes on the tiny model: only cancellation ends it
HEAVY = {"size": "256x256", "steps": 250, "upsample_steps": 250}
PARTIAL = "image_generation.partial_image"
COMPLETED = "image_generation.completed"


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0, timeout=300)


def image_of(b64: str) -> tuple[bytes, Image.Image]:
    raw = base64.b64decode(b64)
    return raw, Image.open(io.BytesIO(raw))


def stream_events(url: str, **kwargs: Any) -> list[Any]:
    return list(sdk(url).images.generate(stream=True, **kwargs))  # type: ignore[call-overload]


def test_sdk_streams_partial_then_final_images_of_the_tiny_model(
    live: Callable[..., str],
) -> None:
    url = live()
    body = {"prompt": "a red cube", "n": 2, "size": "256x256", "model": "tiny"}
    events = stream_events(url, partial_images=2, extra_body={**FAST, "seed": 11}, **body)
    kinds = [e.type for e in events]
    partials = [e for e in events if e.type == PARTIAL]
    completed = [e for e in events if e.type == COMPLETED]
    assert kinds[-2:] == [COMPLETED, COMPLETED]  # the images end the stream
    assert "text2img.progress" in kinds  # ours, passed through as an unknown type
    # two partial images per image, numbered 0 and 1, all before any final image
    assert sorted((e.image_index, e.partial_image_index) for e in partials) == [
        (0, 0), (0, 1), (1, 0), (1, 1)
    ]  # fmt: skip
    assert max(kinds.index(PARTIAL), *(i for i, k in enumerate(kinds) if k == PARTIAL)) < (
        kinds.index(COMPLETED)
    )
    for event in [*partials, *completed]:
        assert event.output_format == "png"
        assert event.size == "256x256"
        assert event.background == "opaque"
        assert event.created_at > 1_700_000_000
        raw, image = image_of(event.b64_json)
        assert raw.startswith(b"\x89PNG\r\n\x1a\n")
        assert image.size == (256, 256)  # previews come at the final size
    assert [e.image_index for e in completed] == [0, 1]
    assert [e.seed for e in completed] == [11, 12]
    assert completed[0].usage.total_tokens == 0
    # the final images are exactly what the same request draws without streaming
    plain = sdk(url).images.generate(extra_body={**FAST, "seed": 11}, **body)  # type: ignore[arg-type]
    assert [e.b64_json for e in completed] == [d.b64_json for d in plain.data or []]
    # the partial images are real intermediate decodes: different from each other and
    # from the final image of their own row
    finals = {e.image_index: image_of(e.b64_json)[1].tobytes() for e in completed}
    for index in (0, 1):
        looks = [image_of(e.b64_json)[1].tobytes() for e in partials if e.image_index == index]
        assert looks[0] != looks[1]
        assert finals[index] not in looks


@pytest.mark.slow
def test_sdk_streams_the_tiny_sdxl_model_as_jpeg(live: Callable[..., str]) -> None:
    tiny_sdxl = registry.load_engine("tiny-sdxl", device="cpu")
    url = live(engine=tiny_sdxl, model="tiny-sdxl")
    events = stream_events(
        url,
        prompt="a lighthouse at dusk",
        model="tiny-sdxl",
        size="1024x1024",
        output_format="jpeg",
        partial_images=1,
        extra_body={"steps": 2, "seed": 3},
    )
    (partial,) = [e for e in events if e.type == PARTIAL]
    (done,) = [e for e in events if e.type == COMPLETED]
    assert partial.partial_image_index == 0
    for event in (partial, done):
        raw, image = image_of(event.b64_json)
        assert raw.startswith(b"\xff\xd8\xff")
        assert image.size == (1024, 1024)
        assert event.output_format == "jpeg"
    assert image_of(partial.b64_json)[1].tobytes() != image_of(done.b64_json)[1].tobytes()
    assert done.revised_prompt == "a lighthouse at dusk"


def test_no_partial_images_unless_asked(live: Callable[..., str]) -> None:
    url = live()
    events = stream_events(url, prompt="a cat", extra_body={"size": "64x64", "steps": 3})
    assert [e.type for e in events if e.type != "text2img.progress"] == [COMPLETED]


def test_partial_images_without_stream_is_refused_naming_stream(live: Callable[..., str]) -> None:
    url = live()
    with pytest.raises(openai.BadRequestError) as bad:
        sdk(url).images.generate(prompt="a cat", partial_images=2)
    assert bad.value.param == "partial_images"  # type: ignore[attr-defined]
    assert "stream: true" in bad.value.message
    with pytest.raises(openai.BadRequestError) as too_many:
        stream_events(url, prompt="a cat", partial_images=4)
    assert too_many.value.param == "partial_images"  # type: ignore[attr-defined]


class FailsMidway(EngineDouble):
    """The tiny engine that reports a step, then refuses its own output."""

    def __init__(self, inner: Engine) -> None:
        super().__init__(inner)

    def generate(self, requests: Sequence[ImageRequest], settings: EngineSettings,
                 progress: Any = None, **kwargs: Any) -> list[Any]:  # fmt: skip
        if progress is not None:
            progress(Progress("base", 1, 4))
        time.sleep(0.3)
        raise BadOutput("the batch came out constant")


def test_an_error_after_the_stream_began_is_its_final_event(
    live: Callable[..., str], tiny_engine: Engine
) -> None:
    url = live(engine=FailsMidway(tiny_engine))
    seen: list[str] = []

    def read() -> None:
        for event in sdk(url).images.generate(prompt="a cat", stream=True):
            seen.append(event.type)

    with pytest.raises(openai.APIError) as failed:
        read()
    assert failed.value.message == "the batch came out constant"
    assert failed.value.body["code"] == "bad_output"  # type: ignore[index]
    assert "text2img.progress" in seen  # the stream had begun (HTTP 200) before it failed
    # on the wire: one `error` event, last
    with httpx.stream("POST", f"{url}/v1/images/generations", headers=AUTH,
                      json={"prompt": "a cat", "stream": True}, timeout=60) as r:  # fmt: skip
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        blocks = [b for b in r.read().decode().split("\n\n") if b.startswith("event:")]
    assert blocks[-1].startswith("event: error\n")
    error = json.loads(blocks[-1].split("data: ", 1)[1])
    assert error["type"] == "error"
    assert error["error"]["type"] == "server_error"


def test_a_stream_whose_client_goes_away_is_cancelled(live: Callable[..., str]) -> None:
    url = live(request_timeout_s=120)
    with httpx.Client(base_url=url, headers=AUTH, timeout=60) as c:
        with c.stream(
            "POST", "/v1/images/generations", json={"prompt": "long", "stream": True, **HEAVY}
        ) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            while '"stage":"base"' not in next(lines):  # sampling has begun
                pass
        # the client hung up mid-sampling: the worker stops before its next model call
        end = time.monotonic() + 15
        while c.get("/v1/status").json()["jobs_in_flight"] != 0:
            assert time.monotonic() < end
            time.sleep(0.05)
        metrics = c.get("/metrics").text
        assert 'text2img_sampling_batches_total{outcome="cancelled"} 1.0' in metrics


def test_errors_before_the_stream_are_plain_json(live: Callable[..., str]) -> None:
    url = live()
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong-token-0123456789",
                      max_retries=0).images.generate(prompt="a cat", stream=True)  # fmt: skip
    r = httpx.post(f"{url}/v1/images/generations", headers=AUTH,
                   json={"prompt": "a cat", "stream": "yes"})  # fmt: skip
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["param"] == "stream"


def test_job_api_off_points_to_stream_true(make_client: Callable[..., Any]) -> None:
    client = make_client(job_api=False)
    routes = [("POST", "/v1/jobs"), ("GET", "/v1/jobs/job_x")]
    routes += [("GET", "/v1/jobs/job_x/events"), ("DELETE", "/v1/jobs/job_x")]
    for method, path in routes:
        r = client.request(method, path, headers=AUTH, json={"prompt": "a cat"})
        assert r.status_code == 400, path
        assert r.json()["error"]["code"] == "job_api_unavailable"
        assert "stream: true" in r.json()["error"]["message"]
    # without a token the answer is still 401: the token is checked first
    assert client.post("/v1/jobs", json={"prompt": "a cat"}).status_code == 401
    # streaming works on the same service
    body = {"prompt": "a cat", "stream": True, "size": "64x64", "steps": 2}
    r = client.post("/v1/images/generations", headers=AUTH, json=body)
    assert r.status_code == 200
    assert "event: image_generation.completed" in r.text


def test_job_api_refuses_stream(make_client: Callable[..., Any]) -> None:
    r = make_client().post("/v1/jobs", headers=AUTH, json={"prompt": "a cat", "stream": True})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "stream"

"""The service generic over engines, against the real app and the real tiny engine:
/v1/models, sizes and aliases, output formats, the model field, options an engine lacks,
and the output guard's 500."""

from __future__ import annotations

import base64
import dataclasses
import io
from collections.abc import Callable, Sequence
from typing import Any

from api_support import AUTH
from fastapi.testclient import TestClient
from PIL import Image

from text2img.engines.base import (
    BadOutput,
    Engine,
    EngineSettings,
    EngineSpec,
    GeneratedImage,
    ImageRequest,
)
from text2img.engines.glide.spec import TINY

FAST = {"steps": 2}


def test_models_lists_the_served_engine_with_its_spec(make_client: Callable[..., TestClient]):
    body = make_client().get("/v1/models", headers=AUTH).json()
    assert body["object"] == "list"
    [model] = body["data"]
    assert model["id"] == "tiny"
    assert model["object"] == "model"
    assert model["owned_by"] == "text2img"
    assert model["ready"] is True
    assert isinstance(model["created"], int)
    assert model["random_weights"] is True
    assert model["sizes"] == ["64x64", "256x256"]
    assert model["default_size"] == "64x64"
    assert model["title"]
    assert model["licence"]
    assert model["options"]["steps"] == {
        "default": 4,
        "description": "Sampling steps of the 64x64 base model.",
        "minimum": 1,
        "maximum": 250,
        "label": "ステップ数",
    }
    assert model["options"]["sampler"]["choices"] == ["ancestral", "ddim", "dpm++2m"]
    assert model["options"]["upsample_steps"]["label"] == "アップサンプルのステップ数"
    assert model["stages"] == {"base": "ベース", "upsample": "アップサンプル"}


def decode(item: dict[str, Any]) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))


def test_sizes_aliases_and_the_size_drawn(make_client: Callable[..., TestClient]):
    client = make_client()
    cases = [({}, "64x64"), ({"size": "auto"}, "64x64"), ({"size": "256x256"}, "256x256")]
    for extra, drawn in cases:
        body = {"prompt": "a cat", **FAST, "upsample_steps": 1, **extra}
        r = client.post("/v1/images/generations", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["size"] == drawn
        width = int(drawn.split("x")[0])
        assert decode(r.json()["data"][0]).size == (width, width)
    r = client.post(
        "/v1/images/generations", json={"prompt": "a", "size": "1024x1024"}, headers=AUTH
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["param"], error["code"]) == ("size", "unsupported_size")
    assert "64x64, 256x256, auto" in error["message"]


def test_output_formats_and_compression(make_client: Callable[..., TestClient]):
    client = make_client()
    signatures = {"png": b"\x89PNG", "jpeg": b"\xff\xd8\xff", "webp": b"RIFF"}
    sizes = {}
    for fmt, compression in [("png", None), ("jpeg", 90), ("jpeg", 10), ("webp", 50)]:
        body: dict[str, Any] = {"prompt": "a cat", "seed": 3, **FAST, "output_format": fmt}
        if compression is not None:
            body["output_compression"] = compression
        r = client.post("/v1/images/generations", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["output_format"] == fmt
        raw = base64.b64decode(r.json()["data"][0]["b64_json"])
        assert raw.startswith(signatures[fmt])
        assert Image.open(io.BytesIO(raw)).format == fmt.upper()
        sizes[(fmt, compression)] = len(raw)
    assert sizes[("jpeg", 10)] < sizes[("jpeg", 90)]  # the value reaches the encoder


class NoUpsamplerSpec(EngineSpec):
    """A spec with fewer options than GLIDE's (like SDXL's): drawn by the tiny engine."""

    def settings(self, **options: Any) -> EngineSettings:
        self.check_option_names(options)
        return TINY.settings(**options)


class Renamed(Engine):
    def __init__(self, inner: Engine, spec: EngineSpec) -> None:
        self.inner, self.spec = inner, spec
        self.device, self.dtype, self.max_batch = inner.device, inner.dtype, inner.max_batch
        self.fail: Exception | None = None

    def generate(
        self, requests: Sequence[ImageRequest], settings: EngineSettings, **kw: Any
    ) -> list[GeneratedImage]:
        if self.fail is not None:
            raise self.fail
        return self.inner.generate(requests, settings, **kw)


def other_engine(inner: Engine) -> Renamed:
    fields = {f.name: getattr(TINY, f.name) for f in dataclasses.fields(TINY)}
    fields.update(
        name="other", options=tuple(o for o in TINY.options if o.name != "upsample_steps")
    )
    return Renamed(inner, NoUpsamplerSpec(**fields))


def test_options_the_engine_lacks_and_other_models_are_400s(
    make_client: Callable[..., TestClient], tiny_engine: Engine
):
    client = make_client(engine=other_engine(tiny_engine))
    r = client.post(
        "/v1/images/generations", json={"prompt": "a", "upsample_steps": 3}, headers=AUTH
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["param"], error["code"]) == ("upsample_steps", "unsupported_parameter")
    assert "upsample_steps is not a setting of model other" in error["message"]
    r = client.post("/v1/images/generations", json={"prompt": "a", "model": "tiny"}, headers=AUTH)
    error = r.json()["error"]
    assert (r.status_code, error["param"], error["code"]) == (400, "model", "model_not_found")
    assert "'other'" in error["message"]
    r = client.post(
        "/v1/images/generations", json={"prompt": "a", "model": "other", **FAST}, headers=AUTH
    )
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "other"
    assert client.get("/v1/models", headers=AUTH).json()["data"][0]["options"].keys() == {
        "steps",
        "guidance_scale",
        "sampler",
    }


def test_a_refused_output_is_a_500_bad_output_not_an_image(
    make_client: Callable[..., TestClient], tiny_engine: Engine
):
    engine = other_engine(tiny_engine)
    client = make_client(engine=engine)
    engine.fail = BadOutput("the model produced NaN/inf values: run `text2img download --check`")
    r = client.post("/v1/images/generations", json={"prompt": "a", **FAST}, headers=AUTH)
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["code"] == "bad_output"
    assert "text2img download --check" in error["message"]
    engine.fail = None  # the worker lives on
    r = client.post("/v1/images/generations", json={"prompt": "a", **FAST}, headers=AUTH)
    assert r.status_code == 200

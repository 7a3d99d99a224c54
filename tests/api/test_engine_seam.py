"""The engine seam: a third engine registered only through `engines.registry` (the test's
"swatch", tests/fakes/engine.py) is listed by /v1/models with its labels and stages, is
validated by the API and documented in its OpenAPI schema, gets CLI flags, and reports a
cut prompt, with no line of api/ or commands/ written for it."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import AUTH, make_settings
from fastapi.testclient import TestClient
from PIL import Image

from tests.fakes.engine import REGISTRATION, SWATCH, SwatchEngine
from text2img.api.app import create_app
from text2img.cli import build_parser, main
from text2img.engines import registry
from text2img.engines.base import ImageRequest


@pytest.fixture
def swatch_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.ENGINES, "swatch", REGISTRATION)


@pytest.fixture
def client(swatch_registered: None) -> Iterator[TestClient]:
    app = create_app(make_settings(model="swatch"))  # loaded through the registry
    with TestClient(app) as test_client:
        assert app.state.service.wait_loaded(10)
        yield test_client


def colour(item: dict[str, Any]) -> tuple[int, ...]:
    with Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))) as image:
        return image.getpixel((0, 0))


def expected(prompt: str, seed: int, **options: Any) -> tuple[int, ...]:
    drawn = SwatchEngine._draw(ImageRequest(prompt, seed), SWATCH.settings(**options))
    return drawn.image.getpixel((0, 0))


def test_models_lists_its_options_labels_and_stages(client: TestClient) -> None:
    [model] = client.get("/v1/models", headers=AUTH).json()["data"]
    assert model["id"] == "swatch"
    assert model["sizes"] == ["32x32", "48x32"]
    assert model["stages"] == {"paint": "塗装"}
    assert model["options"]["hue"] == {
        "default": 200,
        "description": "Hue of the colour field, in degrees.",
        "minimum": 0,
        "maximum": 359,
        "label": "色相",
    }
    assert model["options"]["finish"]["choices"] == ["matte", "gloss"]
    assert model["options"].keys() == {"hue", "finish", "coats"}


def test_its_options_are_accepted_and_drawn(client: TestClient) -> None:
    body = {"prompt": "a wall", "seed": 7, "hue": 30, "finish": "gloss", "size": "48x32"}
    r = client.post("/v1/images/generations", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["size"] == "48x32"
    [item] = r.json()["data"]
    assert colour(item) == expected("a wall", 7, hue=30, finish="gloss", size="48x32")
    assert colour(item) != expected("a wall", 7)  # the options reached the engine
    assert item["prompt_truncated"] is False
    assert item["revised_prompt"] == "a wall"


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("hue", 400, "invalid_settings"),  # the spec's range
        ("hue", "red", "invalid_value"),  # the option's type (int): strict
        ("hue", 30.0, "invalid_value"),
        ("finish", "shiny", "invalid_settings"),
        ("coats", True, "invalid_value"),
        ("steps", 4, "unsupported_parameter"),  # GLIDE's and SDXL's options are refused
        ("guidance_scale", 3.0, "unsupported_parameter"),
        ("upsample_steps", 2, "unsupported_parameter"),
        ("huee", 30, "invalid_value"),  # no model has it: a typo
    ],
)
@pytest.mark.parametrize("path", ["/v1/images/generations", "/v1/jobs"])
def test_bad_values_and_other_engines_options_are_400s(
    client: TestClient, path: str, field: str, value: object, code: str
) -> None:
    r = client.post(path, json={"prompt": "a", field: value}, headers=AUTH)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == (field, code)
    assert field in error["message"]


def test_openapi_documents_its_options_not_glides(client: TestClient) -> None:
    schema = client.get("/openapi.json", headers=AUTH).json()
    body_ref = schema["paths"]["/v1/images/generations"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]["$ref"]
    body = schema["components"]["schemas"][body_ref.rsplit("/", 1)[1]]["properties"]
    assert {"hue", "finish", "coats", "prompt", "n", "seed"} <= body.keys()
    assert not {"steps", "guidance_scale", "sampler", "upsample_steps"} & body.keys()
    assert body["hue"]["minimum"] == 0
    assert body["hue"]["maximum"] == 359
    assert body["finish"]["enum"] == ["matte", "gloss"]


def test_a_cut_prompt_is_reported_per_image(client: TestClient) -> None:
    prompt = "one two three four five six seven eight"
    r = client.post("/v1/images/generations", json={"prompt": prompt, "n": 2}, headers=AUTH)
    assert r.status_code == 200, r.text
    for item in r.json()["data"]:
        assert item["revised_prompt"] == "one two three four five six"
        assert item["prompt_truncated"] is True
    job = client.post("/v1/jobs", json={"prompt": prompt}, headers=AUTH).json()
    done: dict[str, Any] = {}
    for _ in range(500):
        done = client.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()
        if done["status"] == "succeeded":
            break
    assert done["data"][0]["prompt_truncated"] is True
    assert done["revised_prompt"] == prompt  # the job states what was asked for


def test_cli_gets_flags_from_its_spec(swatch_registered: None, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--hue HUE Hue of the colour field, in degrees; swatch: 0-359; only swatch" in help_text
    assert "--finish FINISH" in help_text
    out = tmp_path / "out"
    prompt = "one two three four five six seven eight"
    args = ["generate", prompt, "--model", "swatch", "--hue", "30", "--seed", "3", "-o", str(out)]
    assert main(args) == 0
    [png] = sorted(out.iterdir())  # one image: no grid
    assert png.name == "one-two-three-four-five-six-seven-eight_seed3.png"
    with Image.open(png) as image:
        assert image.getpixel((0, 0)) == expected(prompt, 3, hue=30)
    err = capsys.readouterr().err
    assert "it drew only: one two three four five six" in err
    assert main([*args, "--hue", "400"]) == 2
    assert "--hue: hue must be an integer from 0 to 359" in capsys.readouterr().err
    assert main([*args, "--steps", "4"]) == 2  # GLIDE's flag, refused by this model's spec
    assert "steps is not a setting of model swatch" in capsys.readouterr().err


def test_cli_takes_the_model_from_the_environment(
    swatch_registered: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("TEXT2IMG_MODEL", "swatch")
    assert main(["generate", "a", "-n", "2", "--seed", "1", "-o", str(tmp_path)]) == 0
    assert "loaded swatch" in capsys.readouterr().err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["a_grid.png", "a_seed1.png", "a_seed2.png"]
    monkeypatch.setenv("TEXT2IMG_MODEL", "dall-e")
    assert main(["generate", "a", "-o", str(tmp_path)]) == 2
    assert "TEXT2IMG_MODEL='dall-e': use one of glide, tiny" in capsys.readouterr().err

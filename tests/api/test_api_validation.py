"""Bad input gets a 4xx naming the field, in OpenAI's error shape; never a 5xx."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from api_support import AUTH, make_settings
from fastapi.testclient import TestClient

from text2img.api.app import create_app

OK = {"prompt": "a cat", "size": "64x64", "steps": 2}


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def assert_openai_error(body: dict[str, Any]) -> dict[str, Any]:
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    assert "Traceback" not in error["message"]
    return error


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt", ""),
        ("prompt", "   "),
        ("prompt", "x" * 1001),
        ("prompt", 42),
        ("prompt", None),
        ("n", 0),
        ("n", 9),
        ("n", "many"),
        ("n", 1.5),
        ("size", "1024x1024"),
        ("size", 256),
        ("response_format", "jpeg"),
        ("guidance_scale", -1),
        ("guidance_scale", 21),
        ("guidance_scale", "high"),
        ("sampler", "euler"),
        ("steps", 0),
        ("steps", 251),
        ("upsample_steps", 0),
        ("seed", -1),
        ("seed", 2**32),
        ("translate", "sometimes"),
        ("model", "m" * 101),
        ("guidence_scale", 3),  # a typo is named, not ignored
        # strict types: no coercion of booleans, strings or whole floats (issue 13, item 9)
        ("n", True),
        ("n", "2"),
        ("n", 2.0),
        ("seed", False),
        ("steps", True),
        ("guidance_scale", "3"),
        ("seed", 10**400),
        # engine-checked fields (the served model's spec)
        ("size", "512x512"),
        ("model", "dall-e-2"),
        ("output_format", "gif"),
        ("output_compression", 101),
        ("output_compression", 50),  # with png: applies to jpeg/webp only
    ],
)
@pytest.mark.parametrize("path", ["/v1/images/generations", "/v1/jobs"])
def test_bad_fields_are_400_naming_the_field(
    client: TestClient, path: str, field: str, value: object
) -> None:
    body = {**OK, field: value}
    response = client.post(path, json=body, headers=AUTH)
    assert response.status_code == 400, response.text
    error = assert_openai_error(response.json())
    assert error["param"] == field
    assert error["message"].startswith(f"{field}:") or field in error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["code"], "every 400 has a code"


@pytest.mark.parametrize(
    ("raw", "param", "says"),
    [
        (b'{"prompt": "a", "guidance_scale": NaN}', "guidance_scale", "finite number"),
        (b'{"prompt": "a", "guidance_scale": Infinity}', "guidance_scale", "finite number"),
        (b'{"prompt": "a", "n": ' + b"9" * 5000 + b"}", None, "JSON"),  # past int's digit limit
        (b'{"prompt": "\xff\xfe caf\xe9"}', None, "UTF-8"),
    ],
)
def test_non_finite_numbers_huge_integers_and_non_utf8_are_400_with_a_code(
    client: TestClient, raw: bytes, param: str | None, says: str
) -> None:
    r = client.post(
        "/v1/images/generations", content=raw, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.text
    error = assert_openai_error(r.json())
    assert error["code"]
    assert error["param"] == param
    assert says in error["message"]


def test_missing_prompt_and_malformed_bodies(client: TestClient) -> None:
    r = client.post("/v1/images/generations", json={"n": 1}, headers=AUTH)
    assert r.status_code == 400
    assert assert_openai_error(r.json())["param"] == "prompt"
    for raw in (b"{not json", b"[1, 2]", b'"a cat"', b""):
        r = client.post(
            "/v1/images/generations",
            content=raw,
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert r.status_code == 400, (raw, r.text)
        assert_openai_error(r.json())


def test_url_response_format_is_refused_clearly(client: TestClient) -> None:
    r = client.post("/v1/images/generations", json={**OK, "response_format": "url"}, headers=AUTH)
    assert r.status_code == 400
    error = assert_openai_error(r.json())
    assert error["param"] == "response_format"
    assert "b64_json" in error["message"]


def test_japanese_with_translation_off_is_refused_not_drawn(client: TestClient) -> None:
    for translate in ("auto", "never"):
        r = client.post(
            "/v1/images/generations",
            json={**OK, "prompt": "テディベア", "translate": translate},
            headers=AUTH,
        )
        assert r.status_code == 400
        error = assert_openai_error(r.json())
        assert error["param"] == "prompt"
        assert error["code"] == "untranslatable_prompt"
    r = client.post("/v1/translations", json={"text": "テディベア"}, headers=AUTH)
    assert r.status_code == 400
    assert "translation is off" in r.json()["error"]["message"]


def test_unknown_routes_and_methods(client: TestClient) -> None:
    r = client.get("/v1/nothing", headers=AUTH)
    assert r.status_code == 404
    assert assert_openai_error(r.json())["type"] == "not_found_error"
    r = client.get("/v1/images/generations", headers=AUTH)
    assert r.status_code == 405
    assert_openai_error(r.json())
    r = client.get("/v1/jobs/job_doesnotexist", headers=AUTH)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "job_not_found"


# -- schemathesis over the app's own OpenAPI schema ------------------------------------------


def _fast_schema() -> dict[str, Any]:
    """The real schema, with the generation bodies narrowed so that every valid request
    the fuzzer sends draws at most one tiny 64x64 image with two steps (time budget)."""
    schema = copy.deepcopy(create_app(make_settings()).openapi())
    props = schema["components"]["schemas"]["ImageGenerationRequest"]["properties"]
    props["n"]["maximum"] = 1
    props["size"] = {"type": "string", "enum": ["64x64"]}
    props["steps"] = {"type": "integer", "minimum": 1, "maximum": 2}
    props["prompt"]["maxLength"] = 40
    required = ["prompt", "steps", "size"]
    schema["components"]["schemas"]["ImageGenerationRequest"]["required"] = required
    return schema


SCHEMA = schemathesis.openapi.from_dict(_fast_schema())


@pytest.fixture(scope="module")
def fuzz_url(tiny_engine: Any) -> Iterator[str]:
    from api_support import serve

    app = create_app(make_settings(queue_limit=64), engine=tiny_engine)
    with serve(app) as url:
        import httpx
        from api_support import wait_ready

        with httpx.Client(base_url=url) as c:
            wait_ready(c)
        yield url


@pytest.mark.slow
@SCHEMA.parametrize()
@hypothesis.settings(
    max_examples=12, deadline=None, suppress_health_check=list(hypothesis.HealthCheck)
)
def test_schemathesis_finds_no_server_errors(case: schemathesis.Case, fuzz_url: str) -> None:
    if case.path.endswith("/events"):
        case.path_parameters = {"job_id": "job_unknown"}  # a stream would wait for its job
    response = case.call(base_url=fuzz_url, headers=AUTH, timeout=60)
    assert response.status_code < 500, (case.method, case.path, response.text[:300])
    if response.status_code >= 400:
        assert_openai_error(response.json())


def test_oversized_bodies_are_refused(client: TestClient) -> None:
    r = client.post("/v1/images/generations", content=b'{"prompt": "' + b"a" * 200_000 + b'"}',
                    headers={**AUTH, "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 413
    assert_openai_error(r.json())


def test_the_served_schema_is_the_one_fuzzed(client: TestClient) -> None:
    served = client.get("/openapi.json", headers=AUTH).json()
    assert served == client.app.openapi()  # type: ignore[attr-defined]
    assert "/v1/images/generations" in served["paths"]
    props = served["components"]["schemas"]["ImageGenerationRequest"]["properties"]
    assert props["n"]["maximum"] == 8
    assert props["prompt"]["maxLength"] == 1000

"""schemathesis over the served /openapi.json WITHOUT a token (the tokened run is in
test_api_validation.py): every protected path answers 401 (or 429 once throttled) in
OpenAI's JSON error shape, whatever the body, method or parameters; nothing is a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from api_support import make_settings, serve, wait_ready

from text2img.api.app import create_app
from text2img.front_door import treatment

SCHEMA = schemathesis.openapi.from_dict(create_app(make_settings()).openapi())


@pytest.fixture(scope="module")
def open_url(tiny_engine: Any) -> Iterator[str]:
    app = create_app(make_settings(auth_max_failures=1000), engine=tiny_engine)
    with serve(app) as url:
        with httpx.Client(base_url=url) as client:
            wait_ready(client)
        yield url


@SCHEMA.parametrize()
@hypothesis.settings(
    max_examples=8, deadline=None, suppress_health_check=list(hypothesis.HealthCheck)
)
def test_without_a_token_only_401_or_429(case: schemathesis.Case, open_url: str) -> None:
    response = case.call(base_url=open_url, timeout=30)
    assert response.status_code < 500, (case.method, case.path, response.text[:300])
    if treatment(case.method, case.path).open:
        return
    # refused before the token is looked at: a path with control characters or dot
    # segments (400 invalid_path), or no/wrong token (401/429)
    assert response.status_code in (400, 401, 429), (case.method, case.path, response.text[:300])
    error = response.json()["error"]
    assert error["code"] in ("invalid_path", "invalid_api_key", "auth_throttled")
    assert (response.status_code == 400) == (error["code"] == "invalid_path")

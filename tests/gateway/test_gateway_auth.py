"""The token is checked before anything else; the page and /healthz need none."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.fakes.asgi_server import serve_in_thread
from tests.fakes.compute import FakeCompute
from tests.gateway.gateway_support import AUTH, TOKEN
from text2img.errors import UserError
from text2img.front_door import UI_HEADERS
from text2img.gateway.app import _static_root, create_app
from text2img.gateway.settings import GatewaySettings


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/v1/models", {}),
        ("POST", "/v1/images/generations", {}),
        ("POST", "/v1/images/generations", {"Authorization": "Bearer wrong-token-xxxxxxxx"}),
        ("POST", "/v1/images/generations", {"Authorization": f"Basic {TOKEN}"}),
        ("GET", "/readyz", {"Authorization": "Bearer"}),
        ("DELETE", "/v1/jobs/1", {"Authorization": f"Bearer {TOKEN}x"}),
    ],
)
def test_unauthenticated_requests_never_touch_compute(
    make_gateway: Callable[..., str],
    fake: FakeCompute,
    method: str,
    path: str,
    headers: dict[str, str],
) -> None:
    url = make_gateway()
    resp = httpx.request(method, url + path, headers=headers, json={"prompt": "x"})
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == 'Bearer realm="text2img"'
    assert resp.json()["error"]["code"] == "invalid_api_key"
    assert resp.json()["error"]["type"] == "authentication_error"
    assert sum(fake.calls.values()) == 0
    assert fake.instances["text2img-vm"].status == "TERMINATED"


def test_page_and_healthz_load_while_the_vm_sleeps(
    make_gateway: Callable[..., str], fake: FakeCompute
) -> None:
    url = make_gateway()
    page = httpx.get(url + "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>text2img</title>" in page.text
    js = httpx.get(url + "/static/app.js")
    assert js.status_code == 200
    assert "javascript" in js.headers["content-type"]
    dots = httpx.get(url + "/static/%2e%2e/%2e%2e/conftest.py")
    assert (dots.status_code, dots.json()["error"]["code"]) == (400, "invalid_path")
    assert httpx.get(url + "/static/missing.css").status_code == 404
    health = httpx.get(url + "/healthz")
    assert health.json() == {"status": "ok"}
    assert sum(fake.calls.values()) == 0


def test_default_static_root_is_the_service_web_ui() -> None:
    root = _static_root()
    assert root is not None
    assert str(root).replace("\\", "/").endswith("text2img/api/static")


def test_the_real_web_ui_is_served_with_the_service_headers(
    fake: FakeCompute, upstream: object
) -> None:
    settings = fake.gateway_settings(TOKEN, "text2img-vm")
    with serve_in_thread(create_app(settings)) as url:
        page = httpx.get(url + "/")
        assert page.status_code == 200
        assert page.headers["content-security-policy"] == UI_HEADERS["Content-Security-Policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
            assert httpx.get(url + asset).status_code == 200, asset
    assert sum(fake.calls.values()) == 0


def test_repeated_failures_are_throttled_per_client(
    make_gateway: Callable[..., str], fake: FakeCompute
) -> None:
    url = make_gateway(max_auth_failures=3)
    bad = {"Authorization": "Bearer wrong-token-xxxxxxxx", "X-Forwarded-For": "203.0.113.7"}
    codes = [httpx.get(url + "/v1/models", headers=bad).status_code for _ in range(3)]
    assert codes == [401, 401, 401]
    blocked = httpx.get(url + "/v1/models", headers=bad)
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) >= 1
    # even the right token is refused while blocked: guessing cannot continue
    right = {**AUTH, "X-Forwarded-For": "203.0.113.7"}
    assert httpx.get(url + "/readyz", headers=right).status_code == 429
    # another client is not affected, even when it claims the blocked address first: the
    # last entry is the one Cloud Run appends
    other = {**AUTH, "X-Forwarded-For": "203.0.113.7, 198.51.100.1"}
    assert httpx.get(url + "/readyz", headers=other).json()["error"]["code"] == "asleep"
    assert fake.calls["start"] == 0


def test_gateway_refuses_to_run_without_token_or_vm(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="TEXT2IMG_API_TOKEN"):
        create_app(GatewaySettings(project="p", zone="z", instance="i"))
    with pytest.raises(UserError, match="TEXT2IMG_GATEWAY_ZONE"):
        create_app(GatewaySettings(api_token=TOKEN, project="p", instance="i"))
    short = tmp_path / "token"
    short.write_text("short")
    with pytest.raises(UserError, match="shorter"):
        create_app(GatewaySettings(api_token_file=str(short), project="p", zone="z", instance="i"))

"""Issue 20 items 1, 2 and 5 against the real gateway in front of the real service (tiny
model) and the fake Compute API: no request without the right token reaches Compute or
the service by any method, path spelling, request form or override header; anonymous
requests cannot lock the owner out; every answer of the gateway is JSON with a code."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import httpx
import pytest

from tests.gateway.front_door_stack import (
    AUTH,
    Stack,
    front_door_stack,
    raw_request,
    vm_service_env,
)
from text2img.engines.base import Engine
from text2img.engines.registry import load_engine

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
OPEN_PATHS = ("/", "/favicon.ico", "/healthz", "/static/app.js", "/static/x")
# targets that name the API through the page's open paths (decoded or encoded)
TRICKS = (
    "/static/../v1/images/generations",
    "/static/%2e%2e/v1/images/generations",
    "/static/%2E%2E/v1/status",
    "/static/..%2fv1%2fjobs",
    "/static/..%2Fv1%2Fstatus",
    "/static/..%5cv1%5cstatus",
    "/static\\..\\v1\\status",
    "/static/./../v1/jobs/abc",
    "/./v1/status",
    "/static/%1b",
    "/v1/status%1b",
    "/static/%0A",
    "/static/%00",
    "/static/%ff",
)
ABSOLUTE = (
    ("POST", "http://x/healthz"),
    ("GET", "http://x/v1/status"),
    ("POST", "http://x/static/app.js"),
    ("DELETE", "http://x/static/../v1/jobs/abc"),
)
OVERRIDES = ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")


@pytest.fixture(scope="module")
def engine() -> Engine:
    return load_engine("tiny", device="cpu")


@pytest.fixture(scope="module")
def stack(engine: Engine) -> Iterator[Stack]:
    with front_door_stack(engine, max_auth_failures=1000) as running:
        yield running


def _probes() -> list[tuple[str, str, dict[str, str], bool]]:
    """(method, target, headers, chunked): the issue's 52 probes and more."""
    probes = [(m, p, {}, False) for m, p in itertools.product(METHODS, OPEN_PATHS)]
    probes += [(m, t, {}, False) for m, t in itertools.product(("GET", "POST", "DELETE"), TRICKS)]
    probes += [(m, t, {}, False) for m, t in ABSOLUTE]
    probes += [
        (m, p, {name: "GET"}, False)
        for name, (m, p) in itertools.product(
            OVERRIDES, (("POST", "/healthz"), ("POST", "/static/app.js"), ("PUT", "/"))
        )
    ]
    probes += [
        ("POST", "/static/x", {}, True),
        ("POST", "/healthz", {}, True),
        ("PUT", "/", {}, True),
        ("POST", "/static/../v1/images/generations", {}, True),
        ("POST", "/STATIC/app.js", {}, False),
        ("POST", "//static//app.js//", {}, False),
    ]
    return probes


def test_the_matrix_has_at_least_the_issues_52_probes() -> None:
    probes = _probes()
    assert len(probes) >= 52
    assert len({repr(p) for p in probes}) == len(probes)  # no probe counted twice


@pytest.mark.parametrize(("method", "target", "headers", "chunked"), _probes())
def test_nothing_without_the_token_reaches_compute_or_the_service(
    stack: Stack, method: str, target: str, headers: dict[str, str], chunked: bool
) -> None:
    calls_before = sum(stack.fake.calls.values())
    hits_before = len(stack.upstream_hits)
    body = b'{"prompt": "x"}' if method in ("POST", "PUT", "PATCH") else b""
    answer = raw_request(stack.port, method, target, headers, body, chunked=chunked)
    assert sum(stack.fake.calls.values()) == calls_before, (method, target)
    assert stack.upstream_hits[hits_before:] == [], (method, target)
    assert answer.status is not None
    if method in ("GET", "HEAD") and answer.status == 200:
        # the page's own files and /healthz, answered by the gateway itself
        path = target.removeprefix("http://x")
        assert path.rstrip("/").replace("//", "/") in OPEN_PATHS or path == "/", target
        return
    assert answer.status in (400, 401, 404), (method, target, answer.status)
    if method != "HEAD":
        error = answer.json()["error"]  # JSON with a code, never plain text
        expected = {400: "invalid_path", 401: "invalid_api_key", 404: "not_found"}
        assert error["code"] == expected[answer.status], (method, target, error)
    if answer.status == 401:
        assert answer.headers["www-authenticate"] == 'Bearer realm="text2img"'


def test_open_paths_refuse_every_other_method_without_the_token(stack: Stack) -> None:
    for method, path in itertools.product(
        ("POST", "PUT", "PATCH", "DELETE", "OPTIONS"), OPEN_PATHS
    ):
        answer = raw_request(stack.port, method, path, {}, b"{}")
        assert answer.status == 401, (method, path)


@pytest.mark.parametrize("target", TRICKS)
def test_path_tricks_are_refused_even_with_the_token(stack: Stack, target: str) -> None:
    """Refused outright, not cleaned up and forwarded: the service would otherwise run a
    different path from the one the gateway checked."""
    hits = len(stack.upstream_hits)
    answer = raw_request(stack.port, "POST", target, AUTH, b"{}")
    assert answer.status == 400
    assert answer.json()["error"]["code"] == "invalid_path"
    assert stack.upstream_hits[hits:] == []


def _work(hits: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """What reached the service other than the gateway's own readiness probe."""
    return [hit for hit in hits if hit[1] not in ("/readyz", "/v1/ready")]


def test_the_checked_path_is_exactly_the_forwarded_path(stack: Stack) -> None:
    hits = len(stack.upstream_hits)
    answer = raw_request(stack.port, "GET", "//v1//status/?x=1", AUTH)
    assert answer.status == 200, answer.body
    assert answer.json()["ready"] is True
    assert _work(stack.upstream_hits[hits:]) == [("GET", "/v1/status")]


def test_method_override_headers_never_reach_the_service(stack: Stack) -> None:
    hits = len(stack.upstream_hits)
    answer = raw_request(
        stack.port, "GET", "/v1/status", {**AUTH, "X-HTTP-Method-Override": "DELETE"}
    )
    assert answer.status == 200
    assert _work(stack.upstream_hits[hits:]) == [("GET", "/v1/status")]


def test_the_service_and_the_gateway_send_the_same_401(stack: Stack) -> None:
    through_gateway = httpx.get(stack.gateway + "/v1/models")
    direct = httpx.get(stack.service + "/v1/models")
    assert through_gateway.status_code == direct.status_code == 401
    assert through_gateway.json() == direct.json()
    assert through_gateway.headers["www-authenticate"] == direct.headers["www-authenticate"]


def test_the_vm_service_trusts_the_forwarded_client() -> None:
    """systemd/startup.sh writes TEXT2IMG_TRUST_FORWARDED=true into service.env."""
    assert vm_service_env()["TEXT2IMG_TRUST_FORWARDED"] == "true"


def test_ten_anonymous_requests_do_not_lock_the_owner_out(engine: Engine) -> None:
    """The issue's reproduction: `curl -XPOST -d '{}' $GW/static/..%2fv1%2fstatus` ten
    times (here thirty), then the owner's own request."""
    with front_door_stack(engine) as running:
        for _ in range(30):
            raw_request(running.port, "POST", "/static/..%2fv1%2fstatus", {}, b"{}")
            raw_request(running.port, "POST", "/static/x", {}, b"{}")
            raw_request(running.port, "POST", "/v1/images/generations", {}, b"{}")
        owner = httpx.get(running.gateway + "/v1/status", headers=AUTH, timeout=30)
        assert owner.status_code == 200, owner.text
        assert owner.json()["ready"] is True
        assert sum(running.fake.calls.values()) <= 1  # the owner's own instances.get


def test_wrong_tokens_from_strangers_do_not_throttle_the_gateway_or_the_owner(
    engine: Engine,
) -> None:
    """The service behind the gateway keys its throttle on the forwarded client: a
    stranger who guesses tokens at the service (here straight at it, with forged
    X-Forwarded-For values) blocks only the address it forwarded, never the gateway."""
    with front_door_stack(engine) as running:
        for i in range(30):
            stranger = {
                "Authorization": "Bearer wrong-token-0123456789",
                "X-Forwarded-For": "203.0.113.9",
            }
            httpx.get(running.service + "/v1/status", headers=stranger)
            if i == 11:
                blocked = httpx.get(
                    running.service + "/v1/status",
                    headers={**AUTH, "X-Forwarded-For": "203.0.113.9"},
                )
                assert blocked.status_code == 429
        owner = httpx.get(running.gateway + "/v1/status", headers=AUTH, timeout=30)
        assert owner.status_code == 200, owner.text


def test_no_token_is_not_a_wrong_token_at_the_service(engine: Engine) -> None:
    """A local script polling without a token is refused but never throttled (24.5)."""
    with front_door_stack(engine) as running:
        codes = {httpx.get(running.service + "/readyz").status_code for _ in range(25)}
        assert codes == {401}
        assert httpx.get(running.service + "/readyz", headers=AUTH).status_code == 200

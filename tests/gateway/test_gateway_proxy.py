"""Proxying to a ready service: streaming both ways, status codes and headers kept."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.fakes.compute import FakeCompute
from tests.gateway.gateway_support import AUTH, BIG_SIZE, TOKEN, VM, Upstream


@pytest.fixture
def gateway(make_gateway: Callable[..., str], fake: FakeCompute) -> str:
    fake.set_status(VM, "RUNNING")
    return make_gateway()


def test_sse_events_arrive_before_the_upstream_finishes(gateway: str, upstream: Upstream) -> None:
    with httpx.stream("GET", gateway + "/sse", headers=AUTH, timeout=10) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["cache-control"] == "no-cache"
        lines = resp.iter_lines()
        first = _next_event(lines)
        # the upstream is still holding the stream open: nothing was buffered
        assert first == ("progress", {"fraction": 0.1})
        assert not upstream.sse_finished.is_set()
        upstream.release_sse.set()
        assert _next_event(lines) == ("progress", {"fraction": 1.0})
        assert _next_event(lines) == ("done", {})


def _next_event(lines: Iterator[str]) -> tuple[str, object]:
    event, data = "", ""
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and event:
            return event, json.loads(data)
    raise AssertionError("stream ended")


def test_large_body_streams_through_with_its_headers(gateway: str) -> None:
    digest = hashlib.sha256()
    size = 0
    with httpx.stream("GET", gateway + "/big", headers=AUTH, timeout=30) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "image/png"
        assert resp.headers["content-disposition"] == 'attachment; filename="big.png"'
        assert resp.headers["cache-control"] == "private, max-age=60"
        assert int(resp.headers["content-length"]) == BIG_SIZE
        for chunk in resp.iter_raw():
            digest.update(chunk)
            size += len(chunk)
    expected = hashlib.sha256(bytes(range(256)) * 4096 * (BIG_SIZE // (256 * 4096)))
    assert size == BIG_SIZE
    assert digest.hexdigest() == expected.hexdigest()


def test_chunked_upload_reaches_the_service(gateway: str, upstream: Upstream) -> None:
    payload = b"\x89PNG" + bytes(range(256)) * 200  # just under the 64 KiB body limit

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(payload), 4096):
            yield payload[i : i + 4096]

    resp = httpx.post(
        gateway + "/echo?x=1&y=%E3%83%86",
        headers={**AUTH, "Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "drop"},
        content=chunks(),
        timeout=30,
    )
    assert resp.status_code == 201
    body = resp.json()
    assert body["size"] == len(payload)
    assert body["sha256"] == hashlib.sha256(payload).hexdigest()
    assert body["query"] == "x=1&y=%E3%83%86"
    seen = upstream.seen[-1]
    assert seen["authorization"] == f"Bearer {TOKEN}"  # the service checks it too
    assert "x-secret-hop" not in seen  # named in Connection: hop-by-hop
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["host"] != gateway.removeprefix("http://")  # Host is the upstream's own


def test_status_codes_and_retry_after_are_preserved(gateway: str) -> None:
    resp = httpx.post(gateway + "/busy", headers=AUTH)
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "7"
    assert resp.headers["x-upstream"] == "yes"
    assert resp.json()["error"]["code"] == "busy"
    missing = httpx.get(gateway + "/no/such/path", headers=AUTH)
    assert missing.status_code == 404


def test_observing_requests_are_proxied_when_ready(gateway: str, fake: FakeCompute) -> None:
    resp = httpx.get(gateway + "/v1/status", headers=AUTH)
    assert resp.status_code == 200
    assert resp.json()["idle_seconds"] == 12.5
    # readiness is cached: a second request does not ask Compute again
    calls = fake.calls["get"]
    httpx.get(gateway + "/v1/status", headers=AUTH)
    assert fake.calls["get"] == calls


def test_client_leaving_drops_the_upstream_request(gateway: str, upstream: Upstream) -> None:
    """The service cancels a generation whose client left; through the gateway too."""
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway + "/slow", headers=AUTH, json={"prompt": "x"}, timeout=0.5)
    assert upstream.slow_disconnected.wait(5.0)


@pytest.mark.slow
def test_a_service_that_does_not_answer_gets_a_clear_504(
    make_gateway: Callable[..., str], fake: FakeCompute
) -> None:
    fake.set_status(VM, "RUNNING")
    url = make_gateway(read_timeout_s=0.5)
    resp = httpx.get(url + "/hang", headers=AUTH, timeout=10)
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "upstream_timeout"


def test_a_broken_upstream_connection_gets_a_clear_502(
    make_gateway: Callable[..., str], fake: FakeCompute
) -> None:
    """The VM dies while the service works on the request."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def accept_and_drop() -> None:
        for _ in range(3):
            conn, _ = server.accept()
            data = conn.recv(65536)
            if b"/v1/ready" in data:
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                conn.close()
                continue
            conn.close()  # no answer at all
            return

    threading.Thread(target=accept_and_drop, daemon=True).start()
    fake.set_status(VM, "RUNNING")
    port = server.getsockname()[1]
    url = make_gateway(upstream_url=f"http://127.0.0.1:{port}")
    try:
        resp = httpx.post(url + "/v1/images/generations", headers=AUTH, json={}, timeout=10)
    finally:
        server.close()
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "upstream_failed"
    assert "try again" in resp.json()["error"]["message"]


def test_a_stream_the_service_breaks_off_ends_with_an_error_event(
    gateway: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level("WARNING", logger="text2img.gateway"),
        httpx.stream("GET", gateway + "/sse-dies", headers=AUTH, timeout=10) as resp,
    ):
        assert resp.status_code == 200
        lines = resp.iter_lines()
        assert _next_event(lines) == ("progress", {"fraction": 0.1})
        kind, data = _next_event(lines)
    assert kind == "error"
    assert isinstance(data, dict)
    assert data["error"]["code"] == "upstream_failed"
    broke = [r for r in caplog.records if "broke off" in r.getMessage()]
    assert broke
    assert all(r.exc_info is None for r in broke)
    gateway_errors = [r for r in caplog.records if r.name.startswith("text2img.gateway")]
    assert all(r.levelname != "ERROR" for r in gateway_errors)

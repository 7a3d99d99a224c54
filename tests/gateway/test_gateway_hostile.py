"""The gateway against hostile or unlucky clients: floods before the token, stalled
connections, forged X-Forwarded-For, near-miss paths that must not wake the VM, and a
fresh instance whose Direct VPC egress is still warming up."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.fakes.asgi_server import serve_in_thread
from tests.fakes.compute import FakeCompute
from tests.fakes.raw_http import answer_or_close, chunked_flood, slow_sender
from tests.gateway.gateway_support import AUTH, TOKEN, VM, Upstream
from text2img.gateway.app import create_app
from text2img.slow_clients import header_timeout_protocol

FLOOD = 300 * 1024 * 1024
READ_AT_MOST = 16 * 1024 * 1024


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_floods_are_refused_before_their_body(
    make_gateway: Callable[..., str], fake: FakeCompute, upstream: Upstream
) -> None:
    url = make_gateway(max_auth_failures=3)
    wrong = {"Authorization": "Bearer wrong-token-xxxxxxxx"}
    for headers in ({}, {}, {}, {}, wrong, wrong, wrong):
        # floods without any token are refused but not counted: only wrong tokens are
        result = chunked_flood(_port(url), "/v1/images/generations", headers, FLOOD)
        assert result.status == 401, result.head
        assert result.sent < READ_AT_MOST
    throttled = chunked_flood(_port(url), "/v1/images/generations", wrong, FLOOD)
    assert throttled.status == 429
    assert throttled.sent < READ_AT_MOST
    assert sum(fake.calls.values()) == 0
    # with the token, a body over 64 KiB is cut off mid-stream and never reaches the VM
    fake.set_status(VM, "RUNNING")
    other = make_gateway()
    big = chunked_flood(_port(other), "/v1/images/generations", AUTH, FLOOD)
    assert big.status == 413, big.head
    assert big.sent < READ_AT_MOST
    assert upstream.seen == []


def test_stalled_connections_do_not_stop_a_normal_request(
    fake: FakeCompute, upstream: Upstream, static_dir: Path
) -> None:
    fake.set_status(VM, "RUNNING")
    settings = fake.gateway_settings(TOKEN, VM, upstream_url=upstream.url, body_timeout_s=1.0)
    app = create_app(settings, static_root=static_dir)
    with serve_in_thread(app, http=header_timeout_protocol(1.0)) as url:
        port = _port(url)
        stalled = [slow_sender(port, b"GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthoriz")
                   for _ in range(25)]  # fmt: skip
        head = (f"POST /v1/translations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}"
                "\r\nContent-Length: 1000\r\n\r\n{").encode()  # fmt: skip
        stalled += [slow_sender(port, head) for _ in range(25)]
        try:
            resp = httpx.post(url + "/v1/translations", headers=AUTH, content=b"{}", timeout=10)
            assert resp.status_code == 201
            for sock in stalled:
                status, closed = answer_or_close(sock, timeout=10)
                assert closed
                assert status in (408, None)
        finally:
            for sock in stalled:
                sock.close()
    assert len(upstream.seen) == 1  # only the normal request reached the service


def _wrong(forwarded: str) -> dict[str, str]:
    return {"Authorization": "Bearer wrong-token-0000000000", "X-Forwarded-For": forwarded}


@pytest.mark.slow
def test_forged_forwarded_entries_neither_hide_nor_frame(
    make_gateway: Callable[..., str], fake: FakeCompute
) -> None:
    url = make_gateway(max_auth_failures=10)
    # 50 wrong tokens under 50 forged first entries: Cloud Run's appended entry counts
    codes = [
        httpx.get(url + "/v1/status", headers=_wrong(f"198.51.100.{i}, 203.0.113.9")).status_code
        for i in range(50)
    ]
    assert codes[:10] == [401] * 10
    assert set(codes[10:]) == {429}
    # 10 wrong tokens claiming someone else's address do not lock that address out
    for _ in range(10):
        httpx.get(url + "/v1/status", headers=_wrong("192.0.2.44, 203.0.113.10"))
    victim = httpx.get(url + "/v1/ready", headers={**AUTH, "X-Forwarded-For": "192.0.2.44"})
    assert victim.json()["error"]["code"] == "asleep"
    assert fake.calls["start"] == 0


def test_near_miss_paths_do_not_wake_the_vm(
    make_gateway: Callable[..., str], fake: FakeCompute
) -> None:
    url = make_gateway(state_cache_s=0.0)
    near_misses = [
        ("OPTIONS", "/v1/ready"),
        ("GET", "/v1/ready/"),
        ("GET", "//v1/ready"),
        ("GET", "/V1/READY"),
        ("HEAD", "/v1/status"),
        ("GET", "/v1/images/generations"),
        ("POST", "/v1/status"),
        ("GET", "/v1/models"),
        ("GET", "/openapi.json"),
        ("GET", "/no/such/thing"),
        ("DELETE", "/v1/jobs/abc/events"),
    ]
    for method, path in near_misses:
        resp = httpx.request(method, url + path, headers=AUTH)
        assert resp.status_code == 503, (method, path)
        if method != "HEAD":
            assert resp.json()["error"]["code"] == "asleep", (method, path)
    assert fake.calls["start"] == 0
    # the documented work paths do wake it, also written sloppily
    resp = httpx.post(url + "//v1/images/generations/", headers=AUTH, json={"prompt": "x"})
    assert resp.json()["error"]["phase"] == "starting_vm"
    assert fake.calls["start"] == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_warming_egress_gets_503_connecting_then_goes_through(
    make_gateway: Callable[..., str], fake: FakeCompute
) -> None:
    """A fresh gateway instance cannot connect to a ready VM for its first seconds (Direct
    VPC egress warming up): 503 with Retry-After, never 502 or "booting"."""
    fake.set_status(VM, "RUNNING")
    fake.instances[VM].last_start = "2020-01-01T00:00:00.000-00:00"  # up for long
    port = _free_port()
    url = make_gateway(upstream_url=f"http://127.0.0.1:{port}", state_cache_s=0.0,
                       egress_warmup_s=0.3)  # fmt: skip
    during = httpx.post(url + "/v1/translations", headers=AUTH, json={}, timeout=20)
    assert during.status_code == 503, during.text
    body = during.json()["error"]
    assert body["code"] == "waking"
    assert body["phase"] == "connecting"
    assert 1 <= int(during.headers["retry-after"]) <= 5
    vm_service = Upstream()
    with serve_in_thread(vm_service.app(), port=port):
        after = httpx.post(url + "/v1/translations", headers=AUTH, content=b"hi", timeout=20)
        assert after.status_code == 201, after.text
    assert fake.calls["start"] == 0


def test_egress_that_comes_up_within_the_retry_budget_is_not_seen(
    make_gateway: Callable[..., str], fake: FakeCompute
) -> None:
    """Connections refused for the first second, within the warm-up budget: the first
    request already goes through."""
    fake.set_status(VM, "RUNNING")
    fake.instances[VM].last_start = "2020-01-01T00:00:00.000-00:00"  # up for long: ready
    port = _free_port()
    url = make_gateway(upstream_url=f"http://127.0.0.1:{port}", egress_warmup_s=8.0)
    vm_service = Upstream()
    started = threading.Event()
    stop = threading.Event()

    def late_start() -> None:
        time.sleep(1.0)
        with serve_in_thread(vm_service.app(), port=port):
            started.set()
            stop.wait(30)

    thread = threading.Thread(target=late_start, daemon=True)
    thread.start()
    try:
        resp = httpx.post(url + "/v1/translations", headers=AUTH, content=b"hi", timeout=30)
        assert resp.status_code == 201, resp.text
        assert started.is_set()
    finally:
        stop.set()
        thread.join(15)

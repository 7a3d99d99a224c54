"""Waking the VM: one start for a burst, the waking body, phases, start failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.fakes.asgi_server import serve_in_thread
from tests.fakes.compute import FakeCompute
from tests.gateway.gateway_support import AUTH, VM, Upstream


def _waking(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 503, resp.text
    body = resp.json()["error"]
    assert body["type"] == "unavailable"
    assert int(resp.headers["retry-after"]) == body["retry_after"]
    assert resp.headers["cache-control"] == "no-store"
    return body


async def test_twenty_concurrent_requests_start_the_vm_exactly_once(
    make_gateway: Callable[..., str], fake: FakeCompute
) -> None:
    fake.boot_delay_s = None  # stays STAGING until the test says otherwise
    url = make_gateway()
    async with httpx.AsyncClient(headers=AUTH, timeout=30) as client:
        responses = await asyncio.gather(
            *(client.post(url + "/v1/images/generations", json={"prompt": "x"}) for _ in range(20))
        )
        for resp in responses:
            body = _waking(resp)
            assert body["code"] == "waking"
            assert body["phase"] == "starting_vm"
            assert 0 < body["eta_seconds"] <= 100
            assert "waking the GPU VM" in str(body["message"]) or "starting" in str(body["message"])
        assert fake.calls["start"] == 1
        assert fake.instances[VM].status == "STAGING"
        # more polls while it boots still do not start it again
        again = await client.post(url + "/v1/images/generations", json={"prompt": "x"})
        assert _waking(again)["phase"] == "starting_vm"
    assert fake.calls["start"] == 1


async def test_burst_while_loading_shares_one_probe(
    make_gateway: Callable[..., str], fake: FakeCompute, upstream: Upstream
) -> None:
    """20 requests while the model loads: not 20 slow probes one after another."""
    fake.set_status(VM, "RUNNING")
    upstream.ready = False
    upstream.readyz_delay_s = 0.5
    url = make_gateway(state_cache_s=5.0)
    async with httpx.AsyncClient(headers=AUTH, timeout=30) as client:
        responses = await asyncio.gather(*(client.get(url + "/v1/models") for _ in range(20)))
    assert {_waking(r)["phase"] for r in responses} == {"loading_model"}
    assert upstream.readyz_calls == 1  # not 20 probes of 0.5 s one after another
    assert fake.calls["get"] == 1


def test_wake_phases_then_proxy_when_ready(
    make_gateway: Callable[..., str], fake: FakeCompute, upstream: Upstream
) -> None:
    fake.boot_delay_s = None
    url = make_gateway(state_cache_s=0.0, ready_cache_s=0.0)
    post = lambda: httpx.post(url + "/v1/translations", headers=AUTH, content=b"hello")  # noqa: E731
    assert _waking(post())["phase"] == "starting_vm"
    fake.finish_boot(VM)
    # the VM runs but the service does not answer yet: booting
    upstream.ready = False
    body = _waking(post())
    assert body["phase"] == "loading_model"
    upstream.ready = True
    resp = post()
    assert resp.status_code == 201
    assert resp.json()["size"] == 5
    assert fake.calls["start"] == 1


def test_running_vm_without_service_is_booting(
    make_gateway: Callable[..., str], fake: FakeCompute
) -> None:
    fake.set_status(VM, "RUNNING")
    # nothing listens on this port: the VM is up but the service is not
    url = make_gateway(upstream_url="http://127.0.0.1:9", state_cache_s=0.0)
    body = _waking(httpx.get(url + "/v1/models", headers=AUTH))
    assert body["phase"] == "booting"
    assert fake.calls["start"] == 0


def test_observing_requests_do_not_wake_the_vm(
    make_gateway: Callable[..., str], fake: FakeCompute
) -> None:
    url = make_gateway()
    for path in ("/readyz", "/v1/ready", "/metrics"):
        resp = httpx.get(url + path, headers=AUTH)
        assert resp.status_code == 503
        body = resp.json()["error"]
        assert body["code"] == "asleep"
        assert body["vm_status"] == "TERMINATED"
        assert "scripts/vm start" in body["message"]
    assert fake.calls["start"] == 0
    assert fake.calls["get"] >= 1
    # the page asks for /v1/status when it opens: that wakes the VM while the user types
    assert _waking(httpx.get(url + "/v1/status", headers=AUTH))["phase"] == "starting_vm"
    assert fake.calls["start"] == 1


def test_stopping_vm_is_started_after_it_stopped(
    make_gateway: Callable[..., str], fake: FakeCompute
) -> None:
    fake.set_status(VM, "STOPPING")
    url = make_gateway(state_cache_s=0.0)
    body = _waking(httpx.post(url + "/v1/translations", headers=AUTH, json={}))
    assert "powering off" in str(body["message"])
    assert fake.calls["start"] == 0
    fake.set_status(VM, "TERMINATED")
    _waking(httpx.post(url + "/v1/translations", headers=AUTH, json={}))
    assert fake.calls["start"] == 1


def test_upstream_gone_after_ready_turns_into_waking(
    make_gateway: Callable[..., str], fake: FakeCompute
) -> None:
    """The VM powered itself off: a cached "ready" must not turn into a proxy error."""
    fake.set_status(VM, "RUNNING")
    vm_service = Upstream()
    ctx = serve_in_thread(vm_service.app())
    service_url = ctx.__enter__()
    url = make_gateway(upstream_url=service_url, state_cache_s=0.0, ready_cache_s=600.0)
    assert httpx.post(url + "/v1/translations", headers=AUTH, content=b"x").status_code == 201
    ctx.__exit__(None, None, None)  # the service process dies with the VM
    fake.power_off(VM)
    resp = httpx.post(url + "/v1/translations", headers=AUTH, content=b"x")
    assert _waking(resp)["phase"] == "starting_vm"
    assert fake.calls["start"] == 1


@pytest.mark.parametrize(
    ("failure", "via_operation", "cause", "advice"),
    [
        ("ZONE_RESOURCE_POOL_EXHAUSTED", True, "ZONE_RESOURCE_POOL_EXHAUSTED", "config set zone"),
        ("ZONE_RESOURCE_POOL_EXHAUSTED", False, "ZONE_RESOURCE_POOL_EXHAUSTED", "another zone"),
        ("QUOTA_EXCEEDED", False, "QUOTA_EXCEEDED", "Request more GPU quota"),
        ("QUOTA_EXCEEDED", True, "QUOTA_EXCEEDED", "NVIDIA_T4_GPUS"),
        ("PERMISSION_DENIED", False, "PERMISSION_DENIED", "service account"),
        ("NOT_FOUND", False, "NOT_FOUND", "pulumi up"),
    ],
)
def test_start_failures_are_explained(
    make_gateway: Callable[..., str],
    fake: FakeCompute,
    failure: str,
    via_operation: bool,
    cause: str,
    advice: str,
) -> None:
    fake.inject("start", failure, via_operation=via_operation, times=None)
    url = make_gateway(failure_hold_s=60.0)
    resp = httpx.post(url + "/v1/images/generations", headers=AUTH, json={"prompt": "x"})
    assert resp.status_code == 503
    body = resp.json()["error"]
    assert body["code"] == "start_failed"
    assert body["cause"] == cause
    assert advice in body["message"]
    assert int(resp.headers["retry-after"]) > 0
    # the failure is held: retries do not hammer the Compute API
    again = httpx.post(url + "/v1/images/generations", headers=AUTH, json={"prompt": "x"})
    assert again.json()["error"]["cause"] == cause
    assert fake.calls["start"] == 1


def test_capacity_failure_reported_later_on_the_operation(
    make_gateway: Callable[..., str], fake: FakeCompute, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compute accepts the start, then fails the operation (no GPU in the zone)."""
    from text2img.gateway import vm_backend

    monkeypatch.setattr(vm_backend, "OPERATION_POLL_S", 0.0)
    fake.boot_delay_s = None
    url = make_gateway(state_cache_s=0.0)
    assert _waking(httpx.post(url + "/v1/jobs", headers=AUTH))["phase"] == "starting_vm"
    op = next(iter(fake.operations.values()))
    op.done, op.error = True, ("ZONE_RESOURCE_POOL_EXHAUSTED", "The zone does not have enough")
    fake.set_status(VM, "TERMINATED")
    time.sleep(0.01)
    body = httpx.post(url + "/v1/jobs", headers=AUTH).json()["error"]
    assert body["code"] == "start_failed"
    assert body["cause"] == "ZONE_RESOURCE_POOL_EXHAUSTED"
    assert fake.calls["operation"] >= 1
    assert fake.calls["start"] == 1


def test_vm_with_an_old_token_is_explained(
    make_gateway: Callable[..., str], fake: FakeCompute, upstream: Upstream
) -> None:
    """After a token rotation the VM keeps the old token until it reboots."""
    fake.set_status(VM, "RUNNING")
    url = make_gateway(api_token="a-brand-new-token-0123456789")
    resp = httpx.post(
        url + "/echo", headers={"Authorization": "Bearer a-brand-new-token-0123456789"}
    )
    assert resp.status_code == 503
    body = resp.json()["error"]
    assert body["code"] == "start_failed"
    assert body["cause"] == "TOKEN_MISMATCH"
    assert "scripts/vm stop" in body["message"]
    assert upstream.seen == []  # nothing was proxied with a token the service refuses


def test_a_service_that_throttles_the_old_token_is_still_a_mismatch(
    make_gateway: Callable[..., str], fake: FakeCompute, upstream: Upstream
) -> None:
    """After many probes with the rotated token the service answers 429 auth_throttled
    to the gateway itself: still a token mismatch, not a VM that is booting."""
    fake.set_status(VM, "RUNNING")
    upstream.throttle_wrong_tokens = True
    new = "a-brand-new-token-0123456789"
    url = make_gateway(api_token=new)
    resp = httpx.post(url + "/v1/jobs", headers={"Authorization": f"Bearer {new}"})
    assert resp.json()["error"]["cause"] == "TOKEN_MISMATCH"


def test_a_compute_hiccup_is_retried_soon(
    make_gateway: Callable[..., str], fake: FakeCompute, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 5xx from Compute's instances.get is not held like a capacity failure."""
    from text2img.gateway import waker

    monkeypatch.setattr(waker, "TRANSIENT_HOLD_S", 0.3)
    url = make_gateway(state_cache_s=0.0, failure_hold_s=60.0)
    fake.inject("get", "INTERNAL", times=1)
    first = httpx.post(url + "/v1/jobs", headers=AUTH)
    body = first.json()["error"]
    assert body["code"] == "start_failed"
    assert "try again" in body["message"]
    assert first.headers["retry-after"] == "1"
    time.sleep(0.4)
    assert _waking(httpx.post(url + "/v1/jobs", headers=AUTH))["phase"] == "starting_vm"
    assert fake.calls["start"] == 1


def test_suspended_vm_is_resumed_not_started(
    make_gateway: Callable[..., str], fake: FakeCompute
) -> None:
    fake.set_status(VM, "SUSPENDED")
    url = make_gateway()
    assert _waking(httpx.post(url + "/v1/jobs", headers=AUTH))["phase"] == "starting_vm"
    assert fake.calls["resume"] == 1
    assert fake.calls["start"] == 0

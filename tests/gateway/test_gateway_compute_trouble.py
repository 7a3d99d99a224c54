"""Issue 20 items 6 and 7 with the real VM backend and the fake Compute API: a hanging
Compute API delays nobody else, its back-off counts from the failure, a start is never
sent twice, a rate limit is not GPU quota, and a boot that found its port taken says so."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from tests.fakes.compute import FakeCompute
from tests.gateway.gateway_support import AUTH, VM, Upstream
from text2img import gce
from text2img.gateway import waker


async def test_requests_are_not_serialised_behind_a_hanging_compute_call(
    make_gateway: Callable[..., str], fake: FakeCompute
) -> None:
    gate = threading.Event()
    fake.gates["get"] = gate
    url = make_gateway(state_cache_s=0.0)
    try:
        async with httpx.AsyncClient(headers=AUTH, timeout=60) as client:
            first = asyncio.ensure_future(client.post(url + "/v1/jobs"))
            while fake.calls["get"] == 0:
                await asyncio.sleep(0.02)
            others = await asyncio.gather(*(client.post(url + "/v1/jobs") for _ in range(8)))
            assert not first.done()
            for resp in others:
                assert resp.status_code == 503
                body = resp.json()["error"]
                assert body["code"] == "waking"
                assert body["phase"] == "starting_vm"
                assert int(resp.headers["retry-after"]) == body["retry_after"] >= 3
            assert fake.calls["get"] == 1  # nobody else called Compute meanwhile
            gate.set()
            assert (await first).json()["error"]["code"] == "waking"
    finally:
        gate.set()
    assert fake.calls["start"] == 1


def test_a_start_that_times_out_is_not_sent_again_and_its_back_off_counts_from_the_failure(
    make_gateway: Callable[..., str], fake: FakeCompute, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gce, "CALL_TIMEOUT_S", 0.5)
    monkeypatch.setattr(waker, "TRANSIENT_HOLD_S", 0.3)
    gate = threading.Event()
    fake.gates["start"] = gate
    fake.boot_delay_s = None
    url = make_gateway(state_cache_s=0.0, start_cooldown_s=30.0, failure_hold_s=60.0)
    try:
        first = httpx.post(url + "/v1/jobs", headers=AUTH, timeout=30)
        body = first.json()["error"]
        assert body["code"] == "start_failed", body  # the client gave up after 0.5 s
        # held for the back-off after the failure (0.3 s is shorter than the 0.5 s call:
        # counted from before the call it would already be over)
        gets = fake.calls["get"]
        held = httpx.post(url + "/v1/jobs", headers=AUTH).json()["error"]
        assert held["code"] == "start_failed"
        assert fake.calls["get"] == gets
        time.sleep(0.4)
        after = httpx.post(url + "/v1/jobs", headers=AUTH).json()["error"]
        assert after["code"] == "waking"  # the start may have reached Compute: wait for it
    finally:
        gate.set()
    assert fake.calls["start"] == 1


def test_an_api_rate_limit_is_not_reported_as_gpu_quota(
    make_gateway: Callable[..., str], fake: FakeCompute
) -> None:
    fake.inject("get", "RATE_LIMITED")
    url = make_gateway(failure_hold_s=60.0)
    resp = httpx.post(url + "/v1/jobs", headers=AUTH)
    body = resp.json()["error"]
    assert body["cause"] == "RATE_LIMITED"
    assert "quota" not in body["message"].split("(")[0].lower()
    assert body["retry_after"] <= 10  # passing, not held like quota (60 s)


def test_real_gpu_quota_still_is(make_gateway: Callable[..., str], fake: FakeCompute) -> None:
    fake.inject("start", "QUOTA_EXCEEDED")
    body = httpx.post(make_gateway() + "/v1/jobs", headers=AUTH).json()["error"]
    assert body["cause"] == "QUOTA_EXCEEDED"
    assert "NVIDIA_T4_GPUS" in body["message"]


def test_pool_exhaustion_names_the_move_command(
    make_gateway: Callable[..., str], fake: FakeCompute
) -> None:
    fake.inject("start", "ZONE_RESOURCE_POOL_EXHAUSTED")
    body = httpx.post(make_gateway() + "/v1/jobs", headers=AUTH).json()["error"]
    assert body["cause"] == "ZONE_RESOURCE_POOL_EXHAUSTED"
    assert "scripts/vm move --zone" in body["message"]


def test_a_boot_that_found_its_port_taken_is_reported_as_such(
    make_gateway: Callable[..., str], fake: FakeCompute, upstream: Upstream
) -> None:
    fake.boot_delay_s = None
    upstream.ready = False
    url = make_gateway(
        state_cache_s=0.0, ready_cache_s=0.0, start_cooldown_s=0.0, upstream_port=8080
    )
    post = lambda: httpx.post(url + "/v1/jobs", headers=AUTH)  # noqa: E731
    assert post().json()["error"]["code"] == "waking"
    fake.finish_boot(VM)
    fake.instances[VM].guest_attributes["text2img/boot-failure"] = (
        "text2img: PORT_IN_USE: 10.0.0.2:8080 is already in use by another program"
    )
    fake.power_off(VM)
    resp = post()
    body = resp.json()["error"]
    assert (resp.status_code, body["code"], body["cause"]) == (503, "start_failed", "PORT_IN_USE")
    assert "port 8080" in body["message"]
    assert fake.calls["start"] == 1

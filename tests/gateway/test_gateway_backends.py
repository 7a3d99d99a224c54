"""Issue 22 item 3, the proof: the gateway's policy drives any backend of
`text2img.gateway.backend`. The same waking, 503 and proxy tests run against the VM
backend (through the fake Compute API) and against a fake backend that knows nothing of
Compute (always ready, or starting for a while), with no change to the policy code."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from tests.fakes.asgi_server import serve_in_thread
from tests.fakes.compute import FakeCompute
from tests.gateway.gateway_support import AUTH, TOKEN, VM, Upstream
from text2img.gateway.app import create_app
from text2img.gateway.backend import (
    Asleep,
    Backend,
    BackendFailure,
    BackendState,
    Failed,
    Starting,
    Up,
)
from text2img.gateway.settings import GatewaySettings


@dataclass
class FakeBackend:
    """A backend with no cloud behind it: asleep until started, then `Starting` for
    `starting_checks` state() calls, then up at `url`."""

    url: str
    asleep: bool = True
    starting_checks: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    starts: int = 0
    fail_start: BackendFailure | None = None
    gate: threading.Event | None = None  # state() hangs until it is set

    def state(self) -> BackendState:
        if self.gate is not None:
            self.gate.wait(timeout=30)
        if self.asleep:
            return Asleep("SLEEPING", "the fake backend sleeps")
        if self.starting_checks > 0:
            self.starting_checks -= 1
            return Starting("booting", None, "the fake backend is starting")
        return Up(self.url, None)

    def start(self) -> None:
        self.starts += 1
        if self.fail_start is not None:
            raise self.fail_start
        self.asleep = False

    def start_failure(self, *, ended_asleep: bool) -> Failed | None:
        return None

    def upstream_headers(self) -> Mapping[str, str]:
        return self.headers


class Driver(Protocol):
    """What a test needs to steer a backend, whichever it is."""

    def backend(self, upstream: Upstream) -> Backend | None: ...
    def settings(self) -> dict[str, Any]: ...
    def put_to_sleep(self) -> None: ...
    def hold_starting(self) -> None: ...
    def finish_starting(self) -> None: ...
    def make_ready(self) -> None: ...
    def fail_next_start(self) -> None: ...
    def starts(self) -> int: ...


@dataclass
class VmDriver:
    fake: FakeCompute

    def backend(self, upstream: Upstream) -> Backend | None:
        return None  # the settings' own: VmBackend on the fake Compute API

    def settings(self) -> dict[str, Any]:
        f = self.fake
        return {
            "project": f.project,
            "zone": f.zone,
            "instance": VM,
            "compute_endpoint": f.endpoint,
        }

    def put_to_sleep(self) -> None:
        self.fake.set_status(VM, "TERMINATED")

    def hold_starting(self) -> None:
        self.fake.boot_delay_s = None

    def finish_starting(self) -> None:
        self.fake.finish_boot(VM)

    def make_ready(self) -> None:
        self.fake.set_status(VM, "RUNNING")

    def fail_next_start(self) -> None:
        self.fake.inject("start", "QUOTA_EXCEEDED")

    def starts(self) -> int:
        return self.fake.calls["start"]


@dataclass
class FakeDriver:
    fake_backend: FakeBackend | None = None

    def backend(self, upstream: Upstream) -> Backend | None:
        if self.fake_backend is None:
            self.fake_backend = FakeBackend(upstream.url)
        else:
            self.fake_backend.url = upstream.url
        return self.fake_backend

    def settings(self) -> dict[str, Any]:
        return {"project": "unused", "zone": "unused", "instance": "unused"}

    def _b(self) -> FakeBackend:
        if self.fake_backend is None:
            self.fake_backend = FakeBackend("")
        return self.fake_backend

    def put_to_sleep(self) -> None:
        self._b().asleep = True

    def hold_starting(self) -> None:
        self._b().starting_checks = 10_000

    def finish_starting(self) -> None:
        self._b().starting_checks = 0

    def make_ready(self) -> None:
        self._b().asleep = False
        self._b().starting_checks = 0

    def fail_next_start(self) -> None:
        self._b().fail_start = BackendFailure("NO_CAPACITY", "no GPU free", lasting=True)

    def starts(self) -> int:
        return self._b().starts


@pytest.fixture(params=["vm", "fake"])
def driver(request: pytest.FixtureRequest, fake: FakeCompute) -> Driver:
    return VmDriver(fake) if request.param == "vm" else FakeDriver()


@pytest.fixture
def start_gateway(
    driver: Driver, upstream: Upstream, static_dir: Path
) -> Iterator[Callable[..., str]]:
    stack: list[Any] = []

    def start(**overrides: Any) -> str:
        values = {
            "api_token": TOKEN,
            "upstream_url": upstream.url,
            "typical_wake_s": 100.0,
            "egress_warmup_s": 0.5,
            **driver.settings(),
            **overrides,
        }
        app = create_app(
            GatewaySettings(**values), backend=driver.backend(upstream), static_root=static_dir
        )
        ctx = serve_in_thread(app)
        stack.append(ctx)
        return ctx.__enter__()

    yield start
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)


def _waking(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 503, resp.text
    body = resp.json()["error"]
    assert int(resp.headers["retry-after"]) == body["retry_after"] >= 1
    return dict(body)


async def test_a_burst_starts_the_backend_once_then_proxies(
    driver: Driver, start_gateway: Callable[..., str], upstream: Upstream
) -> None:
    driver.put_to_sleep()
    driver.hold_starting()
    url = start_gateway(state_cache_s=0.0, ready_cache_s=0.0)
    async with httpx.AsyncClient(headers=AUTH, timeout=30) as client:
        burst = await asyncio.gather(
            *(client.post(url + "/v1/images/generations", json={"prompt": "x"}) for _ in range(10))
        )
        for resp in burst:
            body = _waking(resp)
            assert body["code"] == "waking"
            assert 5 <= body["eta_seconds"] <= 100
        assert driver.starts() == 1
        driver.finish_starting()
        done = await client.post(url + "/v1/images/generations", json={"prompt": "x"})
    assert done.status_code == 201, done.text  # the stand-in's echo
    assert driver.starts() == 1


def test_pollers_never_start_a_sleeping_backend(
    driver: Driver, start_gateway: Callable[..., str]
) -> None:
    driver.put_to_sleep()
    url = start_gateway()
    for path in ("/v1/ready", "/readyz", "/metrics", "/v1/models", "/v1/nothing"):
        body = _waking_or_asleep(httpx.get(url + path, headers=AUTH))
        assert body["code"] == "asleep", path
    assert driver.starts() == 0


def _waking_or_asleep(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 503, resp.text
    return dict(resp.json()["error"])


def test_a_failed_start_is_503_start_failed_and_held(
    driver: Driver, start_gateway: Callable[..., str]
) -> None:
    driver.put_to_sleep()
    driver.fail_next_start()
    url = start_gateway(failure_hold_s=60.0)
    first = _waking(httpx.post(url + "/v1/jobs", headers=AUTH))
    assert first["code"] == "start_failed"
    again = _waking(httpx.post(url + "/v1/jobs", headers=AUTH))
    assert again["cause"] == first["cause"]
    assert driver.starts() == 1


def test_a_ready_backend_is_proxied_with_bodies_and_status_kept(
    driver: Driver, start_gateway: Callable[..., str], upstream: Upstream
) -> None:
    driver.make_ready()
    url = start_gateway()
    resp = httpx.post(url + "/echo?a=1", headers=AUTH, content=b"x" * 5000)
    assert resp.status_code == 201
    assert resp.json()["size"] == 5000
    assert resp.json()["query"] == "a=1"
    busy = httpx.post(url + "/busy", headers=AUTH)
    assert (busy.status_code, busy.headers["retry-after"]) == (429, "7")
    assert driver.starts() == 0


def test_the_backends_own_headers_reach_the_upstream(upstream: Upstream, static_dir: Path) -> None:
    """The hook a Cloud Run backend needs for its Google ID token (sent in
    X-Serverless-Authorization, so the user's bearer token still reaches the service)."""
    backend = FakeBackend(
        upstream.url, asleep=False, headers={"X-Serverless-Authorization": "Bearer id"}
    )
    settings = GatewaySettings(api_token=TOKEN, project="p", zone="z", instance="i")
    with serve_in_thread(create_app(settings, backend=backend, static_root=static_dir)) as url:
        assert httpx.post(url + "/echo", headers=AUTH, content=b"{}").status_code == 201
    seen = upstream.seen[-1]
    assert seen["x-serverless-authorization"] == "Bearer id"
    assert seen["authorization"] == AUTH["Authorization"]


async def test_a_hanging_backend_call_delays_nobody_else(
    upstream: Upstream, static_dir: Path
) -> None:
    """While one request waits for a backend call that hangs, the others get 503 with a
    phase and Retry-After instead of queueing behind it (issue 20 item 6)."""
    gate = threading.Event()
    backend = FakeBackend(upstream.url, asleep=False, gate=gate)
    settings = GatewaySettings(api_token=TOKEN, project="p", zone="z", instance="i")
    with serve_in_thread(create_app(settings, backend=backend, static_root=static_dir)) as url:
        async with httpx.AsyncClient(headers=AUTH, timeout=60) as client:
            first = asyncio.ensure_future(client.post(url + "/echo", content=b"{}"))
            await asyncio.sleep(0.3)  # the first one is inside state() now
            others = await asyncio.gather(
                *(client.post(url + "/echo", content=b"{}") for _ in range(5))
            )
            assert not first.done()  # still waiting for the hanging call
            for resp in others:
                body = _waking(resp)
                assert body["code"] == "waking"
                assert body["phase"]
            gate.set()
            assert (await first).status_code == 201


@dataclass
class SkewedBackend(FakeBackend):
    """Starting, with a start time an hour in the future (a clock that disagrees)."""

    def state(self) -> BackendState:
        return Starting("booting", time.time() + 3600, "starting")


def test_eta_stays_within_the_expected_wake_and_retry_after_is_jittered(
    upstream: Upstream, static_dir: Path
) -> None:
    settings = GatewaySettings(
        api_token=TOKEN, project="p", zone="z", instance="i", typical_wake_s=100.0,
        state_cache_s=0.0,
    )  # fmt: skip
    backend = SkewedBackend(upstream.url)
    with serve_in_thread(create_app(settings, backend=backend, static_root=static_dir)) as url:
        bodies = [_waking(httpx.post(url + "/v1/jobs", headers=AUTH)) for _ in range(30)]
    assert {b["eta_seconds"] for b in bodies} == {100}  # not 3700
    # the same state, different Retry-After: clients do not all come back at once
    assert len({b["retry_after"] for b in bodies}) > 1
    assert all(10 <= b["retry_after"] <= 13 for b in bodies)

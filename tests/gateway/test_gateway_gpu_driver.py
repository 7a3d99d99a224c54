"""A VM whose GPU driver never loads powers itself off after leaving the guest attribute
text2img/boot-failure (systemd/startup.sh); the gateway reports it as 503 start_failed,
cause GPU_DRIVER, instead of waking the VM again and again."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.fakes.compute import FakeCompute
from tests.gateway.gateway_support import AUTH, VM, Upstream

REASON = (
    "text2img: GPU driver did not load: nvidia-smi failed for 180s on kernel 6.8.0-1021-gcp "
    "(NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.)"
)


def test_a_wake_that_ends_in_a_driver_poweroff_is_reported_not_repeated(
    make_gateway: Callable[..., str], fake: FakeCompute, upstream: Upstream
) -> None:
    fake.boot_delay_s = None
    upstream.ready = False
    url = make_gateway(state_cache_s=0.0, ready_cache_s=0.0, start_cooldown_s=0.0)
    post = lambda: httpx.post(url + "/v1/images/generations", headers=AUTH, json={"prompt": "x"})  # noqa: E731

    assert post().json()["error"]["code"] == "waking"
    assert fake.calls["start"] == 1
    fake.finish_boot(VM)
    assert post().json()["error"]["phase"] in ("booting", "loading_model")
    # the startup script finds no driver: guest attribute, then poweroff
    fake.instances[VM].guest_attributes["text2img/boot-failure"] = REASON
    fake.power_off(VM)

    resp = post()
    assert resp.status_code == 503
    body = resp.json()["error"]
    assert body["code"] == "start_failed"
    assert body["cause"] == "GPU_DRIVER"
    assert "GPU driver did not load" in body["message"]
    assert "6.8.0-1021-gcp" in body["message"]
    assert int(resp.headers["retry-after"]) >= 1
    assert fake.calls["guest"] == 1
    # held like the other lasting causes: no second start right away
    assert post().json()["error"]["cause"] == "GPU_DRIVER"
    assert fake.calls["start"] == 1


def test_a_plain_idle_poweroff_wakes_normally(
    make_gateway: Callable[..., str], fake: FakeCompute
) -> None:
    # no report from the guest: an asleep VM is started, as always
    url = make_gateway(state_cache_s=0.0, ready_cache_s=0.0, start_cooldown_s=0.0)
    resp = httpx.post(url + "/v1/images/generations", headers=AUTH, json={"prompt": "x"})
    assert resp.json()["error"]["code"] == "waking"
    assert fake.calls["start"] == 1
    assert fake.calls["guest"] == 0  # nothing to ask: this gateway started no wake yet

"""Service-side items of issue 20.7 and 22.4: seeds of a batch stay in the accepted range,
every file of the page carries the CSP, and the idle clock reads the shared table."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from api_support import AUTH, FAST64
from fastapi.testclient import TestClient
from serve_process import serving

from tests.fakes.raw_http import header_flood
from text2img.api.schemas import MAX_REQUEST_SEED
from text2img.front_door import CSP

MiB = 1024 * 1024


def test_the_seeds_of_a_batch_wrap_instead_of_leaving_the_range(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client()
    body = {"prompt": "a red cube", "n": 3, "seed": MAX_REQUEST_SEED, **FAST64}
    batch = client.post("/v1/images/generations", json=body, headers=AUTH)
    assert batch.status_code == 200, batch.text
    seeds = [image["seed"] for image in batch.json()["data"]]
    assert seeds == [MAX_REQUEST_SEED, 0, 1]
    # each returned seed is accepted again (draws the same image: test_api_scheduling)
    for seed in seeds:
        again = client.post(
            "/v1/images/generations", json={**body, "n": 1, "seed": seed}, headers=AUTH
        )
        assert again.status_code == 200, again.text
        assert again.json()["data"][0]["seed"] == seed


def test_every_file_of_the_page_carries_the_csp(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    for path in ("/", "/static/index.html", "/favicon.ico"):
        resp = client.get(path)
        assert resp.status_code == 200, path
        assert resp.headers["content-security-policy"] == CSP, path
        assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]
        assert resp.headers["x-content-type-options"] == "nosniff", path


def test_only_work_counts_as_activity(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    state = client.app.state.service  # type: ignore[attr-defined]
    for path in ("/v1/status", "/readyz", "/v1/ready", "/metrics", "/healthz", "/", "/nope"):
        client.get(path, headers=AUTH)
    assert state.activity.last_activity_at is None
    client.post("/v1/translations", json={"text": "hello"}, headers=AUTH)
    assert state.activity.last_activity_at is not None


def test_header_floods_cost_the_real_server_a_bounded_amount(tmp_path: Path) -> None:
    """`text2img serve` as deployed: 8 connections each sending 64 MB of headers (the
    issue measured +640 MB for one, 2.4 GB for eight) are refused at the bound."""
    with serving(tmp_path) as server:
        before = server.rss_bytes()
        with ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(lambda _: header_flood(server.port, b"X-A: b\r\n", 64 * MiB), range(8))
            )
        grown = server.rss_bytes() - before
        print(f"server RSS grew {grown / MiB:.1f} MiB over 8 header floods")
        assert all(r.status == 431 and r.closed for r in results), results
        assert grown < 64 * MiB
        assert httpx.get(server.url + "/healthz", timeout=10).json() == {"status": "ok"}

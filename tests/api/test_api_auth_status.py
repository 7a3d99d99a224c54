"""Auth (bearer token, throttling), /healthz, /readyz, /v1/status idle semantics, metrics,
the static UI, and the job API."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from api_support import AUTH, FAST64, TOKEN, job_events
from fastapi.testclient import TestClient

from text2img.api.app import create_app
from text2img.api.state import Activity
from text2img.engines.base import Engine
from text2img.errors import UserError

from api_support import make_settings, wait_ready  # isort: skip

PROTECTED = [
    ("GET", "/readyz"),
    ("GET", "/v1/ready"),
    ("GET", "/v1/status"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("POST", "/v1/images/generations"),
    ("POST", "/v1/translations"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/job_x"),
    ("DELETE", "/v1/jobs/job_x"),
    ("GET", "/v1/jobs/job_x/events"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_everything_but_health_and_ui_needs_the_token(
    make_client: Callable[..., TestClient], method: str, path: str
) -> None:
    client = make_client()
    for headers in ({}, {"Authorization": "Bearer wrong-token-000000000"},
                    {"Authorization": f"Basic {TOKEN}"}):  # fmt: skip
        r = client.request(method, path, headers=headers, json={"prompt": "a", "text": "a"})
        assert r.status_code == 401, (path, headers, r.text)
        assert r.json()["error"]["type"] == "authentication_error"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in r.text


def test_open_routes(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    assert client.get("/healthz").json() == {"status": "ok"}
    page = client.get("/")
    assert page.status_code == 200
    assert 'lang="ja"' in page.text
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    for asset in ("/static/app.js", "/static/style.css", "/favicon.ico"):
        assert client.get(asset).status_code == 200
    assert "cdn" not in page.text.lower()


def test_without_a_token_nothing_is_asked(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_token=None)
    assert client.get("/v1/status").status_code == 200


def test_bad_token_settings_fail_with_what_to_do(tmp_path: object) -> None:
    with pytest.raises(UserError, match="shorter than"):
        create_app(make_settings(api_token="short"))
    with pytest.raises(UserError, match="cannot read the API token file"):
        create_app(make_settings(api_token=None, api_token_file="/nonexistent/token"))


def test_token_from_a_file(make_client: Callable[..., TestClient], tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "token"
    path.write_text("file-token-0123456789abcdef\n")
    client = make_client(api_token=None, api_token_file=str(path))
    assert client.get("/v1/status", headers=AUTH).status_code == 401
    ok = client.get("/v1/status", headers={"Authorization": "Bearer file-token-0123456789abcdef"})
    assert ok.status_code == 200


def test_repeated_failures_are_throttled(make_client: Callable[..., TestClient]) -> None:
    client = make_client(auth_max_failures=3, auth_block_s=30)
    bad = {"Authorization": "Bearer guess-0000000000000000"}
    for _ in range(3):
        assert client.get("/v1/status", headers=bad).status_code == 401
    blocked = client.get("/v1/status", headers=bad)
    assert blocked.status_code == 429
    assert blocked.json()["error"]["code"] == "auth_throttled"
    assert 1 <= int(blocked.headers["Retry-After"]) <= 30
    # while blocked, even the right token is refused (no online guessing)
    assert client.get("/v1/status", headers=AUTH).status_code == 429
    assert client.get("/healthz").status_code == 200


def test_readyz_while_loading_and_after(tiny_engine: Engine) -> None:
    import threading

    gate = threading.Event()

    class SlowLoad:
        def __getattr__(self, name: str) -> object:
            return getattr(tiny_engine, name)

    app = create_app(make_settings(), engine=tiny_engine)
    service = app.state.service
    original = service.start_loading

    def gated(load: Callable[[], Engine]) -> None:
        def slow() -> Engine:
            gate.wait(10)
            return load()

        original(slow)

    service.start_loading = gated
    with TestClient(app) as client:
        for path in ("/readyz", "/v1/ready"):  # the second passes through Cloud Run
            r = client.get(path, headers=AUTH)
            assert r.status_code == 503
            assert r.json() == {"ready": False, "phase": "loading_model"}
        r = client.post("/v1/images/generations", json={"prompt": "a", **FAST64}, headers=AUTH)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "waking"
        assert r.json()["error"]["phase"] == "loading_model"
        assert client.get("/v1/status", headers=AUTH).json()["ready"] is False
        gate.set()
        wait_ready(client)
        assert client.get("/readyz", headers=AUTH).json() == {"ready": True, "model": "tiny"}


def test_a_model_that_cannot_load_says_why() -> None:
    from text2img.settings import Settings

    failures: list[str] = []
    settings = Settings(_env_file=None, model="glide", model_cache="/nonexistent/cache",
                        translation="off", api_token=TOKEN)  # fmt: skip
    app = create_app(settings, on_load_failure=failures.append)
    with TestClient(app) as client:
        assert app.state.service.wait_loaded(30) is False
        r = client.get("/readyz", headers=AUTH)
        assert r.status_code == 503
        assert r.json()["phase"] == "failed"
        assert "text2img download" in r.json()["message"]
        r = client.post("/v1/images/generations", json={"prompt": "a"}, headers=AUTH)
        assert r.status_code == 503
        assert "text2img download" in r.json()["error"]["message"]
    assert failures
    assert "text2img download" in failures[0]


def test_idle_clock() -> None:
    now = [1000.0]
    activity = Activity(clock=lambda: now[0])
    now[0] += 30
    assert activity.idle_seconds(busy=False) == 30
    activity.begin()
    assert activity.idle_seconds(busy=False) == 0
    now[0] += 5
    activity.end()
    assert activity.last_activity_at == 1035
    now[0] += 7
    assert activity.idle_seconds(busy=False) == 7
    assert activity.idle_seconds(busy=True) == 0
    activity.begin()
    activity.end(touch=False)  # e.g. a refused token: not activity
    assert activity.idle_seconds(busy=False) == 7


def test_status_polls_are_not_activity_but_requests_are(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client()
    s = client.get("/v1/status", headers=AUTH).json()
    assert set(s) == {"ready", "model", "idle_seconds", "jobs_in_flight", "queue_depth",
                      "started_at", "last_activity_at"}  # fmt: skip
    assert s["ready"] is True
    assert s["model"] == "tiny"
    assert s["last_activity_at"] is None
    time.sleep(0.3)
    for path in (
        "/healthz",
        "/readyz",
        "/v1/ready",
        "/metrics",
        "/v1/status",
        "/",
        "/static/app.js",
    ):
        client.get(path, headers=AUTH)
    wrong = {"Authorization": "Bearer wrong-token-0000000"}
    client.get("/v1/status", headers=wrong)
    assert (
        client.post("/v1/images/generations", json={"prompt": "a"}, headers=wrong).status_code
        == 401
    )
    s = client.get("/v1/status", headers=AUTH).json()
    assert s["last_activity_at"] is None
    assert s["idle_seconds"] >= 0.3
    r = client.post("/v1/images/generations", json={"prompt": "a", **FAST64}, headers=AUTH)
    assert r.status_code == 200
    s = client.get("/v1/status", headers=AUTH).json()
    assert s["last_activity_at"] is not None
    assert s["idle_seconds"] < 0.3


def test_status_is_busy_while_a_job_runs(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    job = client.post("/v1/jobs", json={"prompt": "x", "size": "256x256", "steps": 250},
                      headers=AUTH).json()  # fmt: skip
    time.sleep(0.5)
    s = client.get("/v1/status", headers=AUTH).json()
    assert s["idle_seconds"] == 0
    assert s["jobs_in_flight"] == 1
    assert client.delete(f"/v1/jobs/{job['id']}", headers=AUTH).json()["status"] == "cancelled"
    s = client.get("/v1/status", headers=AUTH).json()
    assert s["jobs_in_flight"] == 0


def test_metrics_are_exposed(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    client.post("/v1/images/generations", json={"prompt": "a", "n": 2, **FAST64}, headers=AUTH)
    text = client.get("/metrics", headers=AUTH).text
    for name in ("text2img_http_requests_total", "text2img_http_request_duration_seconds_bucket",
                 "text2img_queue_depth", "text2img_jobs_in_flight", "text2img_idle_seconds",
                 "text2img_images_generated_total 2.0", "text2img_batch_images_bucket",
                 'route="/v1/images/generations",status="200"'):  # fmt: skip
        assert name in text, name


@pytest.mark.slow
def test_job_api_with_server_sent_events(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    body = {"prompt": "a boat", "n": 2, "size": "256x256", "steps": 3, "upsample_steps": 2}
    job = client.post("/v1/jobs", json=body, headers=AUTH)
    assert job.status_code == 202
    job_id = job.json()["id"]
    events = job_events(client, job_id)
    assert events[-1][0] == "done"
    assert events[-1][1]["status"] == "succeeded"
    progress = [e for k, e in events if k == "progress"]
    stages = {p["progress"]["stage"] for p in progress}  # type: ignore[index]
    assert {"base", "upsample"} <= stages
    fractions = [p["progress"]["fraction"] for p in progress]  # type: ignore[index]
    assert fractions == sorted(fractions)
    assert len(set(fractions)) >= 3
    done = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
    assert done["status"] == "succeeded"
    assert len(done["data"]) == 2
    assert done["progress"]["fraction"] == 1.0


def test_the_precision_setting_reaches_the_engine() -> None:
    """TEXT2IMG_DTYPE / `serve --dtype`: bfloat16 runs on the CPU, float16 there is refused."""
    app = create_app(make_settings(dtype="bfloat16"))
    with TestClient(app) as client:
        wait_ready(client)
        assert app.state.service.engine.dtype == "bfloat16"
        # plumbing only: no image (this CPU may emulate bfloat16, ~1 min per image);
        # bfloat16 images are checked in tests/engines/glide/test_bf16.py
        assert client.get("/readyz", headers=AUTH).json()["ready"] is True

    app = create_app(make_settings(dtype="float16", device="cpu"), on_load_failure=lambda _: None)
    with TestClient(app) as client:
        assert app.state.service.wait_loaded(30) is False
        r = client.get("/readyz", headers=AUTH)
        assert r.json()["phase"] == "failed"
        assert "bfloat16" in r.json()["message"]  # says what to use instead

"""Backend `cloudrun` (issue 23): the gateway calls a private GPU service with a Google ID
token for the service's URL. The GPU service here is a stand-in for Cloud Run's front end
(it verifies the token's signature against a key this test controls and its audience
against its own URL, like Cloud Run's IAM check, and can hold requests as a cold start
does) in front of the real service with the tiny engine."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt, jwt
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.api.api_support import make_settings
from tests.fakes.asgi_server import serve_in_thread
from tests.gateway.gateway_support import AUTH, TOKEN
from text2img.api.app import create_app as create_service
from text2img.engines import registry
from text2img.gateway.app import create_app
from text2img.gateway.cloudrun_backend import ID_TOKEN_HEADER, REFRESH_BEFORE_S, CloudRunBackend
from text2img.gateway.settings import GatewaySettings

KID = "test-key"


def new_key() -> tuple[crypt.RSASigner, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return crypt.RSASigner.from_string(private, key_id=KID), public


@dataclass
class Mint:
    """Signs ID tokens the way Google's metadata server hands them out (RS256, one hour)."""

    signer: crypt.RSASigner
    lifetime_s: float = 3600.0
    audiences: list[str] = field(default_factory=list)
    wall: Callable[[], float] = time.time

    def __call__(self, audience: str) -> tuple[str, float]:
        self.audiences.append(audience)
        now = self.wall()
        claims = {
            "iss": "https://accounts.google.com",
            "aud": audience,
            "sub": "1234567890",
            "email": "gw@project.iam.gserviceaccount.com",
            "iat": int(now),
            "exp": int(now + self.lifetime_s),
        }
        return jwt.encode(self.signer, claims).decode(), now + self.lifetime_s


@dataclass
class CloudRunFront:
    """Cloud Run's front end for one private service: IAM check, then the container."""

    service_url: str
    public_key: bytes
    audience: str = ""  # its own URL, known once it listens
    hold_startup_until: float = 0.0  # monotonic: a cold start holds requests until then
    verified: int = 0
    refused: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        client = httpx.AsyncClient(base_url=self.service_url, timeout=120)

        async def handle(request: Request) -> Response:
            header = request.headers.get(ID_TOKEN_HEADER, "")
            try:
                claims = jwt.decode(
                    header.removeprefix("Bearer "),
                    certs={KID: self.public_key},
                    audience=self.audience,
                )
            except (ValueError, jwt.exceptions.GoogleAuthError) as exc:
                self.refused.append(str(exc))
                return Response("Forbidden", status_code=403)
            assert claims["iss"] == "https://accounts.google.com"
            self.verified += 1
            while time.monotonic() < self.hold_startup_until:  # no instance yet
                await asyncio.sleep(0.05)
            headers = {
                k: v for k, v in request.headers.items() if k.lower() not in (
                    ID_TOKEN_HEADER.lower(), "host", "content-length")
            }  # fmt: skip
            try:
                content = await request.body()
            except ClientDisconnect:  # the gateway gave up waiting (its probe timed out)
                return Response(status_code=499)
            upstream = client.build_request(
                request.method, request.url.path, headers=headers, content=content
            )
            resp = await client.send(upstream, stream=True)
            return StreamingResponse(
                resp.aiter_raw(),
                status_code=resp.status_code,
                headers={k: v for k, v in resp.headers.items() if k.lower() != "content-length"},
                background=None,
            )

        methods = ["GET", "POST", "DELETE"]
        return Starlette(routes=[Route("/{path:path}", handle, methods=methods)])


@pytest.fixture(scope="module")
def service_url() -> Iterator[str]:
    engine = registry.load_engine("tiny", device="cpu")
    app = create_service(make_settings(api_token=TOKEN), engine=engine)
    with serve_in_thread(app) as url:
        end = time.monotonic() + 30
        while httpx.get(f"{url}/startup").status_code != 200:
            assert time.monotonic() < end
            time.sleep(0.05)
        yield url


@pytest.fixture(scope="module")
def key() -> tuple[crypt.RSASigner, bytes]:
    return new_key()


@pytest.fixture
def front(service_url: str, key: tuple[crypt.RSASigner, bytes]) -> Iterator[CloudRunFront]:
    stand_in = CloudRunFront(service_url, key[1])
    with serve_in_thread(stand_in.app()) as url:
        stand_in.audience = url
        yield stand_in


def gateway(front: CloudRunFront, mint: Mint, **settings: Any) -> Iterator[str]:
    backend = CloudRunBackend(front.audience, token_source=mint, probe_timeout_s=1.0)
    values: dict[str, Any] = {"api_token": TOKEN, "backend": "cloudrun",
                              "upstream_url": front.audience, **settings}  # fmt: skip
    app = create_app(GatewaySettings(**values), backend=backend)
    with serve_in_thread(app) as url:
        yield url


def test_requests_carry_an_id_token_for_the_service_url(
    front: CloudRunFront, key: tuple[crypt.RSASigner, bytes]
) -> None:
    mint = Mint(key[0])
    for url in gateway(front, mint):
        body = {"prompt": "a cube", "size": "64x64", "steps": 2, "seed": 5}
        r = httpx.post(f"{url}/v1/images/generations", headers=AUTH, json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]) == 1
        # the user's token still decides at the gateway
        bad = {"Authorization": "Bearer wrong-token-0123456789"}
        assert httpx.post(f"{url}/v1/images/generations", headers=bad, json=body).status_code == 401
    assert front.refused == []
    assert front.verified >= 2  # the probe and the generation
    assert set(mint.audiences) == {front.audience}
    assert len(mint.audiences) == 1  # one token, reused while it is valid


@pytest.mark.parametrize("wrong", ["audience", "key"])
def test_a_token_cloud_run_refuses_is_reported_not_proxied(
    front: CloudRunFront, key: tuple[crypt.RSASigner, bytes], wrong: str
) -> None:
    signer = new_key()[0] if wrong == "key" else key[0]
    mint = Mint(signer)
    source = (
        (lambda aud: mint("https://another-service.a.run.app")) if wrong == "audience" else mint
    )
    backend = CloudRunBackend(front.audience, token_source=source, probe_timeout_s=1.0)
    app = create_app(GatewaySettings(api_token=TOKEN, backend="cloudrun",
                                     upstream_url=front.audience), backend=backend)  # fmt: skip
    with serve_in_thread(app) as url:
        r = httpx.post(f"{url}/v1/images/generations", headers=AUTH, json={"prompt": "a cube"})
    assert r.status_code == 503
    assert "roles/run.invoker" in r.json()["error"]["message"]
    assert front.verified == 0
    assert front.refused  # the stand-in saw and refused it
    assert ("audience" if wrong == "audience" else "signature") in front.refused[0].lower()


def test_id_token_is_refreshed_before_it_expires(key: tuple[crypt.RSASigner, bytes]) -> None:
    now = [1_000_000.0]
    mint = Mint(key[0], lifetime_s=3600, wall=lambda: now[0])
    backend = CloudRunBackend("https://gpu-abc.a.run.app", token_source=mint,
                              wall=lambda: now[0])  # fmt: skip
    first = backend.upstream_headers()[ID_TOKEN_HEADER]
    now[0] += 3600 - REFRESH_BEFORE_S - 1  # still more than the margin left
    assert backend.upstream_headers()[ID_TOKEN_HEADER] == first
    now[0] += 2  # within the margin: a new one
    second = backend.upstream_headers()[ID_TOKEN_HEADER]
    assert second != first
    assert mint.audiences == ["https://gpu-abc.a.run.app"] * 2
    claims = jwt.decode(second.removeprefix("Bearer "), verify=False)
    assert claims["exp"] == int(now[0] + 3600)


def test_cold_start_answers_503_with_its_phase_then_serves(
    front: CloudRunFront, key: tuple[crypt.RSASigner, bytes]
) -> None:
    front.hold_startup_until = time.monotonic() + 3.0  # Cloud Run starting an instance
    for url in gateway(front, Mint(key[0]), typical_wake_s=40.0, state_cache_s=0.0):
        body = {"prompt": "a cube", "size": "64x64", "steps": 2}
        r = httpx.post(f"{url}/v1/images/generations", headers=AUTH, json=body, timeout=60)
        assert r.status_code == 503
        error = r.json()["error"]
        assert error["phase"] == "starting"
        assert "Cloud Run" in error["message"]
        assert 1 <= int(r.headers["Retry-After"]) <= 15  # the gateway adds some jitter
        end = time.monotonic() + 30
        while r.status_code == 503:
            assert time.monotonic() < end
            time.sleep(float(r.headers["Retry-After"]) / 4)
            r = httpx.post(f"{url}/v1/images/generations", headers=AUTH, json=body, timeout=60)
        assert r.status_code == 200


def test_many_concurrent_streams_through_the_gateway_lose_nothing(
    front: CloudRunFront, key: tuple[crypt.RSASigner, bytes]
) -> None:
    streams = 8

    async def one(client: httpx.AsyncClient, seed: int) -> list[dict[str, Any]]:
        body = {"prompt": f"cube {seed}", "size": "64x64", "steps": 2, "seed": seed,
                "n": 2, "stream": True, "partial_images": 1}  # fmt: skip
        events = []
        async with client.stream("POST", "/v1/images/generations", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        return events

    async def run(url: str) -> list[list[dict[str, Any]]]:
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120) as client:
            return await asyncio.gather(*(one(client, 100 * i) for i in range(streams)))

    for url in gateway(front, Mint(key[0])):
        results = asyncio.run(run(url))
    for i, events in enumerate(results):
        done = [e for e in events if e["type"] == "image_generation.completed"]
        partial = [e for e in events if e["type"] == "image_generation.partial_image"]
        assert [e["seed"] for e in done] == [100 * i, 100 * i + 1]  # its own images, all
        assert sorted(e["image_index"] for e in partial) == [0, 1]
        for e in done:
            assert base64.b64decode(e["b64_json"]).startswith(b"\x89PNG")
        assert events[-1]["type"] == "image_generation.completed"
    assert front.refused == []

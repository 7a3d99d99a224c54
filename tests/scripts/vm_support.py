"""Fixtures for scripts/vm: the fake Compute API, stub `pulumi`/`gcloud`, a real gateway."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.asgi_server import serve_in_thread
from tests.fakes.compute import FakeCompute
from text2img.gateway.app import create_app

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "scripts-test-token-0123456789"
VM = "text2img-vm"


@pytest.fixture(scope="session")
def vm_module() -> ModuleType:
    if str(ROOT / "scripts") not in sys.path:  # as when scripts/vm.py runs as a script
        sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("scripts_vm", ROOT / "scripts" / "vm.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["scripts_vm"] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Service:
    ready: bool = True
    idle_seconds: float = 240.0
    jobs: int = 0

    def app(self) -> Starlette:
        async def readyz(request: Request) -> Response:
            if self.ready:
                return JSONResponse({"ready": True, "model": "tiny"})
            return JSONResponse({"ready": False, "phase": "loading_model"}, status_code=503)

        async def status(request: Request) -> Response:
            return JSONResponse(
                {
                    "ready": self.ready,
                    "model": "tiny",
                    "idle_seconds": 0.0 if self.jobs else self.idle_seconds,
                    "jobs_in_flight": self.jobs,
                    "queue_depth": 0,
                    "started_at": 0.0,
                    "last_activity_at": None,
                }
            )

        # /readyz for the gateway's own probe, /v1/ready for `scripts/vm wait`
        routes = [Route("/readyz", readyz), Route("/v1/ready", readyz), Route("/v1/status", status)]
        return Starlette(routes=routes)


@dataclass
class Env:
    fake: FakeCompute
    service: Service
    gateway_url: str
    bin_dir: Path
    gcloud_log: Path

    def outputs(self, **extra: Any) -> dict[str, Any]:
        return {
            "instance_name": VM,
            "zone": self.fake.zone,
            "project": self.fake.project,
            "url": self.gateway_url,
            "token": TOKEN,
            "hourly_cost_estimate": 0.54,
            **extra,
        }

    def set_outputs(self, outputs: dict[str, Any] | None = None, *, fail: str = "") -> None:
        stub = self.bin_dir / "pulumi"
        if fail:
            body = f'echo "error: {fail}" >&2\nexit 255\n'
        else:
            data = json.dumps(outputs if outputs is not None else self.outputs())
            body = f"cat <<'JSON'\n{data}\nJSON\n"
        stub.write_text(
            "#!/bin/bash\n"
            '[[ "$*" == "stack output --json --show-secrets"* ]] || '
            '{ echo "unexpected: $*" >&2; exit 3; }\n' + body
        )
        stub.chmod(0o755)

    def gcloud_calls(self) -> list[list[str]]:
        if not self.gcloud_log.exists():
            return []
        return [json.loads(line) for line in self.gcloud_log.read_text().splitlines()]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "gcloud.log"
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "print('stub gcloud ran')\n"
    )
    gcloud.chmod(0o755)
    service = Service()
    with FakeCompute() as fake, serve_in_thread(service.app()) as service_url:
        fake.add_instance(VM, status="TERMINATED")
        settings = fake.gateway_settings(
            TOKEN,
            VM,
            upstream_url=service_url,
            ready_cache_s=0.0,
            state_cache_s=0.0,
        )
        with serve_in_thread(create_app(settings)) as gateway_url:
            monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
            monkeypatch.setenv("TEXT2IMG_COMPUTE_ENDPOINT", fake.endpoint)
            for name in ("PROJECT", "ZONE", "INSTANCE", "URL", "TOKEN_FILE"):
                monkeypatch.delenv(f"TEXT2IMG_VM_{name}", raising=False)
            e = Env(fake, service, gateway_url, bin_dir, log)
            e.set_outputs()
            yield e

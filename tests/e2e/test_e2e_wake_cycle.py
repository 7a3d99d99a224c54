"""The whole cost-control loop on one machine, with the real pieces:

fake Compute API  --start-->  boots the REAL service (`text2img serve --model tiny`)
                  --poweroff-> kills it
gateway (real app, real HTTP) in front; the VM's autostop program (systemd/autostop.py,
the file the VM installs byte for byte) decides when to power off; the user
looks through `scripts/vm status` and plain HTTP, as they would.

asleep -> wake (503 waking, phases) -> ready -> generate -> idle -> autostop -> asleep
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.fakes.asgi_server import serve_in_thread
from tests.fakes.compute import FakeCompute, FakeInstance
from text2img.gateway.app import create_app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "e2e-token-0123456789abcdefghij"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VM = "text2img-vm"
IDLE_MINUTES = 0.1  # 6 s: autostop's idle limit in this test
TEXT2IMG = ROOT / ".venv" / "bin" / "text2img"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


AUTOSTOP = ROOT / "systemd" / "autostop.py"  # the real file, as infra delivers it


@dataclass
class FakeVm:
    """The VM's guest: boots the service on start, dies on poweroff."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    booted_at: float = 0.0
    boots: int = 0
    log: list[str] = field(default_factory=list)

    def on_start(self, inst: FakeInstance) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("TEXT2IMG_", "GOOGLE_"))},
            "TEXT2IMG_API_TOKEN": TOKEN,
            "TEXT2IMG_TRANSLATION": "off",
            "TEXT2IMG_MODEL_CACHE": str(self.workdir / "models"),
            "OMP_NUM_THREADS": "1",
        }
        self.booted_at = time.time()
        self.boots += 1
        out = (self.workdir / f"service-{self.boots}.log").open("wb")
        self.proc = subprocess.Popen(
            [str(TEXT2IMG), "serve", "--model", "tiny", "--device", "cpu",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.log.append("boot")

    def on_stop(self, inst: FakeInstance) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.log.append("poweroff")

    def autostop(self, program: Path, fake: FakeCompute) -> str:
        """One run of the autostop timer on this VM; returns its log line."""
        uptime = self.workdir / "uptime"
        uptime.write_text(f"{time.time() - self.booted_at:.2f} 0.0\n")
        token_env = self.workdir / "service.env"
        token_env.write_text(f"TEXT2IMG_API_TOKEN={TOKEN}\n")
        poweroff = (
            f'{sys.executable} -c "import urllib.request as u; u.urlopen(u.Request('
            f"'{fake.guest_poweroff_url(VM)}', method='POST'), timeout=5)\""
        )
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TEXT2IMG_AUTOSTOP_IDLE_MINUTES": str(IDLE_MINUTES),
            "TEXT2IMG_AUTOSTOP_BOOT_GRACE_MINUTES": "5",
            "TEXT2IMG_AUTOSTOP_STATUS_URL": f"http://127.0.0.1:{self.port}/v1/status",
            "TEXT2IMG_AUTOSTOP_TOKEN_FILE": str(token_env),
            "TEXT2IMG_AUTOSTOP_PAUSE_FILE": str(self.workdir / "autostop.paused"),
            "TEXT2IMG_AUTOSTOP_STATE_FILE": str(self.workdir / "autostop.json"),
            "TEXT2IMG_AUTOSTOP_UPTIME_FILE": str(uptime),
            "TEXT2IMG_AUTOSTOP_POWEROFF_COMMAND": poweroff,
        }
        done = subprocess.run(
            [sys.executable, str(program)], env=env, capture_output=True, text=True, timeout=30,
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


@pytest.fixture
def world(tmp_path: Path, vm_module: ModuleType) -> Iterator[dict[str, Any]]:
    if not TEXT2IMG.exists():
        pytest.fail(f"{TEXT2IMG} missing: run `make venv`")
    guest = FakeVm(port=free_port(), workdir=tmp_path)
    with FakeCompute(boot_delay_s=0.5, stop_delay_s=0.3) as fake:
        fake.on_start, fake.on_stop = guest.on_start, guest.on_stop
        fake.add_instance(VM, status="TERMINATED", spot=True)
        fake.instances[VM].metadata["text2img-idle-minutes"] = str(IDLE_MINUTES)
        settings = fake.gateway_settings(
            TOKEN,
            VM,
            upstream_url=f"http://127.0.0.1:{guest.port}",
            typical_wake_s=100.0,
            state_cache_s=0.2,
            ready_cache_s=1.0,
        )
        try:
            with serve_in_thread(create_app(settings)) as gateway_url:
                yield {"fake": fake, "guest": guest, "gateway": gateway_url}
        finally:
            guest.on_stop(fake.instances[VM])


def vm_status(
    vm_module: ModuleType, world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> str:
    fake: FakeCompute = world["fake"]
    token_file = Path(world["guest"].workdir) / "token"
    token_file.write_text(TOKEN)
    os.environ["TEXT2IMG_COMPUTE_ENDPOINT"] = fake.endpoint
    try:
        code = vm_module.main(
            ["--project", fake.project, "--zone", fake.zone, "--instance", VM,
             "--url", world["gateway"], "--token-file", str(token_file), "status"]
        )  # fmt: skip
    finally:
        del os.environ["TEXT2IMG_COMPUTE_ENDPOINT"]
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_asleep_wake_generate_idle_autostop_asleep(
    world: dict[str, Any], vm_module: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    fake: FakeCompute = world["fake"]
    guest: FakeVm = world["guest"]
    url: str = world["gateway"]
    client = httpx.Client(base_url=url, headers=AUTH, timeout=120)
    program = AUTOSTOP

    # 1. asleep: the page loads, status says asleep, observing does not wake it
    assert httpx.get(url + "/").status_code == 200
    out = vm_status(vm_module, world, capsys)
    assert "state     TERMINATED (asleep" in out
    assert "spot      yes" in out
    assert client.get("/readyz").json()["error"]["code"] == "asleep"
    assert fake.calls["start"] == 0

    # 2. wake: the user's request gets 503 waking with phases until the service is ready
    request = {"prompt": "a teddy bear swimming", "n": 1, "size": "64x64", "seed": 7}
    phases: list[str] = []
    booting_status = ""
    started = time.monotonic()
    while True:
        resp = client.post("/v1/images/generations", json=request)
        if resp.status_code != 503:
            break
        err = resp.json()["error"]
        assert err["code"] == "waking", err
        assert err["type"] == "unavailable"
        assert err["phase"] in ("starting_vm", "booting", "loading_model")
        assert int(resp.headers["retry-after"]) == err["retry_after"] >= 1
        assert err["eta_seconds"] >= 1
        if not phases or phases[-1] != err["phase"]:
            phases.append(err["phase"])
        if err["phase"] != "starting_vm" and not booting_status:
            booting_status = vm_status(vm_module, world, capsys)
        assert time.monotonic() - started < 90, f"never became ready; phases {phases}"
        time.sleep(0.3)  # a real client waits Retry-After seconds
    wake_s = time.monotonic() - started
    assert phases[0] == "starting_vm"
    assert set(phases) - {"starting_vm"}, f"no boot phase seen: {phases}"
    assert fake.calls["start"] == 1
    assert guest.boots == 1
    assert "state     RUNNING (up" in booting_status
    assert "service   " in booting_status

    # 3. generate: the image comes back through the gateway
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == "tiny"
    png = base64.b64decode(body["data"][0]["b64_json"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    from PIL import Image

    assert Image.open(io.BytesIO(png)).size == (64, 64)

    # 3b. the web UI's path: a job, its progress as server-sent events, then the images
    job = client.post("/v1/jobs", json={**request, "steps": 8})
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    events: list[tuple[str, dict[str, Any]]] = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        event = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[6:])))
                if event == "done":
                    break
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done"
    assert "progress" in kinds or "queued" in kinds, kinds
    assert events[-1][1]["status"] == "succeeded", events[-1]
    finished = client.get(f"/v1/jobs/{job_id}").json()
    assert base64.b64decode(finished["data"][0]["b64_json"]).startswith(b"\x89PNG")

    # 4. running: scripts/vm status shows the service, idle time and autostop
    out = vm_status(vm_module, world, capsys)
    assert "state     RUNNING (up" in out
    assert re.search(r"service   ready, model tiny; idle \d+ s, autostop in", out), out
    client.get(f"/v1/jobs/{job_id}")  # a user request: the idle clock starts again
    first = guest.autostop(program, fake)
    assert "state=idle" in first
    assert "action=wait" in first, first

    # 5. idle -> autostop powers the VM off (the timer runs it every minute on the VM)
    deadline = time.monotonic() + 30
    lines = [first]
    while fake.instances[VM].status == "RUNNING":
        assert time.monotonic() < deadline, lines
        time.sleep(1.0)
        lines.append(guest.autostop(program, fake))
    assert any("action=poweroff" in line for line in lines), lines
    stop_deadline = time.monotonic() + 20
    while fake.instances[VM].status != "TERMINATED":
        assert time.monotonic() < stop_deadline
        time.sleep(0.1)
    assert guest.proc is None
    assert fake.calls["stop"] == 0  # the guest powered itself off; nobody called stop

    # 6. asleep again, and everything the user sees says so; the next wake uses the
    # learned wake time for its estimate
    time.sleep(1.2)  # past the gateway's readiness cache
    out = vm_status(vm_module, world, capsys)
    assert "state     TERMINATED (asleep" in out
    assert client.get("/readyz").json()["error"]["code"] == "asleep"
    again = client.post("/v1/images/generations", json=request)
    err = again.json()["error"]
    assert err["code"] == "waking"
    assert err["phase"] == "starting_vm"
    assert err["eta_seconds"] <= wake_s + 5 < 100  # learned, not the 100 s default
    assert fake.calls["start"] == 2

    # 7. `scripts/vm wait` follows the second wake to the end
    token_file = guest.workdir / "token"
    os.environ["TEXT2IMG_COMPUTE_ENDPOINT"] = fake.endpoint
    try:
        code = vm_module.main(
            ["--project", fake.project, "--zone", fake.zone, "--instance", VM, "--url", url,
             "--token-file", str(token_file), "wait", "--timeout", "90"]
        )  # fmt: skip
    finally:
        del os.environ["TEXT2IMG_COMPUTE_ENDPOINT"]
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[-1] == f"ready: {url}"
    assert guest.boots == 2

"""Autostop (systemd/autostop.py): the pure decision with a fake clock, and the real
program run against a fake /v1/status endpoint with a stub poweroff command."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.fakes.http_server import base_url, serve_http

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
MIN = 60.0
T0 = 1_800_000_000.0  # the fake clock's boot time
TOKEN = "autostop-test-token-5e1f"
THROTTLED = "429"  # in run_minutes: the service refused autostop with 429


@pytest.fixture(scope="module")
def autostop() -> ModuleType:
    path = SYSTEMD / "autostop.py"  # the real file, imported as a module
    spec = importlib.util.spec_from_file_location("text2img_autostop", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


# ---- the pure decision -------------------------------------------------------------------


def run_minutes(autostop: ModuleType, statuses: list[Any], *, paused: bool = False) -> list[Any]:
    """Feed one observation per minute after boot; returns the decisions."""
    cfg = autostop.Config(idle_minutes=20, boot_grace_minutes=30)
    state = autostop.State()
    decisions = []
    for minute, status in enumerate(statuses, start=1):
        throttled = status == THROTTLED  # the service answered 429
        obs = autostop.Observation(
            now=T0 + minute * MIN,
            uptime=minute * MIN,
            status=None if throttled else status,
            paused=paused,
            throttled=throttled,
        )
        decision, state = autostop.decide(obs, state, cfg)
        if decision.poweroff:  # as the program does after a successful poweroff
            state = dataclasses.replace(state, poweroff_at=obs.now)
        decisions.append(decision)
    return decisions


def ready(autostop: ModuleType, idle_min: float, jobs: int = 0, queue: int = 0) -> Any:
    return autostop.Status(
        ready=True, idle_seconds=idle_min * MIN, jobs_in_flight=jobs, queue_depth=queue
    )


def first_poweroff(decisions: list[Any]) -> int | None:
    """1-based minute of the first poweroff, None if never."""
    return next((i for i, d in enumerate(decisions, start=1) if d.poweroff), None)


def test_idle_past_the_limit_powers_off_exactly_once(autostop: ModuleType) -> None:
    # ready from minute 3; the last request finished at minute 5
    statuses = [None, None] + [ready(autostop, 0 if m <= 5 else m - 5) for m in range(3, 36)]
    decisions = run_minutes(autostop, statuses)
    assert first_poweroff(decisions) == 25  # 20 idle minutes after minute 5
    assert decisions[23].state == "idle"
    assert not decisions[23].poweroff
    # asked once; while the shutdown runs it is not asked again ...
    assert [d.state for d in decisions[25:29]] == ["powering-off"] * 4
    assert sum(d.poweroff for d in decisions[:29]) == 1
    # ... but a VM still up 5 minutes after a poweroff request asks again
    assert decisions[29].poweroff


def test_idle_counts_from_boot_not_from_before_it(autostop: ModuleType) -> None:
    # a status claiming more idle time than the VM has been up (e.g. a clock jump)
    decisions = run_minutes(autostop, [ready(autostop, 500)] * 25)
    assert first_poweroff(decisions) == 20


def test_a_running_or_queued_job_is_never_interrupted(autostop: ModuleType) -> None:
    busy = [ready(autostop, 999, jobs=1)] * 60 + [ready(autostop, 999, queue=2)] * 60
    decisions = run_minutes(autostop, busy)
    assert first_poweroff(decisions) is None
    assert {d.state for d in decisions} == {"busy"}


def test_idle_restarts_after_a_long_job(autostop: ModuleType) -> None:
    # the service reports idle since its start while a job ran: use the job's end
    statuses = [ready(autostop, 0, jobs=1)] * 30 + [ready(autostop, 30 + m) for m in range(30)]
    decisions = run_minutes(autostop, statuses)
    assert first_poweroff(decisions) == 50  # 20 minutes after the job was last seen


def test_service_never_ready_powers_off_after_the_boot_grace(autostop: ModuleType) -> None:
    not_ready = autostop.Status(ready=False, idle_seconds=0, jobs_in_flight=0, queue_depth=0)
    for status in (None, not_ready):  # not answering at all, or loading forever
        decisions = run_minutes(autostop, [status] * 40)
        assert first_poweroff(decisions) == 30
        assert decisions[0].state == "booting"
        assert not decisions[0].poweroff
        assert decisions[29].state == "never-ready"


def test_just_booted_waits(autostop: ModuleType) -> None:
    decisions = run_minutes(autostop, [None] * 5 + [ready(autostop, 0)] * 5)
    assert first_poweroff(decisions) is None
    assert [d.state for d in decisions[:5]] == ["booting"] * 5


def test_paused_never_powers_off(autostop: ModuleType) -> None:
    decisions = run_minutes(autostop, [None] * 90, paused=True)
    assert first_poweroff(decisions) is None
    assert {d.state for d in decisions} == {"paused"}


def test_the_boot_grace_restarts_after_a_pause(autostop: ModuleType) -> None:
    # paused for maintenance while the service was broken: a fresh grace period after
    cfg = autostop.Config(idle_minutes=20, boot_grace_minutes=30)
    state = autostop.State()
    for minute in range(1, 61):
        obs = autostop.Observation(
            now=T0 + minute * MIN, uptime=minute * MIN, status=None, paused=True
        )
        _, state = autostop.decide(obs, state, cfg)
    for minute, expect in ((61, False), (89, False), (90, True)):
        obs = autostop.Observation(now=T0 + minute * MIN, uptime=minute * MIN, status=None)
        decision, state = autostop.decide(obs, state, cfg)
        assert decision.poweroff is expect, minute


def test_service_down_after_being_ready(autostop: ModuleType) -> None:
    # ready and used until minute 10, then it stops answering (crash, new image loading):
    # nothing can run, so idle counts from the later of the last request and the loss,
    # and the limit is the shorter of the idle limit and the boot grace.
    statuses: list[Any] = [ready(autostop, 0)] * 10 + [None] * 40
    decisions = run_minutes(autostop, statuses)
    assert first_poweroff(decisions) == 31  # lost at minute 11, 20 minutes later
    assert decisions[12].state == "down"
    assert not decisions[12].poweroff
    # it comes back within the window: back to normal idle accounting, no poweroff
    statuses = [ready(autostop, 0)] * 10 + [None] * 5 + [ready(autostop, 0)] * 10
    assert first_poweroff(run_minutes(autostop, statuses)) is None


def test_a_throttled_status_is_not_a_lost_service(autostop: ModuleType) -> None:
    # Something on the VM sent wrong tokens from 127.0.0.1, so the service answers autostop
    # 429 for up to an hour. It is alive and may be running jobs autostop cannot see: the
    # 20 minutes of "down" would cut them off. It waits the idle limit plus the longest
    # block (80 minutes from the last activity seen), then still powers off.
    statuses: list[Any] = [ready(autostop, 0)] * 10 + [THROTTLED] * 100
    decisions = run_minutes(autostop, statuses)
    assert decisions[11].state == "throttled"
    assert first_poweroff(decisions) == 90
    assert decisions[88].idle_minutes == pytest.approx(79)
    assert decisions[88].limit_minutes == 80
    # the block lifts and a job was running all along: busy, no poweroff
    statuses = [ready(autostop, 0)] * 10 + [THROTTLED] * 60 + [ready(autostop, 0, jobs=1)] * 40
    assert first_poweroff(run_minutes(autostop, statuses)) is None
    # throttled while it was already lost: the service is back, the loss clock is cleared
    statuses = [ready(autostop, 0)] * 10 + [None] * 15 + [THROTTLED] * 20
    decisions = run_minutes(autostop, statuses)
    assert first_poweroff(decisions) is None
    assert decisions[-1].state == "throttled"


def test_a_throttle_before_ready_adds_the_block_to_the_boot_grace(autostop: ModuleType) -> None:
    decisions = run_minutes(autostop, [THROTTLED] * 100)
    assert first_poweroff(decisions) == 90  # 30 minutes' grace + the 60-minute block
    assert decisions[0].state == "throttled"


def test_the_throttle_allowance_is_the_services_longest_block(autostop: ModuleType) -> None:
    # autostop runs on the VM's python without our package: the number is written twice
    from text2img.auth import FailureThrottle

    assert FailureThrottle().max_block_s == autostop.THROTTLE_MAX_BLOCK_MINUTES * 60


def test_a_new_boot_forgets_the_previous_one(autostop: ModuleType) -> None:
    cfg = autostop.Config(idle_minutes=20, boot_grace_minutes=30)
    old = autostop.State(boot_at=T0 - 3600 * 5, ever_ready=True, last_active_at=T0 - 3600 * 5)
    obs = autostop.Observation(now=T0 + 2 * MIN, uptime=2 * MIN, status=None)
    decision, state = autostop.decide(obs, old, cfg)
    assert decision.state == "booting"
    assert not decision.poweroff
    assert state.boot_at == T0
    assert not state.ever_ready


def test_log_line_names_state_idle_limit_and_action(autostop: ModuleType) -> None:
    decision = autostop.Decision("idle", 21.04, 20, True, "no request for the idle limit")
    assert decision.log_line() == (
        "state=idle idle=21.0min limit=20min action=poweroff: no request for the idle limit"
    )


# ---- the real program against a fake status endpoint -----------------------------------


@dataclass
class FakeService:
    body: dict[str, Any] = field(
        default_factory=lambda: {
            "ready": True,
            "model": "glide",
            "idle_seconds": 0.0,
            "jobs_in_flight": 0,
            "queue_depth": 0,
            "started_at": T0,
            "last_activity_at": None,
        }
    )
    auth_seen: list[str | None] = field(default_factory=list)
    url: str = ""
    throttled: bool = False  # answer 429 with Retry-After, as the service's throttle does


@pytest.fixture
def service() -> Iterator[FakeService]:
    fake = FakeService()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            fake.auth_seen.append(self.headers.get("Authorization"))
            if fake.throttled:
                self.send_response(429)
                self.send_header("Retry-After", "60")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                return
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                code, body = 401, {"error": {"message": "bad token"}}
            else:
                code, body = 200, fake.body
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    with serve_http(Handler) as server:
        fake.url = f"{base_url(server)}/v1/status"
        yield fake


@dataclass
class Program:
    systemd_dir: Path
    tmp: Path
    url: str

    def __post_init__(self) -> None:
        (self.tmp / "service.env").write_text(f"TEXT2IMG_MODEL=glide\nTEXT2IMG_API_TOKEN={TOKEN}\n")
        poweroff = self.tmp / "poweroff"
        poweroff.write_text(
            '#!/bin/bash\necho "$@" >>"$(dirname "$0")/poweroff.calls"\n'
            'exit "$(cat "$(dirname "$0")/poweroff.rc" 2>/dev/null || echo 0)"\n'
        )
        poweroff.chmod(0o755)

    @property
    def poweroffs(self) -> list[str]:
        calls = self.tmp / "poweroff.calls"
        return calls.read_text().splitlines() if calls.exists() else []

    def run(self, minute: float) -> str:
        (self.tmp / "uptime").write_text(f"{minute * MIN:.2f} 1234.00\n")
        env = {
            "PATH": "/usr/bin:/bin",
            "TEXT2IMG_AUTOSTOP_NOW": str(T0 + minute * MIN),
            "TEXT2IMG_AUTOSTOP_UPTIME_FILE": str(self.tmp / "uptime"),
            "TEXT2IMG_AUTOSTOP_STATUS_URL": self.url,
            "TEXT2IMG_AUTOSTOP_TOKEN_FILE": str(self.tmp / "service.env"),
            "TEXT2IMG_AUTOSTOP_PAUSE_FILE": str(self.tmp / "autostop.paused"),
            "TEXT2IMG_AUTOSTOP_STATE_FILE": str(self.tmp / "run" / "autostop.json"),
            "TEXT2IMG_AUTOSTOP_POWEROFF_COMMAND": f"{self.tmp / 'poweroff'} --now-please",
            "TEXT2IMG_AUTOSTOP_IDLE_MINUTES": "10",
            "TEXT2IMG_AUTOSTOP_BOOT_GRACE_MINUTES": "15",
        }
        result = subprocess.run(
            [sys.executable, str(SYSTEMD / "autostop.py")],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture
def program(tmp_path: Path, service: FakeService) -> Program:
    return Program(SYSTEMD, tmp_path, service.url)


def test_program_powers_off_once_when_idle(program: Program, service: FakeService) -> None:
    logs = []
    for minute in range(2, 16):
        service.body["idle_seconds"] = (minute - 2) * MIN  # ready since minute 2, unused
        logs.append(program.run(minute))
    assert program.poweroffs == ["--now-please"]  # exactly once, with the configured command
    first = next(i for i, line in enumerate(logs) if "action=poweroff" in line)
    assert first == 10  # minute 12: 10 idle minutes since minute 2
    assert "state=idle idle=10.0min limit=10min action=poweroff" in logs[first]
    assert "state=idle idle=9.0min limit=10min action=wait" in logs[first - 1]
    assert "state=powering-off" in logs[first + 1]
    assert all(seen == f"Bearer {TOKEN}" for seen in service.auth_seen)
    assert TOKEN not in "".join(logs)


@pytest.mark.slow
def test_program_never_stops_a_running_job(program: Program, service: FakeService) -> None:
    service.body.update(jobs_in_flight=1, idle_seconds=0)
    for minute in range(1, 40, 3):
        assert "state=busy" in program.run(minute)
    assert program.poweroffs == []


def test_program_powers_off_when_the_service_never_answers(program: Program) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        program.url = f"http://127.0.0.1:{s.getsockname()[1]}/v1/status"
    early = program.run(3)
    assert "state=booting" in early
    assert "action=wait" in early
    assert "URLError" in early  # the reason is in the log
    assert program.poweroffs == []
    late = program.run(15)
    assert "state=never-ready" in late
    assert "action=poweroff" in late
    assert "journalctl -t text2img-startup" in late
    assert program.poweroffs == ["--now-please"]


def pause(program: Program, content: str, *, written_minute: float) -> None:
    path = program.tmp / "autostop.paused"
    path.write_text(content)
    os.utime(path, (T0 + written_minute * MIN, T0 + written_minute * MIN))


def test_program_pause_file_holds_until_removed(program: Program, service: FakeService) -> None:
    service.body["idle_seconds"] = 999 * MIN
    pause(program, "", written_minute=5)  # `sudo touch /etc/text2img/autostop.paused`
    for minute in (100, 500):
        out = program.run(minute)
        assert "state=paused" in out
        assert "action=wait" in out
        assert "paused until the file is removed" in out
    assert program.poweroffs == []
    (program.tmp / "autostop.paused").unlink()
    # the idle clock restarts when the pause ends
    assert "state=idle idle=1.0min limit=10min action=wait" in program.run(501)
    assert "action=poweroff" in program.run(510)
    assert program.poweroffs == ["--now-please"]


def test_program_pause_for_some_minutes(program: Program, service: FakeService) -> None:
    service.body["idle_seconds"] = 999 * MIN
    pause(program, "60\n", written_minute=30)  # `echo 60 | sudo tee …/autostop.paused`
    out = program.run(80)
    assert "state=paused" in out
    assert "paused for 10 more min" in out
    assert "state=paused" in program.run(89)
    out = program.run(91)
    assert "the pause in" in out
    assert "ended 1 min ago" in out
    assert "action=wait" in out
    assert "action=poweroff" in program.run(99)  # 10 idle minutes after the pause


def test_program_ignores_a_pause_from_a_previous_boot(
    program: Program, service: FakeService
) -> None:
    # a forgotten pause must not keep a restarted VM up for ever
    service.body["idle_seconds"] = 999 * MIN
    pause(program, "", written_minute=-10)
    out = program.run(30)
    assert "written before this boot" in out
    assert "action=poweroff" in out


def test_program_retries_a_failed_poweroff(program: Program, service: FakeService) -> None:
    service.body["idle_seconds"] = 60 * MIN
    (program.tmp / "poweroff.rc").write_text("1\n")
    assert "retrying next run" in program.run(70)
    (program.tmp / "poweroff.rc").write_text("0\n")
    program.run(71)
    program.run(72)
    assert program.poweroffs == ["--now-please", "--now-please"]


def test_program_treats_a_wrong_token_as_not_answering(
    program: Program, service: FakeService
) -> None:
    (program.tmp / "service.env").write_text("TEXT2IMG_API_TOKEN=stale\n")
    out = program.run(3)
    assert "HTTP 401" in out
    assert "state=booting" in out
    assert "stale" not in out


def test_program_waits_out_a_throttle_and_says_why(program: Program, service: FakeService) -> None:
    service.body["idle_seconds"] = 0.0
    assert "state=idle" in program.run(2)  # seen ready at minute 2
    service.throttled = True
    for minute in (20, 35):  # as "down", 10 minutes after the loss at 20 would power off
        out = program.run(minute)
        assert "state=throttled" in out
        assert "action=wait" in out
        assert "HTTP 429" in out
        assert "retry after 60 s" in out
    assert program.poweroffs == []
    assert "action=poweroff" in program.run(72)  # 10 idle + 60 block minutes after minute 2
    assert program.poweroffs == ["--now-please"]


def test_program_against_the_real_service_throttle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract the fake above stands for, on the real service app: ten wrong tokens
    from 127.0.0.1 block that address, /v1/status included, with 429 and Retry-After;
    autostop reads it as throttled, not as a lost service."""
    import httpx

    from tests.fakes.asgi_server import serve_in_thread
    from tests.fakes.engine import REGISTRATION, SwatchEngine
    from text2img.api.app import create_app
    from text2img.engines import registry
    from text2img.settings import Settings

    monkeypatch.setitem(registry.ENGINES, "swatch", REGISTRATION)  # the test engine

    settings = Settings(
        _env_file=None,
        model="swatch",
        translation="off",
        api_token=TOKEN,
        trust_forwarded=True,  # as service.env sets it behind the gateway
    )
    app = create_app(settings, engine=SwatchEngine())
    with serve_in_thread(app) as base:
        program = Program(SYSTEMD, tmp_path, f"{base}/v1/status")
        assert "state=idle" in program.run(2)
        for _ in range(10):  # a local script with a stale token
            httpx.get(f"{base}/v1/status", headers={"Authorization": "Bearer stale"})
        out = program.run(40)
    assert "state=throttled" in out, out
    assert "HTTP 429" in out
    assert re.search(r"retry after \d+ s", out), out
    assert "action=wait" in out
    assert program.poweroffs == []

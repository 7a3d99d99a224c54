"""scripts/vm subcommands against the fake Compute API and a real gateway."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from tests.scripts.vm_support import VM, Env


def run(vm: ModuleType, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = vm.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _hours_ago(hours: float) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours)).isoformat().replace("+00:00", "Z")


def test_status_asleep(vm_module: ModuleType, env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.fake.instances[VM].spot = True
    env.fake.instances[VM].last_stop = _hours_ago(2)
    code, out, err = run(vm_module, capsys, "status")
    assert code == 0, err
    assert f"instance  {VM} (project proj, zone asia-northeast1-a)" in out
    assert "state     TERMINATED (asleep for 2 h 00 min)" in out
    assert "machine   n1-standard-4, 1 x nvidia-tesla-t4" in out
    assert "spot      yes" in out
    assert "cost      ~$0.54/hour while running (estimate); now only the disk is billed" in out
    assert "service   asleep; the next request wakes it" in out
    assert f"url       {env.gateway_url}" in out
    assert env.fake.calls["start"] == 0


def test_status_running_shows_idle_and_autostop(
    vm_module: ModuleType, env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env.fake.set_status(VM, "RUNNING")
    env.fake.instances[VM].last_start = _hours_ago(1)
    env.fake.instances[VM].metadata["text2img-idle-minutes"] = "30"
    code, out, err = run(vm_module, capsys, "status")
    assert code == 0, err
    assert "state     RUNNING (up 1 h 00 min)" in out
    assert "spot      no" in out
    assert "this run so far ~$0.54" in out
    assert "service   ready, model tiny; idle 4 min, autostop in 26 min (after 30 idle min)" in out
    code, out, _ = run(vm_module, capsys, "status", "--json")
    report = json.loads(out)
    assert report["status"] == "RUNNING"
    assert report["spot"] is False
    assert 3590 < report["uptime_seconds"] < 3700
    assert report["idle_minutes_limit"] == 30
    assert report["autostop_in_seconds"] == 30 * 60 - 240
    assert report["service"]["model"] == "tiny"
    assert report["hourly_cost_estimate"] == 0.54
    env.service.jobs = 2
    _, out, _ = run(vm_module, capsys, "status")
    assert "busy (2 job(s)), autostop waits" in out


def test_status_with_gateway_down_still_reports_the_vm(
    vm_module: ModuleType, env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env.fake.set_status(VM, "RUNNING")
    env.set_outputs(env.outputs(url="http://127.0.0.1:9"))
    code, out, _ = run(vm_module, capsys, "status")
    assert code == 0
    assert "state     RUNNING" in out
    assert "service   the gateway http://127.0.0.1:9 is unreachable" in out


def test_start_and_stop(
    vm_module: ModuleType, env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(vm_module, capsys, "start")
    assert code == 0, err
    assert f"{VM} is running" in out
    assert env.fake.instances[VM].status == "RUNNING"
    assert env.fake.calls["start"] == 1
    code, out, _ = run(vm_module, capsys, "start")
    assert "already running" in out
    assert env.fake.calls["start"] == 1
    code, out, err = run(vm_module, capsys, "stop")
    assert code == 0, err
    assert "is stopped; the GPU is no longer billed" in out
    assert env.fake.instances[VM].status == "TERMINATED"
    code, out, _ = run(vm_module, capsys, "stop")
    assert "already stopped" in out
    assert env.fake.calls["stop"] == 1


def test_start_wait_shows_progress_until_ready(
    vm_module: ModuleType, env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env.fake.boot_delay_s = 0.3
    code, out, err = run(vm_module, capsys, "start", "--wait", "--timeout", "30")
    assert code == 0, err
    assert out.splitlines()[-1] == f"ready: {env.gateway_url}"


def test_wait_times_out_with_the_last_phase(
    vm_module: ModuleType,
    env: Env,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env.fake.set_status(VM, "RUNNING")
    env.service.ready = False
    code, out, err = run(vm_module, capsys, "wait", "--timeout", "1")
    assert code == 1
    assert "  loading_model" in out
    assert err.count("\n") == 1
    assert "not ready after 1 s (last: loading_model" in err


def test_wait_on_a_sleeping_vm_says_how_to_start_it(
    vm_module: ModuleType, env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(vm_module, capsys, "wait", "--timeout", "5")
    assert code == 1
    assert "scripts/vm start --wait" in err
    assert env.fake.calls["start"] == 0


def test_start_capacity_failure_is_one_clear_line(
    vm_module: ModuleType, env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env.fake.inject("start", "ZONE_RESOURCE_POOL_EXHAUSTED", via_operation=True)
    code, _, err = run(vm_module, capsys, "start")
    assert code == 1
    assert err.startswith("scripts/vm start: error: Google Cloud has no free GPU")
    assert "pulumi config set zone" in err
    assert err.count("\n") == 1


def test_deploy_reruns_the_startup_script_over_iap(
    vm_module: ModuleType, env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(vm_module, capsys, "deploy")
    assert code == 1
    assert "is TERMINATED; start it first" in err
    assert env.gcloud_calls() == []
    env.fake.set_status(VM, "RUNNING")
    code, out, err = run(vm_module, capsys, "deploy")
    assert code == 0, err
    assert "deployed" in out
    assert env.gcloud_calls() == [
        [
            "compute", "ssh", VM, "--zone", "asia-northeast1-a", "--project", "proj",
            "--tunnel-through-iap", "--command", "sudo google_metadata_script_runner startup",
        ]
    ]  # fmt: skip


def test_logs_serial_and_journal(
    vm_module: ModuleType, env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env.fake.instances[VM].serial = "".join(f"boot line {i}\n" for i in range(50))
    code, out, _ = run(vm_module, capsys, "logs", "-n", "3")
    assert code == 0
    assert out.splitlines() == ["boot line 47", "boot line 48", "boot line 49"]
    assert env.fake.calls["serial"] == 1
    env.fake.set_status(VM, "RUNNING")
    code, _, _ = run(vm_module, capsys, "logs", "--journal", "-n", "50")
    assert code == 0
    (call,) = env.gcloud_calls()
    assert call[:8] == ["compute", "ssh", VM, "--zone", "asia-northeast1-a", "--project", "proj",
                        "--tunnel-through-iap"]  # fmt: skip
    assert call[8] == "--command"
    assert call[9] == (
        "sudo journalctl --no-pager -n 50 -u google-startup-scripts.service "
        "-u text2img.service -u text2img-autostop.service -u text2img-redeploy.service "
        "-u text2img-metadata-watch.service"
    )


def test_journal_command_ors_the_units_and_never_ands_a_tag(vm_module: ModuleType) -> None:
    # journalctl (sd_journal_add_match): matches on the same field are ORed, on different
    # fields ANDed; every -u is a unit match, so no -t/-p/_PID may sit beside them
    command = vm_module.journal_command(20, follow=True)
    units = [command[i + 1] for i, arg in enumerate(command) if arg == "-u"]
    assert units == [
        "google-startup-scripts.service",  # the startup script at boot
        "text2img.service",
        "text2img-autostop.service",
        "text2img-redeploy.service",  # the startup script re-run by the watcher
        "text2img-metadata-watch.service",
    ]
    assert not {"-t", "--identifier", "-p", "--priority", "-g", "--grep"} & set(command)
    assert not [a for a in command if "=" in a]  # no FIELD=value match either
    assert command[-1] == "-f"


@pytest.mark.skipif(shutil.which("journalctl") is None, reason="needs journalctl")
def test_real_journalctl_accepts_the_command_line(vm_module: ModuleType, tmp_path: Path) -> None:
    # an empty journal directory: the real parser and matcher run, nothing is read
    command = vm_module.journal_command(20, follow=False)
    result = subprocess.run(
        [str(shutil.which("journalctl")), *command[1:], f"--directory={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "No entries" in result.stdout + result.stderr


def test_flags_override_the_stack(
    vm_module: ModuleType, env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env.set_outputs(fail="no stack named 'dev' found")
    code, out, err = run(
        vm_module, capsys, "--project", "proj", "--zone", "asia-northeast1-a", "--instance", VM,
        "status",
    )  # fmt: skip
    assert code == 0, err
    assert "state     TERMINATED" in out


def test_wait_with_the_gateway_unreachable(
    vm_module: ModuleType, env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(vm_module, capsys, "--url", "http://127.0.0.1:9", "wait", "--timeout", "1")
    assert code == 1
    assert err.count("\n") == 1
    assert "not ready after 1 s (last: the gateway http://127.0.0.1:9 is unreachable" in err


def test_logs_follow_prints_new_serial_output(
    vm_module: ModuleType,
    env: Env,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inst = env.fake.instances[VM]
    inst.serial = "first line\n"
    sleeps = []

    def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 1:
            inst.serial += "second line\n"  # the VM writes more
            return
        raise KeyboardInterrupt  # the user presses Ctrl-C

    clock = SimpleNamespace(sleep=fake_sleep, monotonic=time.monotonic)
    monkeypatch.setattr(vm_module, "time", clock)  # only scripts/vm's clock
    code, out, err = run(vm_module, capsys, "logs", "-f")
    assert code == 130
    assert out.splitlines() == ["first line", "second line"]
    assert err == "interrupted\n"
    assert env.fake.calls["serial"] == 2  # all of it, then from the offset


def test_status_names_the_backend(
    vm_module: ModuleType, env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(vm_module, capsys, "status")
    assert code == 0, err
    assert "backend   vm (one GCE VM" in out
    env.set_outputs({"backend": "cloudrun", "project": "proj", "gpu_region": "asia-southeast1",
                     "max_gpus": 3, "gpu_url": "https://t2i-gpu-x.a.run.app",
                     "url": env.gateway_url, "token": "t"})  # fmt: skip
    compute_calls = sum(env.fake.calls.values())
    code, out, err = run(vm_module, capsys, "status")
    assert code == 0, err
    assert "backend   cloudrun" in out
    assert "gpus      0 to 3 x nvidia-l4 in asia-southeast1" in out
    assert "service   https://t2i-gpu-x.a.run.app" in out
    assert sum(env.fake.calls.values()) == compute_calls  # no VM looked up
    code, out, err = run(vm_module, capsys, "status", "--json")
    assert json.loads(out)["backend"] == "cloudrun"

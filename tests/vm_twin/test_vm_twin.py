"""Boot scenarios of the GPU VM under a real systemd (the VM twin: README "VM twin").

Each twin boots our systemd/ files the way a Deep Learning VM does: the guest agent's
google-startup-scripts.service runs the metadata's startup-script, which installs the
units; Jupyter listens on the service port at boot; apt's timers fire at boot; `docker`
runs the real service (model `tiny`, CPU). What these prove and do not prove: README."""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.systemd.sandbox import API_TOKEN
from tests.vm_twin.conftest import Setup, make_setup
from tests.vm_twin.rootfs import DLVM_OTHER, DLVM_PACKAGES

READY_TIMEOUT = 180  # seconds; torch's import on a loaded 2-core machine is most of it


def http(s: Setup, path: str, body: dict[str, object] | None = None, timeout: float = 10):
    """(status, JSON body) of a request to the twin's service, with the API token."""
    request = urllib.request.Request(
        s.url(path),
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return 0, None


def wait_ready(s: Setup) -> None:
    s.twin.wait_for(lambda: http(s, "/readyz", timeout=3)[0] == 200, READY_TIMEOUT, "/readyz")


def monotonic_us(s: Setup, unit: str, prop: str) -> int:
    value = int(s.twin.show(unit, prop) or 0)
    assert value > 0, f"{unit} has no {prop}"
    return value


def upgrades(s: Setup) -> list[str]:
    return s.twin.file("/var/log/vmtwin/upgrades.log").splitlines()


@pytest.fixture(scope="module")
def dlvm(twin_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One Deep Learning VM twin for the first boot, the wake and autostop, in order."""
    with ExitStack() as stack:
        s = make_setup(stack, tmp_path_factory.mktemp("dlvm"))
        # unattended-upgrade "downloads" for 12 s, then upgrades whatever is not held
        (s.twin.disk / "etc/vmtwin").mkdir(parents=True, exist_ok=True)
        (s.twin.disk / "etc/vmtwin/upgrade-seconds").write_text("12\n")
        s.twin.boot()
        yield s


def test_first_boot_reaches_ready(dlvm: Setup) -> None:
    wait_ready(dlvm)
    journal = dlvm.twin.journal("-t", "text2img-startup")
    assert "done: text2img.service runs" in journal
    assert dlvm.twin.show("text2img.service", "ActiveState") == "active"
    assert dlvm.twin.show("text2img.service", "NRestarts") == "0"
    # the guest agent's unit ran the script once, and it finished
    assert dlvm.twin.show("google-startup-scripts.service", "Result") == "success"
    # the service the docker stand-in ran is ours, with the unit's arguments
    served = [
        x for x in dlvm.twin.file("/var/log/vmtwin/docker.log").splitlines() if " container " in x
    ]
    assert len(served) == 1
    assert served[0].endswith(f"serve --model tiny --host 0.0.0.0 --port {dlvm.port}")


def test_first_boot_holds_win_against_the_upgrade_that_fired_at_boot(dlvm: Setup) -> None:
    wait_ready(dlvm)
    held = set(dlvm.twin.sh("apt-mark showhold").stdout.split())
    assert held >= set(DLVM_PACKAGES)  # the image's kernel and NVIDIA packages
    assert not held & set(DLVM_OTHER)  # nothing else
    log = upgrades(dlvm)
    assert log, "apt-daily-upgrade did not run at boot: the scenario did not happen"
    # it started before the holds (first boot) and was stopped before it upgraded anything;
    # a later run (the timer starts again at the end) upgrades only what is not held
    assert log[0] == "start held="
    assert log[1] == "stopped at a safe point"
    upgraded = {x.removeprefix("upgraded ") for x in log if x.startswith("upgraded ")}
    assert not upgraded & set(DLVM_PACKAGES), log


def test_jupyter_on_the_port_does_not_stop_our_service(dlvm: Setup) -> None:
    wait_ready(dlvm)
    journal = dlvm.twin.journal("-u", "jupyter.service")
    assert "Started jupyter.service" in journal  # it did hold the port at boot
    assert dlvm.twin.show("jupyter.service", "ActiveState") == "inactive"
    assert dlvm.twin.show("jupyter.service", "UnitFileState") == "masked"
    status, body = http(dlvm, "/v1/status")
    assert status == 200  # our service answers on the port, not Jupyter
    assert body is not None
    assert body["ready"] is True


def test_a_wake_reaches_ready_with_the_prefetch_before_the_service(dlvm: Setup) -> None:
    wait_ready(dlvm)
    dlvm.twin.poweroff()
    assert not dlvm.twin.running()
    dlvm.twin.boot()  # the same disk: a wake
    wait_ready(dlvm)
    twin = dlvm.twin
    prefetch_done = monotonic_us(
        dlvm, "text2img-prefetch.service", "ExecMainExitTimestampMonotonic"
    )
    service_started = monotonic_us(dlvm, "text2img.service", "ExecMainStartTimestampMonotonic")
    assert prefetch_done <= service_started
    read = twin.journal("-t", "text2img-prefetch", this_boot=True)
    assert "reading 1 file(s)" in read
    assert "/var/lib/text2img/models/tiny/model.safetensors" in read
    assert twin.show("text2img.service", "NRestarts") == "0"
    # Jupyter stayed off: masked at the first boot
    assert "Started jupyter.service" not in twin.journal("-u", "jupyter.service", this_boot=True)


def test_on_a_wake_the_upgrade_starts_only_after_the_holds(dlvm: Setup) -> None:
    wait_ready(dlvm)
    twin = dlvm.twin
    twin.wait_for(lambda: upgrades(dlvm)[-1:] == ["done"], 60, "the upgrade of the wake")
    log = upgrades(dlvm)
    start = [x for x in log if x.startswith("start held=")][-1]
    assert set(start.removeprefix("start held=").strip(",").split(",")) >= set(DLVM_PACKAGES)
    upgraded = {x.removeprefix("upgraded ") for x in log if x.startswith("upgraded ")}
    assert upgraded == set(DLVM_OTHER)  # the rest of the image is still upgraded
    hold_done = monotonic_us(dlvm, "text2img-hold.service", "ExecMainExitTimestampMonotonic")
    upgrade_started = monotonic_us(
        dlvm, "apt-daily-upgrade.service", "ExecMainStartTimestampMonotonic"
    )
    assert hold_done <= upgrade_started


AUTOSTOP_FAST = """\
[Service]
ExecStart=
ExecStart=/usr/bin/env TEXT2IMG_AUTOSTOP_IDLE_MINUTES={minutes} /usr/bin/python3 \
/usr/local/lib/text2img/autostop.py
"""
# every 3 s by the wall clock: the twin's monotonic timers count from the host's boot
# (its kernel's), long past, and systemd 252 leaves a restarted one "elapsed"
TIMER_FAST = "[Timer]\nOnBootSec=\nOnUnitInactiveSec=\nOnCalendar=*:*:0/3\nAccuracySec=1s\n"
IDLE_S = 10


def test_autostop_powers_off_after_the_idle_time_and_never_during_a_request(
    dlvm: Setup,
) -> None:
    wait_ready(dlvm)
    twin = dlvm.twin
    done = twin.sh(
        "mkdir -p /etc/systemd/system/text2img-autostop.service.d "
        "/etc/systemd/system/text2img-autostop.timer.d && "
        f"printf '%s' '{AUTOSTOP_FAST.format(minutes=IDLE_S / 60)}' "
        ">/etc/systemd/system/text2img-autostop.service.d/vmtwin-idle.conf && "
        f"printf '%s' '{TIMER_FAST}' >/etc/systemd/system/text2img-autostop.timer.d/fast.conf && "
        "systemctl daemon-reload && systemctl restart text2img-autostop.timer"
    )
    assert done.returncode == 0, done.stderr
    # one request that runs longer than the idle time: calibrated on this machine
    probe = {"prompt": "a bear", "size": "64x64", "n": 1, "steps": 20}
    began = time.monotonic()
    assert http(dlvm, "/v1/images/generations", probe, timeout=120)[0] == 200
    per_step = max((time.monotonic() - began) / 20, 0.001)
    steps = min(250, math.ceil(IDLE_S * 2.5 / per_step))
    n = min(8, max(1, math.ceil(IDLE_S * 2.5 / (steps * per_step))))
    body = {"prompt": "a teddy bear", "size": "64x64", "n": n, "steps": steps}
    result: dict[str, object] = {}

    def generate() -> None:
        result["status"] = http(dlvm, "/v1/images/generations", body, timeout=600)[0]
        result["done_at"] = time.monotonic()

    worker = threading.Thread(target=generate, daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(IDLE_S * 2)
    if worker.is_alive():  # the request outlived twice the idle time: the VM is still up
        assert twin.running()
        assert "state=busy" in twin.journal("-t", "text2img-autostop", this_boot=True)
    worker.join(180)
    assert result.get("status") == 200
    ran = float(result["done_at"]) - started  # type: ignore[arg-type]
    assert ran > IDLE_S, f"the request took {ran:.0f}s: too short to show anything"
    assert twin.running(), "powered off during a request"
    assert not twin.wait_off(IDLE_S * 0.6)  # not before the idle time after it
    assert twin.wait_off(60), "autostop did not power the twin off"
    log = twin.journal("-t", "text2img-autostop")
    assert "action=poweroff: no request for the idle limit" in log
    assert "state=busy" in log


def boot_until_off(s: Setup, timeout: float = 120) -> None:
    s.twin.boot()
    if not s.twin.wait_off(timeout):
        raise AssertionError(f"the twin did not power off\n{s.twin.tail()}")


def test_an_unknown_program_on_the_port_ends_in_port_in_use_not_a_restart_loop(
    twin_ready: None, tmp_path: Path
) -> None:
    with ExitStack() as stack:
        s = make_setup(stack, tmp_path, squatter=True)
        boot_until_off(s)
        console = s.twin.file("/var/log/vmtwin/ttyS0")
        want = f"text2img: PORT_IN_USE: port {s.port} is held by python3 (pid "
        assert want in console
        assert "unit squatter.service" in console
        assert f"/usr/bin/python3 -m http.server {s.port} --bind 0.0.0.0" in console
        assert s.google.guest_attributes["text2img/boot-failure"] == console.strip()
        journal = s.twin.journal("-t", "text2img-boot-guard")
        assert journal.count("FAILED: text2img: PORT_IN_USE") == 1  # tried once, no loop
        assert "masking jupyter.service" in journal  # Jupyter went; the other did not
        docker = s.twin.file("/var/log/vmtwin/docker.log")
        assert " container " not in docker  # our container never started


def test_a_failed_driver_check_powers_off_with_the_reason(twin_ready: None, tmp_path: Path) -> None:
    with ExitStack() as stack:
        s = make_setup(stack, tmp_path)
        (s.twin.disk / "etc/vmtwin").mkdir(parents=True, exist_ok=True)
        (s.twin.disk / "etc/vmtwin/no-driver").touch()
        boot_until_off(s)
        reason = "text2img: GPU driver did not load: nvidia-smi failed for 4s"
        assert reason in s.twin.file("/var/log/vmtwin/ttyS0")
        assert s.google.guest_attributes["text2img/boot-failure"].startswith(reason)
        assert " container " not in s.twin.file("/var/log/vmtwin/docker.log")


def test_a_403_from_secret_manager_in_the_first_minutes_is_waited_out(
    twin_ready: None, tmp_path: Path
) -> None:
    with ExitStack() as stack:
        s = make_setup(stack, tmp_path)
        s.google.secret_denied_until = time.monotonic() + 20  # "minutes", shortened
        s.twin.boot()
        wait_ready(s)
        journal = s.twin.journal("-t", "text2img-startup")
        waits = [x for x in journal.splitlines() if "Secret Manager: refused (HTTP 403)" in x]
        assert len(waits) >= 2
        assert "API token fetched" in journal
        reads = [r for r in s.google.requests if r[1].endswith(":access")]
        assert len(reads) >= 3
        s.twin.poweroff()

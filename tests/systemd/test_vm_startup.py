"""systemd/startup.sh run for real in a sandbox: stub binaries, fake metadata server and
fake Secret Manager on 127.0.0.1, a temporary root for every path it writes. The metadata
is what the Pulumi program renders (sandbox.rendered_metadata)."""

from __future__ import annotations

import fcntl
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from infra.metadata import VM_FILES
from tests.systemd.sandbox import (
    ACCESS_TOKEN,
    API_TOKEN,
    IMAGE,
    IMAGE2,
    INTERNAL_IP,
    REPO,
    Sandbox,
    all_output,
    env_file,
    mode,
    rendered_metadata,
    systemctl_verbs,
)

pytestmark = pytest.mark.slow  # subprocesses or real servers: make test, not test-fast

UNIT_FILES = [
    "text2img.service",
    "text2img-autostop.service",
    "text2img-autostop.timer",
    "text2img-metadata-watch.service",
    "text2img-redeploy.service",
    "text2img-prefetch.service",
    "text2img-hold.service",
]
PROGRAMS = ["autostop.py", "metadata_watch.py", "boot-guard.sh", "prefetch.sh", "hold.sh"]
# where startup.sh installs each file of systemd/
INSTALLED = {
    **{name: (f"/usr/local/lib/text2img/{name}", 0o755) for name in PROGRAMS},
    **{name: (f"/etc/systemd/system/{name}", 0o644) for name in UNIT_FILES},
}


def snapshot(sandbox: Sandbox) -> dict[Path, tuple[bytes, int, int]]:
    """Every file under the sandbox root: content, mode, modification time."""
    return {
        p: (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns)
        for p in sandbox.root.rglob("*")
        if p.is_file()
    }


def restarts(sandbox: Sandbox) -> list[tuple[str, str]]:
    return [
        (verb, unit)
        for verb, unit in systemctl_verbs(sandbox.calls("systemctl"))
        if verb in {"start", "restart", "stop", "daemon-reload"}
        and not unit.startswith("apt-daily")  # stopped and started again every run
    ]


def test_first_boot_writes_units_env_files_and_starts_the_service(sandbox: Sandbox) -> None:
    result = sandbox.run()
    assert result.returncode == 0, result.stderr

    # every file of systemd/ is installed byte for byte from its metadata attribute
    assert set(INSTALLED) == set(VM_FILES) - {"startup-lib.sh"}  # that one is sourced
    for name, (where, want_mode) in INSTALLED.items():
        installed = sandbox.path(where)
        assert installed.read_bytes() == (REPO / "systemd" / name).read_bytes(), name
        assert mode(installed) == want_mode, name
    for name in ("service.env", "unit.env", "autostop.env"):
        assert mode(sandbox.path(f"/etc/text2img/{name}")) == 0o600, name
    assert mode(sandbox.path("/etc/text2img")) == 0o700

    service_env = env_file(sandbox.path("/etc/text2img/service.env"))
    assert service_env == {
        "TEXT2IMG_API_TOKEN": API_TOKEN,  # the trailing newline of the secret is stripped
        "TEXT2IMG_MODEL": "glide",
        "TEXT2IMG_MODEL_CACHE": "/models",
        "TEXT2IMG_DEVICE": "cuda",
        "TEXT2IMG_TRANSLATION": "on",
        "TEXT2IMG_TRANSLATE_PROJECT": "my-proj",
        # the gateway is the proxy in front: throttle on the client it forwards
        "TEXT2IMG_TRUST_FORWARDED": "true",
    }
    assert env_file(sandbox.path("/etc/text2img/unit.env")) == {
        "TEXT2IMG_IMAGE": IMAGE,
        "TEXT2IMG_MODEL": "glide",
        "TEXT2IMG_MODEL_CACHE_DIR": "/var/lib/text2img/models",
        "TEXT2IMG_BIND_IP": INTERNAL_IP,
        "TEXT2IMG_PORT": "8080",
    }
    assert env_file(sandbox.path("/etc/text2img/autostop.env")) == {
        "TEXT2IMG_AUTOSTOP_IDLE_MINUTES": "15",
        "TEXT2IMG_AUTOSTOP_BOOT_GRACE_MINUTES": "25",
        "TEXT2IMG_AUTOSTOP_STATUS_URL": "http://127.0.0.1:8080/v1/status",
        "TEXT2IMG_AUTOSTOP_TOKEN_FILE": "/etc/text2img/service.env",
        "TEXT2IMG_AUTOSTOP_PAUSE_FILE": "/etc/text2img/autostop.paused",
    }

    service = sandbox.path("/etc/systemd/system/text2img.service").read_text()
    for needle in (
        "EnvironmentFile=/etc/text2img/unit.env",
        "ExecStartPre=-/usr/bin/docker rm --force text2img",
        "--gpus all",
        "--env-file /etc/text2img/service.env",
        "--volume ${TEXT2IMG_MODEL_CACHE_DIR}:/models",
        "--publish ${TEXT2IMG_BIND_IP}:${TEXT2IMG_PORT}:8080",
        "--publish 127.0.0.1:${TEXT2IMG_PORT}:8080",
        "${TEXT2IMG_IMAGE} serve --model ${TEXT2IMG_MODEL} --host 0.0.0.0 --port 8080",
        "ExecStop=/usr/bin/docker stop -t 120 text2img",
        "TimeoutStopSec=150",
        "Restart=always",
        "StartLimitBurst=",
        "After=network-online.target docker.service",
    ):
        assert needle in service, needle
    autostop = sandbox.path("/etc/systemd/system/text2img-autostop.service").read_text()
    assert "ExecStart=/usr/bin/python3 /usr/local/lib/text2img/autostop.py" in autostop
    assert "TimeoutStartSec=" in autostop
    timer = sandbox.path("/etc/systemd/system/text2img-autostop.timer").read_text()
    assert "OnUnitInactiveSec=1min" in timer
    assert "WantedBy=timers.target" in timer
    assert "halt" not in sandbox.path("/usr/local/lib/text2img/autostop.py").read_text()

    # the image: login with the metadata token on stdin, then a pull by digest
    docker = sandbox.calls("docker")
    login = next(c for c in docker if c[1] == "login")
    assert login[1:] == [
        "login",
        "--username",
        "oauth2accesstoken",
        "--password-stdin",
        "https://asia-northeast1-docker.pkg.dev",
    ]
    assert (sandbox.stub / "docker-login.stdin").read_text() == ACCESS_TOKEN
    assert ["docker", "pull", "--quiet", IMAGE] in docker
    assert docker.index(["docker", "logout", "https://asia-northeast1-docker.pkg.dev"]) > (
        docker.index(["docker", "pull", "--quiet", IMAGE])
    )  # the registry token is not left on disk
    download = next(c for c in docker if c[1] == "run" and "download" in c)
    assert download[-7:] == [
        IMAGE, "download", "--model", "glide", "--cache-dir", "/models", "--quiet"
    ]  # fmt: skip
    assert "/var/lib/text2img/models:/models" in download
    cache = sandbox.path("/var/lib/text2img/models")
    assert cache.is_dir()
    assert mode(cache) == 0o755

    verbs = systemctl_verbs(sandbox.calls("systemctl"))
    assert ("enable", "text2img-autostop.timer") in verbs
    assert ("enable", "text2img.service") in verbs
    assert ("restart", "text2img.service") in verbs
    assert ("enable", "text2img-metadata-watch.service") in verbs
    # the NVIDIA runtime was registered with Docker, then Docker restarted
    assert sandbox.calls("nvidia-ctk")
    assert ("restart", "docker.service") in verbs

    # the log, in the journal under its tag, names each step
    journal = sandbox.journal()
    for step in ("arm-autostop", "metadata", "nvidia-driver", "docker", "pull", "secret"):
        assert f"step {step}:" in journal
    # the startup script logs as text2img-startup; the hold program it runs as text2img-hold
    assert {tuple(c[1:3]) for c in sandbox.calls("logger")} == {
        ("-t", "text2img-startup"),
        ("-t", "text2img-hold"),
    }


def test_no_secret_is_printed_or_passed_on_a_command_line(sandbox: Sandbox) -> None:
    result = sandbox.run()
    assert result.returncode == 0, result.stderr
    out = all_output(sandbox, result)
    curl = sandbox.calls("curl")
    assert any(c[-1].endswith("/versions/latest:access") for c in curl)  # argv is recorded
    assert any("-K" in c for c in curl)  # the bearer header went in on stdin
    assert API_TOKEN not in out
    assert API_TOKEN.strip() not in out
    assert ACCESS_TOKEN not in out


def test_second_run_changes_nothing_and_restarts_nothing(sandbox: Sandbox) -> None:
    assert sandbox.run().returncode == 0
    files = snapshot(sandbox)
    sandbox.clear_calls()
    time.sleep(0.01)

    result = sandbox.run()

    assert result.returncode == 0, result.stderr
    assert restarts(sandbox) == []
    assert not [c for c in sandbox.calls("docker") if c[1] in {"pull", "login", "run"}]
    assert not sandbox.calls("nvidia-ctk")
    assert not sandbox.calls("apt-get")
    assert snapshot(sandbox) == files
    assert "text2img.service unchanged and running" in result.stderr


def test_a_new_image_digest_is_pulled_and_restarts_only_the_service(sandbox: Sandbox) -> None:
    assert sandbox.run().returncode == 0
    sandbox.clear_calls()
    sandbox.google.set_attribute("text2img-image", IMAGE2)

    result = sandbox.run()

    assert result.returncode == 0, result.stderr
    assert ["docker", "pull", "--quiet", IMAGE2] in sandbox.calls("docker")
    assert restarts(sandbox) == [("restart", "text2img.service")]
    assert env_file(sandbox.path("/etc/text2img/unit.env"))["TEXT2IMG_IMAGE"] == IMAGE2
    assert sandbox.path("/var/lib/text2img/deployed-image").read_text().strip() == IMAGE2
    # the weights are checked again with the new image's downloader
    assert any(c[1] == "run" and IMAGE2 in c for c in sandbox.calls("docker"))
    # the old digest no longer takes disk space; the new one stays
    assert ["docker", "image", "rm", IMAGE] in sandbox.calls("docker")
    assert (sandbox.stub / "images").read_text().split() == [IMAGE2]


def test_a_stopped_service_is_started_again(sandbox: Sandbox) -> None:
    assert sandbox.run().returncode == 0
    (sandbox.stub / "active" / "text2img.service").unlink()
    sandbox.clear_calls()
    assert sandbox.run().returncode == 0
    # the weights are read into the page cache first (the unit orders it before the service)
    assert restarts(sandbox) == [
        ("start", "text2img-prefetch.service"),
        ("start", "text2img.service"),
    ]


def test_a_driver_that_never_loads_powers_off_fast_with_the_reason(sandbox: Sandbox) -> None:
    sandbox.flag("no-driver")
    started = time.monotonic()
    result = sandbox.run()
    elapsed = time.monotonic() - started

    assert result.returncode == 1
    assert elapsed < 20  # TEXT2IMG_DRIVER_TIMEOUT=2 here (180 s on the VM), not the grace
    assert len(sandbox.calls("nvidia-smi")) >= 3  # it polled
    reason = "text2img: GPU driver did not load: nvidia-smi failed for 2s on kernel 6.8.0-1019-gcp"
    assert reason in result.stderr
    assert "couldn't communicate with the NVIDIA driver" in result.stderr
    # on the serial console, and as the guest attribute the gateway reads
    assert reason in sandbox.path("/dev/ttyS0").read_text()
    assert sandbox.google.guest_attributes["text2img/boot-failure"].startswith(reason)
    verbs = systemctl_verbs(sandbox.calls("systemctl"))
    assert verbs[-1] == ("poweroff", "")
    # autostop was armed before, in case the poweroff itself fails
    assert ("enable", "text2img-autostop.timer") in verbs
    assert not sandbox.calls("docker")

    # the next boot has a driver again: the report is withdrawn
    sandbox.unflag("no-driver")
    assert sandbox.run().returncode == 0
    assert "text2img/boot-failure" not in sandbox.google.guest_attributes


def test_a_paused_vm_stays_up_when_the_driver_fails(sandbox: Sandbox) -> None:
    sandbox.flag("no-driver")
    sandbox.path("/etc/text2img").mkdir(parents=True)
    sandbox.path("/etc/text2img/autostop.paused").touch()
    result = sandbox.run()
    assert result.returncode == 1
    assert "staying up for you to look" in result.stderr
    assert ("poweroff", "") not in systemctl_verbs(sandbox.calls("systemctl"))


def test_kernel_and_nvidia_packages_are_held_once(sandbox: Sandbox) -> None:
    assert sandbox.run().returncode == 0
    held = (sandbox.stub / "held").read_text().split()
    assert sorted(held) == [
        "cuda-drivers-580",
        "libnvidia-compute-580-server",
        "linux-gcp",
        "linux-image-6.8.0-1019-gcp",
        "linux-modules-6.8.0-1019-gcp",
        "nvidia-driver-580-server",
    ]  # the running kernel's, not an old removed one; nothing unrelated (openssl, python3)
    sandbox.clear_calls()
    result = sandbox.run()
    assert result.returncode == 0
    assert [c[1] for c in sandbox.calls("apt-mark")] == ["showhold"]
    assert "already held (6 packages)" in result.stderr


def hold_apt_lock(sandbox: Sandbox, *, until_waited: bool) -> IO[str]:
    """Hold /var/lib/apt/lists/lock as apt-daily does (a POSIX record lock); release it
    once the script says it waits for it, or never."""
    lock = sandbox.path("/var/lib/apt/lists/lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    handle = lock.open("a")
    fcntl.lockf(handle, fcntl.LOCK_EX)

    def release() -> None:
        deadline = time.monotonic() + 60
        while "waiting for apt-daily" not in sandbox.journal() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a few more polls with the lock still held
        handle.close()

    if until_waited:
        threading.Thread(target=release, daemon=True).start()
    return handle  # the caller keeps it: closing the file releases the lock


def test_apt_waits_for_a_held_lists_lock_at_first_boot(sandbox: Sandbox) -> None:
    sandbox.remove_stub("docker")  # apt-get update + install are needed
    hold_apt_lock(sandbox, until_waited=True)
    result = sandbox.run()
    assert result.returncode == 0, result.stderr
    assert "waiting for apt-daily/unattended-upgrades to release apt's locks" in result.stderr
    calls = sandbox.calls()
    freeze = calls.index(["systemctl", "stop", "apt-daily.timer", "apt-daily-upgrade.timer"])
    stop_apt = ["systemctl", "stop", "apt-daily.service"]
    stop = next(i for i, c in enumerate(calls) if c[:3] == stop_apt)
    assert freeze < stop  # no timer starts a new run while this one waits
    assert "unattended-upgrades.service" in calls[stop]
    first_apt = next(i for i, c in enumerate(calls) if c[0] == "apt-get")
    assert stop < first_apt
    assert "installed: docker.io" in result.stderr


def test_apt_locked_for_good_fails_naming_the_step(sandbox: Sandbox) -> None:
    sandbox.remove_stub("docker")
    sandbox.env_extra["TEXT2IMG_APT_TIMEOUT"] = "2"
    held = hold_apt_lock(sandbox, until_waited=False)
    result = sandbox.run()
    held.close()
    assert result.returncode == 1
    assert "apt is still locked after 2s" in result.stderr
    assert "FAILED in step 'hold'" in result.stderr
    assert not sandbox.calls("apt-get")


def test_a_changed_file_in_the_metadata_is_installed_without_a_reboot(sandbox: Sandbox) -> None:
    assert sandbox.run().returncode == 0
    sandbox.clear_calls()
    timer = (REPO / "systemd/text2img-autostop.timer").read_text()
    sandbox.google.set_attribute(
        "text2img-file-autostop-timer",
        timer.replace("OnUnitInactiveSec=1min", "OnUnitInactiveSec=2min"),
    )
    result = sandbox.run()  # what text2img-redeploy does when the watcher sees the change
    assert result.returncode == 0, result.stderr
    installed = sandbox.path("/etc/systemd/system/text2img-autostop.timer").read_text()
    assert "OnUnitInactiveSec=2min" in installed
    assert restarts(sandbox) == [("daemon-reload", ""), ("restart", "text2img-autostop.timer")]


def test_missing_file_attribute_is_refused_with_what_to_do(sandbox: Sandbox) -> None:
    del sandbox.google.attributes["text2img-file-autostop-py"]
    result = sandbox.run()
    assert result.returncode == 1
    assert "metadata 'text2img-file-autostop-py' is missing or empty" in result.stderr
    assert "run pulumi up" in result.stderr


def test_sdxl_model_reaches_serve_and_download(sandbox: Sandbox) -> None:
    sandbox.google.attributes.update(rendered_metadata(model="sdxl-lightning"))
    result = sandbox.run()
    assert result.returncode == 0, result.stderr
    download = next(c for c in sandbox.calls("docker") if c[1] == "run" and "download" in c)
    assert download[-6:-3] == ["download", "--model", "sdxl-lightning"]
    assert env_file(sandbox.path("/etc/text2img/unit.env"))["TEXT2IMG_MODEL"] == "sdxl-lightning"


def test_sdxl_steps_reach_the_download_and_the_service(sandbox: Sandbox) -> None:
    sandbox.google.attributes.update(rendered_metadata(model="sdxl-lightning", sdxlSteps="2,4,8"))
    assert sandbox.run().returncode == 0
    download = next(c for c in sandbox.calls("docker") if c[1] == "run" and "download" in c)
    at = download.index("--env")
    assert download[at : at + 2] == ["--env", "TEXT2IMG_SDXL_STEPS=2,4,8"]
    assert env_file(sandbox.path("/etc/text2img/service.env"))["TEXT2IMG_SDXL_STEPS"] == "2,4,8"


def test_a_bad_model_env_line_is_refused(sandbox: Sandbox) -> None:
    sandbox.google.set_attribute("text2img-model-env", "LD_PRELOAD=/tmp/x.so")
    result = sandbox.run()
    assert result.returncode == 1
    assert "metadata 'text2img-model-env' has the line 'LD_PRELOAD=/tmp/x.so'" in result.stderr
    assert not [c for c in sandbox.calls("docker") if c[1] == "run"]


def test_failing_pull_is_retried_then_succeeds(sandbox: Sandbox) -> None:
    sandbox.set_pull_failures(2)
    result = sandbox.run()
    assert result.returncode == 0, result.stderr
    pulls = [c for c in sandbox.calls("docker") if c[1] == "pull"]
    logins = [c for c in sandbox.calls("docker") if c[1] == "login"]
    assert len(pulls) == 3
    assert len(logins) == 3  # a fresh login (token) before every attempt
    assert "docker pull: attempt 2 failed; retrying" in result.stderr


def test_failing_pull_gives_up_and_names_the_step(sandbox: Sandbox) -> None:
    sandbox.set_pull_failures(10)
    result = sandbox.run()
    assert result.returncode != 0
    assert len([c for c in sandbox.calls("docker") if c[1] == "pull"]) == 3
    assert "docker pull: giving up after 3 attempt(s)" in result.stderr
    assert "FAILED in step 'pull'" in result.stderr
    assert "autostop stays armed" in result.stderr
    verbs = systemctl_verbs(sandbox.calls("systemctl"))
    assert ("enable", "text2img-autostop.timer") in verbs
    assert not {("enable", "text2img.service"), ("restart", "text2img.service")} & set(verbs)


def test_metadata_server_hiccups_are_retried(sandbox: Sandbox) -> None:
    sandbox.google.metadata_failures = 3  # the first reads: the helper library's fetch
    result = sandbox.run()
    assert result.returncode == 0, result.stderr
    assert "text2img-file-startup-lib-sh: attempt 3 failed" in result.stderr
    assert "returned error: 503" in result.stderr


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("text2img-image", IMAGE.split("@")[0] + ":latest", "not an image by digest"),
        ("text2img-image", "", "'text2img-image' is not set"),
        ("text2img-idle-minutes", "ten", "'text2img-idle-minutes' is 'ten'"),
        ("text2img-token-secret", "my-secret", "projects/PROJECT/secrets/NAME"),
        ("text2img-port", "99999", "'text2img-port' is '99999'"),
        ("text2img-translation", "yes", "use on or off"),
    ],
)
def test_bad_metadata_is_refused_with_what_to_do(
    sandbox: Sandbox, key: str, value: str, message: str
) -> None:
    sandbox.google.set_attribute(key, value)
    result = sandbox.run()
    assert result.returncode == 1
    assert "FAILED in step 'metadata'" in result.stderr
    assert message in result.stderr
    assert not [c for c in sandbox.calls("docker") if c[1] == "pull"]
    assert ("enable", "text2img-autostop.timer") in systemctl_verbs(sandbox.calls("systemctl"))


def test_defaults_apply_when_optional_metadata_is_absent(sandbox: Sandbox) -> None:
    for key in ("text2img-idle-minutes", "text2img-boot-grace-minutes", "text2img-translation"):
        del sandbox.google.attributes[key]
    assert sandbox.run().returncode == 0
    autostop = env_file(sandbox.path("/etc/text2img/autostop.env"))
    assert autostop["TEXT2IMG_AUTOSTOP_IDLE_MINUTES"] == "20"
    assert autostop["TEXT2IMG_AUTOSTOP_BOOT_GRACE_MINUTES"] == "30"
    assert env_file(sandbox.path("/etc/text2img/service.env"))["TEXT2IMG_TRANSLATION"] == "on"


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (404, "no enabled version"),
    ],
)
def test_secret_manager_refusal_fails_at_once_with_the_fix(
    sandbox: Sandbox, status: int, message: str
) -> None:
    sandbox.google.secret_status = status
    result = sandbox.run()
    assert result.returncode == 1
    assert "FAILED in step 'secret'" in result.stderr
    assert message in result.stderr
    secret_calls = [r for r in sandbox.google.requests if r[1].endswith(":access")]
    assert len(secret_calls) == 1  # not retried: retrying cannot fix a permission


def test_a_403_while_the_grant_applies_is_waited_out(sandbox: Sandbox) -> None:
    sandbox.env_extra["TEXT2IMG_IAM_TIMEOUT"] = "30"
    sandbox.google.secret_denials = 2  # then the grant is in force
    sandbox.set_pull_denials(2)
    result = sandbox.run()
    assert result.returncode == 0, result.stderr
    secret_calls = [r for r in sandbox.google.requests if r[1].endswith(":access")]
    assert len(secret_calls) == 3
    waits = [x for x in result.stderr.splitlines() if "refused (HTTP 403)" in x]
    assert len(waits) == 4  # each wait is logged: two for the pull, two for the secret
    assert sum("docker pull: refused" in x for x in waits) == 2
    assert "waiting 1s, " in waits[0]
    assert "waiting 2s, " in waits[1]  # backing off
    assert "API token fetched" in result.stderr


@pytest.mark.parametrize(
    ("where", "grant"),
    [
        ("secret", "roles/secretmanager.secretAccessor on projects/my-proj/secrets/"),
        ("pull", "roles/artifactregistry.reader on the repository of"),
    ],
)
def test_a_403_that_lasts_gives_up_naming_the_grant(
    sandbox: Sandbox, where: str, grant: str
) -> None:
    if where == "secret":
        sandbox.google.secret_denials = 10**6
    else:
        sandbox.set_pull_denials(10**6)
    sandbox.env_extra["TEXT2IMG_IAM_TIMEOUT"] = "5"  # 600 s on the VM
    result = sandbox.run()
    assert result.returncode == 1
    assert f"FAILED in step '{where}'" in result.stderr
    assert "still refused (HTTP 403) after " in result.stderr
    assert grant in result.stderr
    assert result.stderr.count("refused (HTTP 403), perhaps an IAM grant") >= 2


def test_multiline_secret_is_refused_without_printing_it(sandbox: Sandbox) -> None:
    sandbox.google.secret_value = b"first line\nsecond-line-SECRET"
    result = sandbox.run()
    assert result.returncode == 1
    assert "not a single-line token" in result.stderr
    assert "SECRET" not in all_output(sandbox, result)


def test_secret_manager_errors_are_retried(sandbox: Sandbox) -> None:
    sandbox.google.secret_status = 503
    result = sandbox.run()
    assert result.returncode != 0
    assert "Secret Manager: giving up after 3 attempt(s)" in result.stderr
    assert "FAILED in step 'secret'" in result.stderr


def test_failed_weights_download_names_the_step(sandbox: Sandbox) -> None:
    sandbox.flag("run-fails")
    result = sandbox.run()
    assert result.returncode != 0
    assert "FAILED in step 'weights'" in result.stderr
    assert not sandbox.path("/var/lib/text2img/weights.ok").exists()


def test_missing_docker_and_toolkit_are_installed_without_upgrading(sandbox: Sandbox) -> None:
    sandbox.remove_stub("docker")
    sandbox.remove_stub("nvidia-ctk")
    result = sandbox.run()
    assert result.returncode == 0, result.stderr
    installs = [c for c in sandbox.calls("apt-get") if "install" in c]
    assert [c[-1] for c in installs] == ["docker.io", "nvidia-container-toolkit"]
    assert all("--no-install-recommends" in c for c in installs)
    assert not [c for c in sandbox.calls("apt-get") if "upgrade" in c or "dist-upgrade" in c]
    source = sandbox.path("/etc/apt/sources.list.d/nvidia-container-toolkit.list").read_text()
    assert "signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg" in source
    assert "/stable/deb/$(ARCH) /" in source
    keyring = sandbox.path("/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg")
    assert keyring.exists()
    # apt verifies and reads as an unprivileged user: world-readable, normal umask
    assert mode(keyring) == 0o644
    assert mode(sandbox.path("/etc/apt/sources.list.d/nvidia-container-toolkit.list")) == 0o644
    assert set((sandbox.stub / "apt-get.umask").read_text().split()) == {"0022"}
    assert "installed: docker.io nvidia-container-toolkit" in result.stderr


def test_concurrent_runs_are_serialised_by_a_lock(sandbox: Sandbox) -> None:
    assert sandbox.run().returncode == 0
    sandbox.env_extra["TEXT2IMG_LOCK_TIMEOUT"] = "1"
    lock = sandbox.path("/run/text2img/startup.lock")
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = sandbox.run()
    assert result.returncode == 1
    assert "another run of the startup script still holds" in result.stderr


def test_cache_belongs_to_a_non_root_image_user(sandbox: Sandbox) -> None:
    (sandbox.stub / "image-user").write_text("10001:10002\n")
    (sandbox.path("/var/lib/text2img/models/base")).mkdir(parents=True)
    assert sandbox.run().returncode == 0
    for path in (
        sandbox.path("/var/lib/text2img/models"),
        sandbox.path("/var/lib/text2img/models/base"),
    ):
        assert (path.stat().st_uid, path.stat().st_gid) == (10001, 10002)


def test_an_image_without_a_shell_still_deploys(sandbox: Sandbox) -> None:
    (sandbox.stub / "image-user").write_text("none\n")
    result = sandbox.run()
    assert result.returncode == 0, result.stderr
    assert "could not tell the image's user (got '(no answer)')" in result.stderr
    assert "FAILED" not in result.stderr


def test_missing_helper_library_fails_at_once_with_what_to_do(sandbox: Sandbox) -> None:
    del sandbox.google.attributes["text2img-file-startup-lib-sh"]
    result = sandbox.run()
    assert result.returncode == 1
    assert "cannot read text2img-file-startup-lib-sh from the metadata; run pulumi up" in (
        result.stderr
    )
    assert not sandbox.calls("systemctl")  # nothing was half done

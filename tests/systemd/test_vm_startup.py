"""systemd/startup.sh run for real in a sandbox: stub binaries, fake metadata server and
fake Secret Manager on 127.0.0.1, a temporary root for every path it writes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.systemd.sandbox import (
    ACCESS_TOKEN,
    API_TOKEN,
    IMAGE,
    IMAGE2,
    INTERNAL_IP,
    Sandbox,
    all_output,
    env_file,
    mode,
    systemctl_verbs,
)

UNIT_FILES = [
    "text2img.service",
    "text2img-autostop.service",
    "text2img-autostop.timer",
    "text2img-metadata-watch.service",
    "text2img-redeploy.service",
]


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
    ]


def test_first_boot_writes_units_env_files_and_starts_the_service(sandbox: Sandbox) -> None:
    result = sandbox.run()
    assert result.returncode == 0, result.stderr

    for name in UNIT_FILES:
        unit = sandbox.path(f"/etc/systemd/system/{name}")
        assert unit.is_file(), name
        assert mode(unit) == 0o644
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
    }
    assert env_file(sandbox.path("/etc/text2img/unit.env")) == {
        "TEXT2IMG_IMAGE": IMAGE,
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
        "${TEXT2IMG_IMAGE} serve --host 0.0.0.0 --port 8080",
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
    assert download[-5:] == [IMAGE, "download", "--cache-dir", "/models", "--quiet"]
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
    assert all(c[1:3] == ["-t", "text2img-startup"] for c in sandbox.calls("logger"))


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
    assert restarts(sandbox) == [("start", "text2img.service")]


def test_missing_driver_waits_then_fails_naming_the_step(sandbox: Sandbox) -> None:
    sandbox.flag("no-driver")
    started = time.monotonic()
    result = sandbox.run()
    elapsed = time.monotonic() - started

    assert result.returncode != 0
    assert 1 <= elapsed < 20  # bash counts whole seconds
    assert len(sandbox.calls("nvidia-smi")) >= 3  # it polled
    assert "FAILED in step 'nvidia-driver'" in result.stderr
    assert "NVIDIA driver is not ready after 2s" in result.stderr
    assert "couldn't communicate with the NVIDIA driver" in result.stderr
    assert "FAILED in step 'nvidia-driver'" in sandbox.journal()
    # autostop was armed before, so this broken VM still powers itself off
    verbs = systemctl_verbs(sandbox.calls("systemctl"))
    assert ("enable", "text2img-autostop.timer") in verbs
    assert ("restart", "text2img-autostop.timer") in verbs
    assert not sandbox.calls("docker")


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
    assert ("enable", "text2img-autostop.timer") in systemctl_verbs(sandbox.calls("systemctl"))
    assert not sandbox.path("/etc/systemd/system/text2img.service").exists()


def test_metadata_server_hiccups_are_retried(sandbox: Sandbox) -> None:
    sandbox.google.metadata_failures = 2
    result = sandbox.run()
    assert result.returncode == 0, result.stderr
    assert "HTTP 503" in result.stderr


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
        (403, "needs roles/secretmanager.secretAccessor"),
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
    import fcntl

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

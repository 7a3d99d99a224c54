"""Instance metadata of the GPU VM, exactly the keys of DEVELOPERS.md ("Instance metadata").

`startup-script` is systemd/startup.sh verbatim; every other file of systemd/ (units,
autostop.py, metadata_watch.py) travels as one `text2img-file-*` attribute that the
script installs. All are read when the program runs. They go in `metadata`, not in
`metadata_startup_script`, so a change updates the VM in place (the VM's metadata watcher
applies it without a reboot) instead of recreating it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pulumi

from infra.config import Settings
from infra.models import model_env
from text2img.engines import registry

REPO_ROOT = Path(__file__).resolve().parent.parent
STARTUP_SCRIPT = REPO_ROOT / "systemd" / "startup.sh"
# tests only: point the program at another script file
STARTUP_SCRIPT_ENV = "TEXT2IMG_INFRA_STARTUP_SCRIPT"
SYSTEMD_DIR = REPO_ROOT / "systemd"
METADATA_VALUE_LIMIT = 256 * 1024  # bytes per metadata value (Compute Engine limit)
METADATA_TOTAL_LIMIT = 512 * 1024  # bytes of all values of one instance together
# systemd/ file -> its metadata key; startup.sh's install_files lists the same keys (but
# its own helper library's) with where each file goes on the VM.
VM_FILES = {
    "startup-lib.sh": "text2img-file-startup-lib-sh",  # sourced by startup.sh, not installed
    "autostop.py": "text2img-file-autostop-py",
    "text2img-autostop.service": "text2img-file-autostop-service",
    "text2img-autostop.timer": "text2img-file-autostop-timer",
    "metadata_watch.py": "text2img-file-metadata-watch-py",
    "text2img-metadata-watch.service": "text2img-file-metadata-watch-service",
    "text2img-redeploy.service": "text2img-file-redeploy-service",
    "text2img.service": "text2img-file-text2img-service",
    "boot-guard.sh": "text2img-file-boot-guard-sh",
    "prefetch.sh": "text2img-file-prefetch-sh",
    "text2img-prefetch.service": "text2img-file-prefetch-service",
    "hold.sh": "text2img-file-hold-sh",
    "text2img-hold.service": "text2img-file-hold-service",
}


class StartupScriptError(pulumi.RunError):
    """systemd/startup.sh is missing or cannot be used as instance metadata."""


def startup_script_path() -> Path:
    override = os.environ.get(STARTUP_SCRIPT_ENV)
    return Path(override) if override else STARTUP_SCRIPT


def read_startup_script() -> str:
    path = startup_script_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StartupScriptError(
            f"{path} not found: the VM's startup script is part of the repository "
            "(systemd/startup.sh); run `pulumi up` from a complete checkout"
        ) from None
    size = len(text.encode("utf-8"))
    if size > METADATA_VALUE_LIMIT:
        raise StartupScriptError(
            f"{path} is {size} bytes; instance metadata values are limited to "
            f"{METADATA_VALUE_LIMIT} bytes"
        )
    if not text.startswith("#!"):
        raise StartupScriptError(f"{path} does not start with a #! line")
    return text


def read_vm_files(directory: Path = SYSTEMD_DIR) -> dict[str, str]:
    """The metadata attributes carrying systemd/'s files (key -> the file's text)."""
    files = {}
    for name, key in VM_FILES.items():
        path = directory / name
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise StartupScriptError(
                f"{path} not found: the VM's units and programs are part of the repository "
                "(systemd/); run `pulumi up` from a complete checkout"
            ) from None
        if not text.strip():
            raise StartupScriptError(f"{path} is empty")
        files[key] = text
    return files


def check_total_size(values: dict[str, str]) -> int:
    """Bytes of all metadata values together; StartupScriptError past Compute's limits."""
    sizes = {key: len(value.encode("utf-8")) for key, value in values.items()}
    for key, size in sizes.items():
        if size > METADATA_VALUE_LIMIT:
            raise StartupScriptError(
                f"metadata {key!r} is {size} bytes; one value may hold {METADATA_VALUE_LIMIT}"
            )
    total = sum(sizes.values())
    if total > METADATA_TOTAL_LIMIT:
        raise StartupScriptError(
            f"the instance metadata is {total} bytes; Compute Engine allows "
            f"{METADATA_TOTAL_LIMIT} in total: shrink systemd/'s files"
        )
    return total


def instance_metadata(
    settings: Settings,
    *,
    startup_script: str,
    image: pulumi.Input[str],
    token_secret: pulumi.Input[str],
    vm_files: dict[str, str] | None = None,
) -> dict[str, pulumi.Input[str]]:
    """The settings and files the startup script reads; `pulumi up` changes them in place.
    `vm_files` defaults to systemd/'s files as they are now (read_vm_files)."""
    files = read_vm_files() if vm_files is None else vm_files
    check_total_size({"startup-script": startup_script, **files})
    return {
        "startup-script": startup_script,
        **files,
        "text2img-image": image,
        "text2img-idle-minutes": str(settings.idle_minutes),
        "text2img-boot-grace-minutes": str(settings.boot_grace_minutes),
        "text2img-token-secret": token_secret,
        "text2img-model-cache": settings.model_cache_dir,
        "text2img-translate-project": settings.project if settings.translation else "",
        "text2img-translation": "on" if settings.translation else "off",
        "text2img-port": str(settings.service_port),
        "text2img-model": settings.model,
        # the files a start of this model reads (`find -path` patterns relative to the
        # model cache, one a line; EngineSpec.prefetch): the VM reads them into the page
        # cache before the service starts
        "text2img-prefetch": "\n".join(registry.get_spec(settings.model).prefetch),
        # the deployment variables the model reads (EngineSpec.deploy_env), KEY=VALUE a line:
        # the startup script passes them to `text2img download` and the service
        "text2img-model-env": "\n".join(f"{k}={v}" for k, v in model_env(settings).items()),
        # the startup script reports a driver that never loaded as the guest attribute
        # text2img/boot-failure, which the gateway reads (start_failed, GPU_DRIVER)
        "enable-guest-attributes": "TRUE",
        "enable-oslogin": "TRUE",
        "block-project-ssh-keys": "TRUE",
    }

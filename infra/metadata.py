"""Instance metadata of the GPU VM, exactly the keys of DEVELOPERS.md ("Instance metadata").

`startup-script` is systemd/startup.sh verbatim (self-contained: units and the autostop
program are embedded in it), read when the program runs. It goes in `metadata`, not in
`metadata_startup_script`, so a change updates the VM in place instead of recreating it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pulumi

from infra.config import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
STARTUP_SCRIPT = REPO_ROOT / "systemd" / "startup.sh"
# tests only: point the program at another script file
STARTUP_SCRIPT_ENV = "TEXT2IMG_INFRA_STARTUP_SCRIPT"
METADATA_VALUE_LIMIT = 256 * 1024  # bytes per metadata value (Compute Engine limit)


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


def instance_metadata(
    settings: Settings,
    *,
    startup_script: str,
    image: pulumi.Input[str],
    token_secret: pulumi.Input[str],
) -> dict[str, pulumi.Input[str]]:
    """The settings the startup script reads; `pulumi up` changes them in place."""
    return {
        "startup-script": startup_script,
        "text2img-image": image,
        "text2img-idle-minutes": str(settings.idle_minutes),
        "text2img-boot-grace-minutes": str(settings.boot_grace_minutes),
        "text2img-token-secret": token_secret,
        "text2img-model-cache": settings.model_cache_dir,
        "text2img-translate-project": settings.project if settings.translation else "",
        "text2img-translation": "on" if settings.translation else "off",
        "text2img-port": str(settings.service_port),
        "enable-oslogin": "TRUE",
        "block-project-ssh-keys": "TRUE",
    }

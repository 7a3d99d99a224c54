"""Which models the VM serves, how much disk their weights need and which deployment
variables they read: all from the engine registry (torch-free), so a new engine needs no
change here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from text2img.engines import registry

if TYPE_CHECKING:
    from infra.config import Settings

# Boot disk when diskSizeGb is 0 (auto): the DLVM image (50 GB) + two service images during
# a roll-out (30 GB) + three times the model's weights (the cache, a download beside it,
# margin), rounded up to 10 GB, and never below 100 GB (the kit's size before models were
# chosen: a boot disk cannot shrink). A larger size grows the disk in place (infra/server.py).
# The weights' size is the engine's own declaration (EngineSpec.download_bytes).
DISK_BASE_GB = 80
DISK_MIN_AUTO_GB = 100


def served_models() -> tuple[str, ...]:
    """The models the VM can serve: every registered engine except the random-weight
    twins (`tiny`, ...), which draw noise. Read from the registry each time (torch-free)."""
    return tuple(name for name in registry.ENGINES if not registry.get_spec(name).random_weights)


# The Pulumi config key that sets each deployment variable an engine may read
# (EngineSpec.deploy_env); the VM gets them as metadata `text2img-model-env`.
DEPLOY_ENV_KEYS = {"TEXT2IMG_SDXL_STEPS": "sdxlSteps"}


def model_env(s: Settings) -> dict[str, str]:
    """The deployment variables the served model reads, from their config keys."""
    values = {"sdxlSteps": s.sdxl_steps}
    spec = registry.get_spec(s.model)
    return {
        name: values[DEPLOY_ENV_KEYS[name]] for name in spec.deploy_env if name in DEPLOY_ENV_KEYS
    }


def weights_gb(model: str, env: Mapping[str, str] | None = None) -> float:
    """GB (10^9 bytes) the model's weights take in the cache, from its engine spec."""
    return registry.get_spec(model).download_bytes_for_env(env or {}) / 1e9


def auto_disk_size_gb(model: str, env: Mapping[str, str] | None = None) -> int:
    """The boot disk size (GB) that holds the OS, the service images and `model`'s weights."""
    needed = DISK_BASE_GB + 3 * weights_gb(model, env)
    return max(DISK_MIN_AUTO_GB, -(-int(needed * 10) // 100) * 10)

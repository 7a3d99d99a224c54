"""Settings whose change after the first `pulumi up` replaces cloud resources, and the
warnings `pulumi preview` / `pulumi up` print before such a change is applied.

Which fields force a new resource is the provider's schema (terraform-provider-google,
under pulumi-gcp): an instance's zone, guest accelerators and `scheduling.preemptible` /
`provisioning_model` are ForceNew; a disk's zone is, its size is not (it grows in place
and is re-created only to shrink, which fails while a VM uses it). The boot disk is a
separate resource (infra/server.py), so only zone and region changes lose it.

How the program knows the stack exists and what it runs: every successful `up` exports the
settings below as `deployed_settings`; the next run reads them back through a
StackReference to its own stack (own_stack_name). A new stack has no outputs yet (Pulumi's
backend client returns empty outputs for a stack without a root resource), so it gets no
warnings. The comparison happens before any resource changes:
the warnings appear in the preview that `pulumi up` shows before asking to proceed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pulumi

from infra.config import NAMESPACE, Settings

OUTPUT = "deployed_settings"
_KEEPS_DISK = (
    "replaces the VM; its boot disk, with the cached weights and the pulled image, is kept. "
    "The old VM is deleted first: if the new one cannot be created (no GPU capacity, "
    "quota), there is no VM until the next successful `pulumi up`"
)
# key -> what a change replaces (Pulumi.yaml's descriptions say the same)
REPLACING_KEYS: dict[str, str] = {
    "region": (
        "replaces everything regional: network, registry, gateway (new URL), the VM and "
        "its boot disk, like a new deployment"
    ),
    "zone": (
        "replaces the VM and its boot disk (disks are zonal): the model weights are "
        "downloaded and the image pulled again, unless `scripts/vm move --zone Z` set "
        "bootDiskSnapshot"
    ),
    "bootDiskSnapshot": (
        "replaces the boot disk with one created from that snapshot (or, emptied, from the "
        "image: weights downloaded again); `scripts/vm move` sets it together with `zone`"
    ),
    "spot": _KEEPS_DISK,
    "gpuType": _KEEPS_DISK,
    "gpuCount": _KEEPS_DISK,
}


def deployed_settings(settings: Settings) -> dict[str, Any]:
    """What the next run compares against: the replacing keys and the disk size."""
    return {
        "region": settings.region,
        "zone": settings.zone,
        "spot": settings.spot,
        "gpuType": settings.gpu_type,
        "gpuCount": settings.gpu_count,
        "diskSizeGb": settings.disk_size_gb,
        "bootDiskSnapshot": settings.boot_disk_snapshot,
    }


def _shown(value: Any) -> str:
    """Config spelling; numbers read back from stack outputs arrive as floats (1.0)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if value == "":
        return '""'
    return str(value)


def replacement_warnings(previous: Mapping[str, Any] | None, settings: Settings) -> list[str]:
    """One warning per changed key that replaces something (empty for a new stack)."""
    if not previous:
        return []
    current = deployed_settings(settings)
    notes = []
    for key, consequence in REPLACING_KEYS.items():
        if key in previous and _shown(previous[key]) != _shown(current[key]):
            was = _shown(previous[key])
            notes.append(
                f"{NAMESPACE}:{key}: changed from {was} to {_shown(current[key])} since the "
                f"last `pulumi up`: this {consequence}. To keep what runs now: "
                f"`pulumi config set {key} {was}`"
            )
    old_disk = previous.get("diskSizeGb")
    if isinstance(old_disk, int | float) and settings.disk_size_gb < old_disk:
        notes.append(
            f"{NAMESPACE}:diskSizeGb: {settings.disk_size_gb} is smaller than the deployed "
            f"{int(old_disk)} GB; a persistent disk cannot shrink, and replacing the boot "
            "disk fails while the VM uses it. Set it back "
            f"(`pulumi config set diskSizeGb {int(old_disk)}`) or `pulumi destroy` first"
        )
    return notes


DIY_ORGANIZATION = "organization"  # what a DIY (`pulumi login --local`, bucket) backend reports


def own_stack_name() -> str:
    """How a StackReference names the running stack. Pulumi Cloud: `org/project/stack`. A
    DIY backend: the bare stack name, which its project-scoped layout resolves in the
    current project and its legacy (pre-project) layout accepts as the only form there."""
    org = pulumi.get_organization()
    if not org or org == DIY_ORGANIZATION:
        return pulumi.get_stack()
    return f"{org}/{pulumi.get_project()}/{pulumi.get_stack()}"


def warn_before_replacing(settings: Settings) -> pulumi.Output[list[str]]:
    """Read the last deployed settings and log a warning for each replacing change."""
    previous = pulumi.StackReference(own_stack_name()).get_output(OUTPUT)

    def report(value: Any) -> list[str]:
        notes = replacement_warnings(value if isinstance(value, Mapping) else None, settings)
        for note in notes:
            pulumi.log.warn(note)
        return notes

    return previous.apply(report)

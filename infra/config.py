"""The stack's settings: read once from Pulumi config into a frozen dataclass, validated.

Keys, types, defaults and descriptions are declared once, in Pulumi.yaml. Every invalid
value is reported at preview time with the key's name and what to set instead.
"""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, replace

import pulumi

from infra.models import auto_disk_size_gb, model_env, served_models
from text2img.engines import registry
from text2img.errors import UserError

NAMESPACE = "text2img"

# GPUs that attach to N1 machine types; every other GPU comes with a fixed A2/A3/G2 shape.
N1_GPU_TYPES = frozenset(
    {"nvidia-tesla-t4", "nvidia-tesla-p4", "nvidia-tesla-v100", "nvidia-tesla-p100"}
)
# zones known to offer the GPU (docs/gcp-facts.md §2, SkyPilot catalog); other regions are
# not checked. `gcloud compute accelerator-types list --filter=name=nvidia-tesla-t4` is
# the authority, so an unlisted zone only warns.
KNOWN_GPU_ZONES = {
    ("nvidia-tesla-t4", "asia-northeast1"): ("a", "c"),
    ("nvidia-tesla-t4", "us-central1"): ("a", "b", "c", "f"),
}
BACKENDS = ("vm", "cloudrun")
# Regions with Cloud Run L4 GPUs (cloud.google.com/run/docs/configuring/services/gpu,
# "Supported regions"); asia-south1 is by invitation only. Tokyo has none: Singapore is the
# nearest.
CLOUD_RUN_GPU_REGIONS = (
    "asia-southeast1",
    "europe-west1",
    "europe-west4",
    "us-central1",
    "us-east4",
    "asia-south1",
)
CLOUD_RUN_GPU_INVITE_ONLY = frozenset({"asia-south1"})
MAX_GPUS_LIMIT = 20

BUILD_MACHINE_TYPES = frozenset(
    {"e2-medium", "e2-highcpu-8", "e2-highcpu-32", "n1-highcpu-8", "n1-highcpu-32"}
)
# Cloud Build regions every project may use: depending on usage, Google restricts some
# projects to these ("Restricted regions for some projects", cloud.google.com/build/docs/
# locations); elsewhere such a project gets FAILED_PRECONDITION "due to quota restrictions,
# cannot run builds in this region".
UNRESTRICTED_BUILD_REGIONS = (
    "us-central1",
    "us-west2",
    "europe-west1",
    "asia-east1",
    "australia-southeast1",
    "southamerica-east1",
)

_PROJECT_RE = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_N1_RE = re.compile(r"^n1-(standard|highmem|highcpu)-(1|2|4|8|16|32|64|96)$")
_IMAGE_FAMILY_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_IMAGE_REF_RE = re.compile(
    r"^(?P<host>[a-z0-9.-]+(:[0-9]+)?)/(?P<path>[a-z0-9._/-]+)@sha256:[0-9a-f]{64}$"
)
# minute hour day-of-month month day-of-week, each field digits, *, ranges, steps, lists
_CRON_FIELD_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_CRON_ATOM_RE = re.compile(r"^(\*|[0-9]+(-[0-9]+)?)(/[0-9]+)?$")


class ConfigError(pulumi.RunError):
    """Invalid stack configuration; the message lists every bad key and how to fix it."""


@dataclass(frozen=True)
class Settings:
    """Everything the program needs from `pulumi config`, typed and validated."""

    project: str
    region: str
    zone: str
    machine_type: str
    gpu_type: str
    gpu_count: int
    spot: bool
    image_family: str
    image_project: str
    image_name: str
    disk_size_gb: int
    model: str
    idle_minutes: int
    boot_grace_minutes: int
    service_port: int
    model_cache_dir: str
    translation: bool
    schedule_start: str
    schedule_stop: str
    schedule_time_zone: str
    service_image: str
    gateway_image: str
    build_machine_type: str
    gateway_max_instances: int
    subnet_cidr: str
    gateway_egress_cidr: str
    build_region: str
    flow_logs: bool
    boot_disk_snapshot: str = ""  # the boot disk is created from this snapshot (vm move)
    preflight: bool = True  # check quota, billing, zone, policies before creating anything
    # issue 23 (Cloud Run GPU backend); defaults keep the VM backend
    backend: str = "vm"
    gpu_region: str = "asia-southeast1"
    max_gpus: int = 3
    gpu_zonal_redundancy: bool = False
    sdxl_steps: str = "4"  # sdxl-lightning: TEXT2IMG_SDXL_STEPS on the VM

    @property
    def on_cloud_run(self) -> bool:
        return self.backend == "cloudrun"

    @property
    def has_schedule(self) -> bool:
        return bool(self.schedule_start or self.schedule_stop)

    @property
    def needs_build(self) -> bool:
        return not (self.service_image and self.gateway_image)


def _cron_error(expr: str) -> str | None:
    fields = expr.split()
    if len(fields) != 5:
        return f"needs 5 fields (minute hour day month weekday), got {len(fields)}"
    for field, (low, high) in zip(fields, _CRON_FIELD_RANGES, strict=True):
        for atom in field.split(","):
            if not _CRON_ATOM_RE.match(atom):
                return f"field {field!r} is not a cron field"
            numbers = [int(n) for n in re.findall(r"[0-9]+", atom.split("/")[0])]
            if any(n < low or n > high for n in numbers):
                return f"field {field!r} is outside {low}-{high}"
    return None


def _check_cidr(key: str, value: str, errors: list[str]) -> ipaddress.IPv4Network | None:
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        errors.append(f"{key}: {value!r} is not an IPv4 network ({exc})")
        return None
    if not net.is_private:
        errors.append(f"{key}: {value!r} is not a private range (use e.g. 10.20.0.0/24)")
        return None
    return net


def validate(s: Settings) -> list[str]:
    """Return one message per invalid setting (empty when all are valid)."""
    errors: list[str] = []

    def bad(key: str, message: str) -> None:
        errors.append(f"{NAMESPACE}:{key}: {message}")

    if not _PROJECT_RE.match(s.project):
        bad("project", f"{s.project!r} is not a project id (6-30 lowercase letters, digits, -)")
    if not _REGION_RE.match(s.region):
        bad("region", f"{s.region!r} is not a region name like asia-northeast1")
    if not re.match(rf"^{re.escape(s.region)}-[a-z]$", s.zone):
        bad("zone", f"{s.zone!r} is not a zone of region {s.region!r} (e.g. {s.region}-a)")
    if s.gpu_type not in N1_GPU_TYPES:
        bad("gpuType", f"{s.gpu_type!r} is not one of {', '.join(sorted(N1_GPU_TYPES))}")
    if not _N1_RE.match(s.machine_type):
        bad(
            "machineType",
            f"{s.machine_type!r} cannot take a {s.gpu_type} GPU: use an N1 type such as "
            "n1-standard-4 (GPUs attach only to N1; shared-core f1/g1 are excluded)",
        )
    if s.gpu_count not in (1, 2, 4):
        bad("gpuCount", f"{s.gpu_count} must be 1, 2 or 4")
    if not _IMAGE_FAMILY_RE.match(s.image_family):
        bad("imageFamily", f"{s.image_family!r} is not an image family name")
    if s.image_name and not _IMAGE_FAMILY_RE.match(s.image_name):
        bad("imageName", f"{s.image_name!r} is not an image name")
    models = served_models()
    if s.model not in models:
        bad("model", f"{s.model!r} is not one of {', '.join(models)}")
    else:
        try:
            registry.get_spec(s.model).download_bytes_for_env(model_env(s))
        except UserError as exc:
            bad("sdxlSteps", f"{s.sdxl_steps!r}: {exc}")
        if s.on_cloud_run and model_env(s).get("TEXT2IMG_SDXL_STEPS", "4") != "4":
            bad(
                "sdxlSteps",
                f"{s.sdxl_steps!r}: backend cloudrun bakes the 4-step UNet only into its "
                "image (docs/backends.md); use `pulumi config set sdxlSteps 4` or backend vm",
            )
    if s.boot_disk_snapshot and not _IMAGE_FAMILY_RE.match(s.boot_disk_snapshot):
        bad("bootDiskSnapshot", f"{s.boot_disk_snapshot!r} is not a snapshot name")
    if s.disk_size_gb and not 50 <= s.disk_size_gb <= 2000:  # 0: auto, invalid model
        bad(
            "diskSizeGb",
            f"{s.disk_size_gb} is outside 50-2000 (the DLVM image needs 50; 0 = auto)",
        )
    if not 5 <= s.idle_minutes <= 1440:
        bad("idleMinutes", f"{s.idle_minutes} is outside 5-1440 minutes")
    if not 10 <= s.boot_grace_minutes <= 240:
        bad("bootGraceMinutes", f"{s.boot_grace_minutes} is outside 10-240 minutes")
    if not 1024 <= s.service_port <= 65535:
        bad("servicePort", f"{s.service_port} is outside 1024-65535")
    if not s.model_cache_dir.startswith("/") or any(c in s.model_cache_dir for c in " '\"$`\\"):
        bad("modelCacheDir", f"{s.model_cache_dir!r} must be an absolute path without spaces")
    for key, expr in (("scheduleStart", s.schedule_start), ("scheduleStop", s.schedule_stop)):
        if expr and (why := _cron_error(expr)):
            bad(key, f"{expr!r} is not a 5-field cron expression: {why}")
    try:
        zoneinfo.ZoneInfo(s.schedule_time_zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        bad("scheduleTimeZone", f"{s.schedule_time_zone!r} is not an IANA time zone (Asia/Tokyo)")
    for key, ref in (("serviceImage", s.service_image), ("gatewayImage", s.gateway_image)):
        if ref and not _IMAGE_REF_RE.match(ref):
            bad(
                key,
                f"{ref!r} is not an image reference by digest "
                "(HOST/PATH/NAME@sha256:<64 hex>); tags are mutable, digests are not",
            )
    if not _REGION_RE.match(s.build_region):
        bad("buildRegion", f"{s.build_region!r} is not a region name like us-central1")
    if s.build_machine_type not in BUILD_MACHINE_TYPES:
        bad(
            "buildMachineType",
            f"{s.build_machine_type!r} is not one of {sorted(BUILD_MACHINE_TYPES)}",
        )
    if not 1 <= s.gateway_max_instances <= 10:
        bad("gatewayMaxInstances", f"{s.gateway_max_instances} is outside 1-10")
    if s.backend not in BACKENDS:
        bad("backend", f"{s.backend!r} is not one of {', '.join(BACKENDS)}")
    if s.gpu_region not in CLOUD_RUN_GPU_REGIONS:
        bad(
            "gpuRegion",
            f"{s.gpu_region!r} has no Cloud Run GPUs; use one of "
            f"{', '.join(CLOUD_RUN_GPU_REGIONS)} (asia-southeast1 is the nearest to Tokyo)",
        )
    if not 1 <= s.max_gpus <= MAX_GPUS_LIMIT:
        bad("maxGpus", f"{s.max_gpus} is outside 1-{MAX_GPUS_LIMIT}")
    cidr_errors: list[str] = []
    vm_net = _check_cidr(f"{NAMESPACE}:subnetCidr", s.subnet_cidr, cidr_errors)
    gw_net = _check_cidr(f"{NAMESPACE}:gatewayEgressCidr", s.gateway_egress_cidr, cidr_errors)
    errors.extend(cidr_errors)
    if gw_net is not None and gw_net.prefixlen > 26:
        bad(
            "gatewayEgressCidr",
            f"{s.gateway_egress_cidr!r} is smaller than /26 (Direct VPC egress)",
        )
    if vm_net is not None and gw_net is not None and vm_net.overlaps(gw_net):
        bad("gatewayEgressCidr", f"{s.gateway_egress_cidr!r} overlaps subnetCidr {s.subnet_cidr!r}")
    return errors


def advisories(s: Settings) -> list[str]:
    """Valid but probably unintended settings: reported as warnings, not errors."""
    notes = []
    needed = 0
    if s.model in served_models():
        try:
            needed = auto_disk_size_gb(s.model, model_env(s))
        except UserError:
            needed = 0  # reported as an error already
    if s.disk_size_gb < needed:
        notes.append(
            f"{NAMESPACE}:diskSizeGb: {s.disk_size_gb} GB may be too small for model "
            f"{s.model} ({needed} GB suggested; set diskSizeGb to 0 for the automatic size)"
        )
    zones = KNOWN_GPU_ZONES.get((s.gpu_type, s.region))
    if zones is not None and s.zone.rsplit("-", 1)[-1] not in zones:
        listed = ", ".join(f"{s.region}-{z}" for z in zones)
        notes.append(
            f"{NAMESPACE}:zone: {s.zone} is not known to offer {s.gpu_type} (known: {listed}); "
            f"check `gcloud compute accelerator-types list --filter=zone:{s.zone}`"
        )
    if s.spot and s.has_schedule and s.schedule_start:
        notes.append(
            f"{NAMESPACE}:scheduleStart: a Spot VM may be preempted right after a scheduled "
            "start; the gateway starts it again on the next request"
        )
    if s.on_cloud_run and s.gpu_region in CLOUD_RUN_GPU_INVITE_ONLY:
        notes.append(
            f"{NAMESPACE}:gpuRegion: Cloud Run GPUs in {s.gpu_region} are by invitation only "
            "(ask your Google account team), or use asia-southeast1"
        )
    if s.needs_build and s.build_region not in UNRESTRICTED_BUILD_REGIONS:
        notes.append(
            f"{NAMESPACE}:buildRegion: some projects may run Cloud Build only in "
            f"{', '.join(UNRESTRICTED_BUILD_REGIONS)}; if the image build fails with "
            "'cannot run builds in this region', `pulumi config set buildRegion us-central1`"
        )
    return notes


def _get(get: Callable[[str], str | None], key: str, missing: list[str]) -> str:
    value = get(key)
    if value is None:
        missing.append(key)
        return ""
    return value


def _as_int(key: str, raw: str, errors: list[str]) -> int:
    try:
        return int(raw)
    except ValueError:
        errors.append(f"{NAMESPACE}:{key}: {raw!r} is not an integer")
        return 0


def _as_bool(key: str, raw: str, errors: list[str]) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    errors.append(f"{NAMESPACE}:{key}: {raw!r} is not true or false")
    return False


def load_settings() -> Settings:
    """Read every key once from the stack config, convert, validate; raise ConfigError
    listing all problems; log the advisories as warnings."""
    settings = read_settings(pulumi.Config(NAMESPACE).get)
    for note in advisories(settings):
        pulumi.log.warn(note)
    return settings


def read_settings(get: Callable[[str], str | None]) -> Settings:
    """The settings from `get(key)` (a key's value, None when unset): the stack config
    under Pulumi, Pulumi.yaml's defaults plus `pulumi config` for scripts/vm."""
    missing: list[str] = []
    errors: list[str] = []

    def text(key: str) -> str:
        return _get(get, key, missing).strip()

    def integer(key: str) -> int:
        raw = text(key)
        return _as_int(key, raw, errors) if raw else 0

    def boolean(key: str) -> bool:
        raw = text(key)
        return _as_bool(key, raw, errors) if raw else False

    settings = Settings(
        project=text("project"),
        region=text("region"),
        zone=text("zone"),
        machine_type=text("machineType"),
        gpu_type=text("gpuType"),
        gpu_count=integer("gpuCount"),
        spot=boolean("spot"),
        image_family=text("imageFamily"),
        image_project=text("imageProject"),
        image_name=text("imageName"),
        disk_size_gb=integer("diskSizeGb"),
        model=text("model"),
        idle_minutes=integer("idleMinutes"),
        boot_grace_minutes=integer("bootGraceMinutes"),
        service_port=integer("servicePort"),
        model_cache_dir=text("modelCacheDir"),
        translation=boolean("translation"),
        schedule_start=text("scheduleStart"),
        schedule_stop=text("scheduleStop"),
        schedule_time_zone=text("scheduleTimeZone"),
        service_image=text("serviceImage"),
        gateway_image=text("gatewayImage"),
        build_machine_type=text("buildMachineType"),
        gateway_max_instances=integer("gatewayMaxInstances"),
        subnet_cidr=text("subnetCidr"),
        gateway_egress_cidr=text("gatewayEgressCidr"),
        build_region=text("buildRegion"),
        flow_logs=boolean("flowLogs"),
        boot_disk_snapshot=text("bootDiskSnapshot"),
        preflight=boolean("preflight") if get("preflight") is not None else True,
        backend=text("backend"),
        gpu_region=text("gpuRegion"),
        max_gpus=integer("maxGpus"),
        gpu_zonal_redundancy=boolean("gpuZonalRedundancy"),
        sdxl_steps=text("sdxlSteps"),
    )
    # keys with a default in Pulumi.yaml are always present under the CLI; only `project`
    # (no default) can be missing there.
    optional_empty = {
        "imageName",
        "scheduleStart",
        "scheduleStop",
        "serviceImage",
        "gatewayImage",
        "bootDiskSnapshot",
    }
    missing = [k for k in missing if k not in optional_empty]
    if settings.disk_size_gb == 0 and settings.model in served_models():  # auto (the default)
        try:
            size = auto_disk_size_gb(settings.model, model_env(settings))
        except UserError:
            size = auto_disk_size_gb(settings.model)  # the bad value is reported below
        settings = replace(settings, disk_size_gb=size)
    if missing:
        errors = [
            f"{NAMESPACE}:{key}: not set (`pulumi config set {key} <value>`; "
            "see Pulumi.yaml for its meaning)"
            for key in missing
        ]
    else:
        errors.extend(validate(settings))
    if errors:
        raise ConfigError("invalid stack configuration:\n  " + "\n  ".join(errors))
    return settings

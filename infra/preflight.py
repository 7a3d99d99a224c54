"""Preflight: what would make a deploy fail late, checked in seconds before anything is
created (`scripts/vm preflight`, and the start of `pulumi up`).

Each problem is one line naming the fix. Checked (docs/gcp-facts.md §13):
  * billing enabled (Cloud Billing projects.getBillingInfo);
  * the APIs the program needs (Service Usage; `pulumi up` enables missing ones itself,
    and the preflight of a real `up` enables Compute first so it can read the quotas);
  * the region's GPU quota for the GPU type, and GPUS_ALL_REGIONS; a Spot VM counts
    against the preemptible GPU quota when the project has one, else against the standard
    quota ("consider requesting preemptible quota for Spot VMs" so that they do not
    consume the standard one: Google's Spot VM page); CPUS and SSD_TOTAL_GB (pd-balanced);
  * the zone offers the GPU (acceleratorTypes.get; the fix names the region's zones that do);
  * backend cloudrun instead of the two above: the Cloud Run L4 quota in gpuRegion for the
    chosen redundancy (Cloud Quotas API, service run.googleapis.com, quota ids
    NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion / NvidiaL4GpuAllocPerProjectRegion;
    neither is granted by default: cloud.google.com/run/docs/configuring/services/
    gpu-zonal-redundancy) against maxGpus; the region itself is validated by infra/config.py;
  * organization policy constraints that refuse what the program creates
    (infra/org_policies.py says which).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from google.api_core import exceptions as gexc

from infra.apis import required_apis
from infra.config import Settings
from infra.findings import Finding, console
from infra.google_apis import GoogleApiError, GoogleApis, NoCredentials
from infra.org_policies import check_org_policies

__all__ = ["Finding", "PreflightError", "in_program", "run_checks", "summary"]

COMPUTE_API = "compute.googleapis.com"
ENABLE_WAIT_S = 120.0


def gpu_metric(gpu_type: str) -> str:
    """Compute's quota metric of a GPU type: nvidia-tesla-t4 -> NVIDIA_T4_GPUS."""
    return f"NVIDIA_{gpu_type.removeprefix('nvidia-tesla-').removeprefix('nvidia-').upper()}_GPUS"


def vcpus(machine_type: str) -> int:
    tail = machine_type.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 1


# -- billing and APIs ----------------------------------------------------------------------


def check_billing(api: GoogleApis, project: str) -> list[Finding]:
    try:
        info = api.rest("billing", "GET", f"/v1/projects/{project}/billingInfo")
    except GoogleApiError as exc:
        return [
            Finding(
                f"billing not checked ({exc}); check it at "
                f"{console('billing/linkedaccount', project)}",
                fatal=False,
            )
        ]
    if info.get("billingEnabled"):
        return []
    return [
        Finding(
            f"billing is not enabled for project {project}: link a billing account at "
            f"{console('billing/linkedaccount', project)}"
        )
    ]


def enabled_apis(api: GoogleApis, project: str) -> set[str] | None:
    try:
        data = api.rest(
            "serviceusage",
            "GET",
            f"/v1/projects/{project}/services?filter=state:ENABLED&pageSize=200",
        )
    except GoogleApiError:
        return None
    return {s.get("config", {}).get("name", "") for s in data.get("services", [])}


def enable_api(api: GoogleApis, project: str, service: str) -> Finding | None:
    """Enable `service` and wait for it (Service Usage services.enable + operations.get)."""
    try:
        op = api.rest(
            "serviceusage", "POST", f"/v1/projects/{project}/services/{service}:enable", {}
        )
        deadline = time.monotonic() + ENABLE_WAIT_S
        while not op.get("done") and time.monotonic() < deadline:
            time.sleep(2.0)
            op = api.rest("serviceusage", "GET", f"/v1/{op['name']}")
    except GoogleApiError as exc:
        return Finding(
            f"cannot enable {service} ({exc}); if billing is the cause, link a "
            f"billing account at {console('billing/linkedaccount', project)}"
        )
    if not op.get("done"):
        return Finding(f"{service} is still being enabled; run `pulumi up` again in a minute")
    return None


def check_apis(
    api: GoogleApis, settings: Settings, *, enable_compute: bool, preview: bool = False
) -> tuple[list[Finding], bool]:
    """Findings and whether Compute is on (the quota and zone checks need it). In a
    preview, Compute being off is a note: the update that follows enables it and checks."""
    project = settings.project
    enabled = enabled_apis(api, project)
    if enabled is None:
        return [
            Finding(
                "APIs not checked (Service Usage answered no); `gcloud services list "
                f"--enabled --project {project}` shows them",
                fatal=False,
            )
        ], True
    missing = [a for a in required_apis(settings) if a not in enabled]
    findings: list[Finding] = []
    compute_on = COMPUTE_API not in missing
    if not compute_on and enable_compute:
        problem = enable_api(api, project, COMPUTE_API)
        if problem:
            return [problem], False
        missing.remove(COMPUTE_API)
        compute_on = True
    if missing:
        findings.append(
            Finding(
                f"APIs not enabled yet: {', '.join(missing)}; `pulumi up` enables them, or "
                f"`gcloud services enable {' '.join(missing)} --project {project}`",
                fatal=False,
            )
        )
    if not compute_on and preview:
        findings.append(
            Finding(
                f"GPU quota and zone are checked when `pulumi up` has enabled {COMPUTE_API}",
                fatal=False,
            )
        )
    elif not compute_on:
        findings.append(
            Finding(
                f"GPU quota and zone not checked: {COMPUTE_API} is off; run `gcloud services "
                f"enable {COMPUTE_API} --project {project}` and check again"
            )
        )
    return findings, compute_on


# -- quota and zone ----------------------------------------------------------------------------


def _quotas(items: Any) -> dict[str, tuple[float, float]]:
    return {q.metric: (float(q.limit), float(q.usage)) for q in items}


def _quota_line(
    metric: str, where: str, limit: float, usage: float, need: int, project: str
) -> Finding | None:
    link = console("iam-admin/quotas", project)
    if limit < need:
        return Finding(
            f"quota {metric} in {where} is {limit:g}, {need} needed: request "
            f"{need} at {link} (filter {metric}; granted in minutes to days)"
        )
    if limit - usage < need:
        return Finding(
            f"quota {metric} in {where}: {usage:g} of {limit:g} in use; the VM "
            "cannot start while other VMs hold them (unless one is this stack's own)",
            fatal=False,
        )
    return None


def check_quota(api: GoogleApis, s: Settings) -> tuple[list[Finding], list[str]]:
    """Quota findings and the region's zone names (for the zone check's fix)."""
    region = api.regions().get(project=s.project, region=s.region)
    quotas = _quotas(region.quotas)
    zones = [z.rsplit("/", 1)[-1] for z in region.zones]
    gpu = gpu_metric(s.gpu_type)
    wanted = [(gpu, s.gpu_count), ("CPUS", vcpus(s.machine_type)), ("SSD_TOTAL_GB", s.disk_size_gb)]
    if s.spot:  # Spot uses preemptible quota where the project has some, else standard quota
        wanted = [
            (f"PREEMPTIBLE_{m}", n) if quotas.get(f"PREEMPTIBLE_{m}", (0.0, 0.0))[0] > 0 else (m, n)
            for m, n in wanted
        ]
    findings = []
    for metric, need in wanted:
        limit, usage = quotas.get(metric, (0.0, 0.0))
        if line := _quota_line(metric, s.region, limit, usage, need, s.project):
            findings.append(line)
    project_quotas = _quotas(api.projects().get(project=s.project).quotas)
    limit, usage = project_quotas.get("GPUS_ALL_REGIONS", (0.0, 0.0))
    if line := _quota_line("GPUS_ALL_REGIONS", "all regions", limit, usage, s.gpu_count, s.project):
        findings.append(line)
    return findings, zones


def check_zone(api: GoogleApis, s: Settings, zones: Sequence[str]) -> list[Finding]:
    client = api.accelerator_types()

    def offers(zone: str) -> bool:
        try:
            client.get(project=s.project, zone=zone, accelerator_type=s.gpu_type)
        except gexc.NotFound:
            return False
        return True

    if offers(s.zone):
        return []
    others = [z for z in zones if z != s.zone and offers(z)]
    fix = (
        f"`pulumi config set zone {others[0]}` (zones with it: {', '.join(others)})"
        if others
        else f"choose another region (`gcloud compute accelerator-types list "
        f"--filter=name={s.gpu_type}`)"
    )
    return [Finding(f"zone {s.zone} does not offer {s.gpu_type}: {fix}")]


# -- Cloud Run GPUs (backend cloudrun) -----------------------------------------------------------

CLOUD_RUN_L4_QUOTA = {
    False: "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion",
    True: "NvidiaL4GpuAllocPerProjectRegion",
}


def cloud_run_gpu_quota(info: dict[str, Any], region: str) -> int:
    """The granted value of a Cloud Quotas QuotaInfo in `region` (a dimension-less entry is
    the default for regions without their own)."""
    default = 0
    for item in info.get("dimensionsInfos", []):
        value = int(item.get("details", {}).get("value", 0) or 0)
        where = item.get("dimensions", {}).get("region")
        if where == region:
            return value
        if where is None:
            default = value
    return default


def check_cloud_run_gpu_quota(api: GoogleApis, s: Settings) -> list[Finding]:
    quota_id = CLOUD_RUN_L4_QUOTA[s.gpu_zonal_redundancy]
    path = (
        f"/v1/projects/{s.project}/locations/global/services/run.googleapis.com/"
        f"quotaInfos/{quota_id}"
    )
    link = console("iam-admin/quotas", s.project)
    try:
        granted = cloud_run_gpu_quota(api.rest("cloudquotas", "GET", path), s.gpu_region)
    except GoogleApiError as exc:
        return [
            Finding(
                f"Cloud Run GPU quota not checked ({exc}); check {quota_id} in "
                f"{s.gpu_region} at {link} (the Cloud Quotas API, cloudquotas.googleapis.com, "
                "answers it)",
                fatal=False,
            )
        ]
    if granted >= s.max_gpus:
        return []
    other = "gpuZonalRedundancy false" if s.gpu_zonal_redundancy else "gpuZonalRedundancy true"
    return [
        Finding(
            f"Cloud Run GPU quota {quota_id} in {s.gpu_region} is {granted}, maxGpus needs "
            f"{s.max_gpus}: request {s.max_gpus} at {link} (filter {quota_id}, region "
            f"{s.gpu_region}; Cloud Run GPU quota starts at 0), lower maxGpus, or use the "
            f"other quota ({other})"
        )
    ]


# -- all together ----------------------------------------------------------------------------


def run_checks(
    api: GoogleApis, s: Settings, *, enable_compute: bool = False, preview: bool = False
) -> list[Finding]:
    """Every check; a check that cannot run says so in one line instead of failing."""
    findings = check_billing(api, s.project)
    api_findings, compute_on = check_apis(api, s, enable_compute=enable_compute, preview=preview)
    findings += api_findings
    if s.on_cloud_run:
        findings += check_cloud_run_gpu_quota(api, s)
    elif compute_on:
        try:
            quota, zones = check_quota(api, s)
            findings += quota + check_zone(api, s, zones)
        except gexc.GoogleAPICallError as exc:
            findings.append(Finding(f"GPU quota and zone not checked: {exc.message}", fatal=False))
    findings += check_org_policies(api, s)
    return findings


def summary(s: Settings, findings: Sequence[Finding]) -> str:
    if not findings and s.on_cloud_run:
        return (
            f"preflight: project {s.project} is ready for up to {s.max_gpus} Cloud Run L4 "
            f"GPU(s) in {s.gpu_region} (billing, APIs, quota and organization policies checked)"
        )
    if not findings:
        return (
            f"preflight: project {s.project} is ready for {s.gpu_count} x {s.gpu_type} "
            f"in {s.zone} (billing, APIs, quota, zone and organization policies checked)"
        )
    fatal = sum(f.fatal for f in findings)
    return f"preflight: {fatal} problem(s) to fix, {len(findings) - fatal} note(s)"


class PreflightError(Exception):
    """A problem that would fail the deploy later; the message lists one fix per line."""


def in_program(settings: Settings, *, dry_run: bool) -> list[Finding]:
    """The checks at the start of `pulumi preview`/`up`, before any resource is registered.
    A real `up` enables Compute first when it is off (the program enables it anyway), so a
    new project's zero GPU quota is found before the image build. Raises PreflightError
    with every fatal finding; returns the others (the program logs them as warnings)."""
    try:
        api = GoogleApis.from_environment()
    except NoCredentials as exc:
        return [Finding(f"preflight skipped: {exc}", fatal=False)]
    findings = run_checks(api, settings, enable_compute=not dry_run, preview=dry_run)
    fatal = [f.text for f in findings if f.fatal]
    if fatal:
        raise PreflightError(
            "preflight found what would fail this deploy (`pulumi config set preflight "
            "false` skips the checks):\n  " + "\n  ".join(fatal)
        )
    return [f for f in findings if not f.fatal]

"""Preflight: organization policy constraints that would refuse what the program creates.

Resource locations, trusted image projects (the Deep Learning VM image), required
Shielded VM (our VM boots with Secure Boot off: the NVIDIA module is unsigned), Cloud Run
allowed ingress (`all`) and allowed VPC egress (`private-ranges-only`); guest attribute
access only as a warning (a GPU driver failure is then not reported to the gateway). Read
with Resource Manager's projects.getEffectiveOrgPolicy (docs/gcp-facts.md §13).
Not checked because they do not bite this program: vmExternalIpAccess (no external IP),
requireOsLogin (OS Login is on), iam.allowedPolicyMemberDomains (no allUsers binding).
"""

from __future__ import annotations

from typing import Any

from infra.config import Settings
from infra.findings import Finding, console
from infra.google_apis import GoogleApiError, GoogleApis


def _policy(api: GoogleApis, project: str, constraint: str) -> dict[str, Any]:
    return api.rest(
        "resourcemanager",
        "POST",
        f"/v1/projects/{project}:getEffectiveOrgPolicy",
        {"constraint": f"constraints/{constraint}"},
    )


def _list_refuses(policy: dict[str, Any], accepted: set[str]) -> bool | None:
    """True: the list policy refuses every form in `accepted`; False: it allows one;
    None: it names only values this check cannot evaluate (value groups it does not know)."""
    rules = policy.get("listPolicy") or {}
    if rules.get("allValues") == "DENY":
        return True
    strip = {v.removeprefix("is:") for v in rules.get("deniedValues", [])}
    if strip & accepted:
        return True
    allowed = {v.removeprefix("is:") for v in rules.get("allowedValues", [])}
    if not allowed:
        return False
    if allowed & accepted:
        return False
    return None if any(not _known_group(v) for v in allowed if v.startswith("in:")) else True


# value groups whose members follow from a region's name: in:asia-locations holds every
# asia-* region, in:asia-northeast1-locations that region's zones (the eu group is not a
# name prefix: europe-west2 is in Europe, not the EU)
_GEO_GROUPS = ("asia", "us", "europe", "northamerica", "southamerica", "australia", "me", "africa")


def _known_group(value: str) -> bool:
    name = value.removeprefix("in:").removesuffix("-locations")
    return name in _GEO_GROUPS or (name.count("-") == 1 and name[-1].isdigit())


def _locations(region: str) -> set[str]:
    geo = region.split("-", 1)[0]
    return {region, f"in:{region}-locations", f"in:{geo}-locations"}


def check_org_policies(api: GoogleApis, s: Settings) -> list[Finding]:
    admin = console("iam-admin/orgpolicies", s.project)
    exempt = f"ask an organization admin to allow it for this project ({admin})"
    regions = [s.region] + (
        [s.build_region] if s.needs_build and s.build_region != s.region else []
    )
    lists = [("gcp.resourceLocations", _locations(r), f"region {r}") for r in regions]
    lists += [
        (
            "compute.trustedImageProjects",
            {f"projects/{s.image_project}"},
            f"boot images from project {s.image_project}",
        ),
        ("run.allowedIngress", {"all"}, "Cloud Run ingress `all` (the gateway is public)"),
        (
            "run.allowedVPCEgress",
            {"private-ranges-only"},
            "Cloud Run VPC egress `private-ranges-only` (the gateway reaches the VM)",
        ),
    ]
    findings: list[Finding] = []
    try:
        for constraint, accepted, what in lists:
            refused = _list_refuses(_policy(api, s.project, constraint), accepted)
            if refused:
                findings.append(
                    Finding(f"organization policy {constraint} refuses {what}: {exempt}")
                )
            elif refused is None:
                findings.append(
                    Finding(
                        f"organization policy {constraint} may refuse {what} "
                        f"(value groups this check cannot read): see {admin}",
                        fatal=False,
                    )
                )
        if (
            _policy(api, s.project, "compute.requireShieldedVm")
            .get("booleanPolicy", {})
            .get("enforced")
        ):
            findings.append(
                Finding(
                    "organization policy compute.requireShieldedVm requires Secure Boot, which the "
                    f"GPU VM cannot use (the NVIDIA driver module is unsigned): {exempt}"
                )
            )
        guest = _policy(api, s.project, "compute.disableGuestAttributesAccess")
        if guest.get("booleanPolicy", {}).get("enforced"):
            findings.append(
                Finding(
                    "organization policy compute.disableGuestAttributesAccess is on: a GPU driver "
                    "failure at boot is not reported to the gateway (see `scripts/vm logs`)",
                    fatal=False,
                )
            )
    except GoogleApiError as exc:
        findings.append(
            Finding(
                f"organization policies not checked ({exc}); `gcloud "
                "resource-manager org-policies list --project "
                f"{s.project}` shows them",
                fatal=False,
            )
        )
    return findings

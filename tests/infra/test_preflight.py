"""The preflight (infra/preflight.py) against a fake of Google's REST APIs on loopback,
through the real google-cloud-compute clients and Google's REST paths: each problem is
one line naming the fix; a clean project gets one line saying so."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from infra_harness import TEST_PROJECT, config_value, project_defaults, run_program

from infra.apis import required_apis
from infra.config import ConfigError, Settings, read_settings
from infra.google_apis import ENDPOINT_ENV, GoogleApis
from infra.preflight import Finding, PreflightError, gpu_metric, in_program, run_checks, summary
from tests.fakes.gcp_project import FakeGoogleProject


def settings(**overrides: Any) -> Settings:
    values = {**project_defaults(), "project": TEST_PROJECT, **overrides}
    return read_settings(lambda key: config_value(values[key]) if key in values else None)


@pytest.fixture
def fake() -> Iterator[FakeGoogleProject]:
    with FakeGoogleProject() as server:
        server.enabled_apis = set(required_apis(settings()))  # what `pulumi up` left on
        yield server


def check(fake: FakeGoogleProject, *, enable: bool = False, **overrides: Any) -> list[Finding]:
    api = GoogleApis(fake.endpoint, AnonymousCredentials())
    return run_checks(api, settings(**overrides), enable_compute=enable)


def fatal(findings: list[Finding]) -> list[str]:
    return [f.text for f in findings if f.fatal]


def test_a_ready_project_passes_with_one_line(fake: FakeGoogleProject) -> None:
    findings = check(fake)
    assert findings == []
    line = summary(settings(), findings)
    assert line == (
        "preflight: project t2i-test-project is ready for 1 x nvidia-tesla-t4 in "
        "asia-northeast1-a (billing, APIs, quota, zone and organization policies checked)"
    )
    assert fake.calls["region"] == 1
    assert fake.calls["accelerator"] == 1
    assert fake.calls["org_policy"] == 7  # 5 list constraints (2 regions) + 2 boolean


def test_zero_gpu_quota_names_the_metric_and_the_quota_page(fake: FakeGoogleProject) -> None:
    fake.quotas["NVIDIA_T4_GPUS"] = (0.0, 0.0)
    [line] = fatal(check(fake))
    assert line.startswith("quota NVIDIA_T4_GPUS in asia-northeast1 is 0, 1 needed: request 1 at ")
    assert "https://console.cloud.google.com/iam-admin/quotas?project=t2i-test-project" in line


def test_gpus_all_regions_is_checked_too(fake: FakeGoogleProject) -> None:
    fake.project_quotas["GPUS_ALL_REGIONS"] = (0.0, 0.0)
    [line] = fatal(check(fake))
    assert line.startswith("quota GPUS_ALL_REGIONS in all regions is 0, 1 needed")


def test_spot_uses_the_standard_quota_without_preemptible_quota(fake: FakeGoogleProject) -> None:
    fake.quotas["NVIDIA_T4_GPUS"] = (1.0, 0.0)
    fake.quotas["PREEMPTIBLE_NVIDIA_T4_GPUS"] = (0.0, 0.0)
    assert check(fake, spot=True) == []
    fake.quotas["NVIDIA_T4_GPUS"] = (0.0, 0.0)
    [line] = fatal(check(fake, spot=True))
    assert line.startswith("quota NVIDIA_T4_GPUS in")


def test_spot_uses_preemptible_quota_where_the_project_has_some(fake: FakeGoogleProject) -> None:
    fake.quotas["NVIDIA_T4_GPUS"] = (0.0, 0.0)
    fake.quotas["PREEMPTIBLE_NVIDIA_T4_GPUS"] = (2.0, 0.0)
    assert check(fake, spot=True) == []  # standard quota 0 does not matter then
    [line] = fatal(check(fake, spot=False))
    assert "NVIDIA_T4_GPUS in asia-northeast1 is 0" in line


def test_quota_in_use_elsewhere_is_a_note_not_an_error(fake: FakeGoogleProject) -> None:
    fake.quotas["NVIDIA_T4_GPUS"] = (1.0, 1.0)
    [note] = check(fake)
    assert not note.fatal
    assert "1 of 1 in use" in note.text


def test_cpu_and_disk_quota(fake: FakeGoogleProject) -> None:
    fake.quotas["CPUS"] = (8.0, 0.0)
    fake.quotas["SSD_TOTAL_GB"] = (120.0, 0.0)  # pd-balanced counts against SSD quota
    lines = fatal(check(fake, machineType="n1-standard-16", model="sdxl-lightning"))
    assert [line.split(":")[0] for line in lines] == [
        "quota CPUS in asia-northeast1 is 8, 16 needed",
        "quota SSD_TOTAL_GB in asia-northeast1 is 120, 140 needed",
    ]
    assert check(fake, machineType="n1-standard-8", model="glide") == []


def test_a_zone_without_the_gpu_names_the_zones_that_have_it(fake: FakeGoogleProject) -> None:
    [line] = fatal(check(fake, zone="asia-northeast1-b"))
    assert line == (
        "zone asia-northeast1-b does not offer nvidia-tesla-t4: `pulumi config set zone "
        "asia-northeast1-a` (zones with it: asia-northeast1-a, asia-northeast1-c)"
    )


def test_billing_off(fake: FakeGoogleProject) -> None:
    fake.billing_enabled = False
    [line] = fatal(check(fake))
    assert line == (
        "billing is not enabled for project t2i-test-project: link a billing account at "
        "https://console.cloud.google.com/billing/linkedaccount?project=t2i-test-project"
    )


def test_compute_off_is_enabled_by_a_real_up_and_then_checked(fake: FakeGoogleProject) -> None:
    fake.enabled_apis = {"serviceusage.googleapis.com"}
    fake.quotas["NVIDIA_T4_GPUS"] = (0.0, 0.0)
    preview = check(fake)
    assert [f.text.split(":")[0] for f in preview if f.fatal] == ["GPU quota and zone not checked"]
    assert fake.calls["region"] == 0
    notes = [f.text for f in preview if not f.fatal]
    assert notes[0].startswith("APIs not enabled yet: cloudresourcemanager.googleapis.com")
    up = check(fake, enable=True)
    assert fake.calls["enable"] == 1
    assert "compute.googleapis.com" in fake.enabled_apis
    assert any(t.startswith("quota NVIDIA_T4_GPUS in asia-northeast1 is 0") for t in fatal(up))


def test_enabling_compute_without_billing_names_the_fix(fake: FakeGoogleProject) -> None:
    fake.enabled_apis = {"serviceusage.googleapis.com"}
    fake.enable_error = "Billing must be enabled for activation of service"
    lines = fatal(check(fake, enable=True))
    assert any(
        line.startswith("cannot enable compute.googleapis.com (Billing must be enabled")
        for line in lines
    )


LIST_POLICIES = [
    (
        "gcp.resourceLocations",
        {"allowedValues": ["in:us-locations"]},
        "refuses region asia-northeast1",
    ),
    (
        "gcp.resourceLocations",
        {"deniedValues": ["in:asia-locations"]},
        "refuses region asia-northeast1",
    ),
    (
        "compute.trustedImageProjects",
        {"allowedValues": ["projects/my-images"]},
        "refuses boot images from project deeplearning-platform-release",
    ),
    ("run.allowedIngress", {"allowedValues": ["internal"]}, "refuses Cloud Run ingress `all`"),
    ("run.allowedVPCEgress", {"allowedValues": ["all-traffic"]}, "refuses Cloud Run VPC egress"),
    ("run.allowedIngress", {"allValues": "DENY"}, "refuses Cloud Run ingress `all`"),
]


@pytest.mark.parametrize(("constraint", "rules", "text"), LIST_POLICIES)
def test_org_list_policies_that_refuse_what_we_create(
    fake: FakeGoogleProject, constraint: str, rules: dict[str, Any], text: str
) -> None:
    fake.org_policies[constraint] = {"listPolicy": rules}
    [line] = fatal(check(fake))
    assert line.startswith(f"organization policy {constraint} {text}")
    assert line.endswith(
        "ask an organization admin to allow it for this project "
        "(https://console.cloud.google.com/iam-admin/orgpolicies?project=t2i-test-project)"
    )


@pytest.mark.parametrize(
    ("constraint", "rules"),
    [
        ("gcp.resourceLocations", {"allowedValues": ["in:asia-locations", "in:us-locations"]}),
        (
            "gcp.resourceLocations",
            {"allowedValues": ["in:asia-northeast1-locations", "us-central1"]},
        ),
        (
            "compute.trustedImageProjects",
            {"allowedValues": ["projects/deeplearning-platform-release"]},
        ),
        ("run.allowedIngress", {"allowedValues": ["all"]}),
        ("run.allowedIngress", {"deniedValues": ["internal"]}),
    ],
)
def test_org_list_policies_that_allow_it(
    fake: FakeGoogleProject, constraint: str, rules: dict[str, Any]
) -> None:
    fake.org_policies[constraint] = {"listPolicy": rules}
    assert check(fake) == []


def test_build_region_is_a_location_too(fake: FakeGoogleProject) -> None:
    fake.org_policies["gcp.resourceLocations"] = {
        "listPolicy": {"allowedValues": ["in:asia-locations"]}
    }
    [line] = fatal(check(fake))
    assert "refuses region us-central1" in line  # the image build's default region
    assert check(fake, buildRegion="asia-east1") == []


def test_unknown_value_groups_are_a_note(fake: FakeGoogleProject) -> None:
    fake.org_policies["gcp.resourceLocations"] = {
        "listPolicy": {"allowedValues": ["in:eu-locations"]}
    }
    notes = check(fake)
    assert [n.fatal for n in notes] == [False, False]  # the VM's region and the build's
    assert "may refuse region asia-northeast1 (value groups" in notes[0].text
    assert "may refuse region us-central1" in notes[1].text


def test_required_shielded_vm_stops_the_deploy(fake: FakeGoogleProject) -> None:
    fake.org_policies["compute.requireShieldedVm"] = {"booleanPolicy": {"enforced": True}}
    [line] = fatal(check(fake))
    assert line.startswith("organization policy compute.requireShieldedVm requires Secure Boot")


def test_guest_attribute_access_off_is_a_note(fake: FakeGoogleProject) -> None:
    fake.org_policies["compute.disableGuestAttributesAccess"] = {
        "booleanPolicy": {"enforced": True}
    }
    [note] = check(fake)
    assert not note.fatal
    assert "GPU driver failure at boot is not reported" in note.text


def test_checks_that_cannot_run_say_so_in_one_line(fake: FakeGoogleProject) -> None:
    fake.forbidden = {"org_policy", "billing"}
    findings = check(fake)
    assert [f.fatal for f in findings] == [False, False]
    assert findings[0].text.startswith("billing not checked (Permission denied")
    assert findings[1].text.startswith("organization policies not checked (Permission denied")
    assert all("\n" not in f.text for f in findings)


def test_gpu_metric_names() -> None:
    assert gpu_metric("nvidia-tesla-t4") == "NVIDIA_T4_GPUS"
    assert gpu_metric("nvidia-tesla-v100") == "NVIDIA_V100_GPUS"


def test_pulumi_up_stops_at_the_preflight_before_creating_anything(
    fake: FakeGoogleProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENDPOINT_ENV, fake.endpoint)
    fake.quotas["NVIDIA_T4_GPUS"] = (0.0, 0.0)
    with pytest.raises(ConfigError) as info:
        run_program("dev", {"preflight": True})
    message = str(info.value)
    assert message.splitlines()[0].startswith("preflight found what would fail this deploy")
    assert "quota NVIDIA_T4_GPUS in asia-northeast1 is 0, 1 needed" in message
    fake.quotas["NVIDIA_T4_GPUS"] = (1.0, 0.0)
    fake.enabled_apis.discard("iam.googleapis.com")
    plan = run_program("dev", {"preflight": True})
    assert any(w.startswith("APIs not enabled yet: iam.googleapis.com") for w in plan.warnings)
    assert fake.calls["enable"] == 0  # Compute was on; the rest is the program's job


# -- backend cloudrun -------------------------------------------------------------------------

NO_ZR = "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion"
ZR = "NvidiaL4GpuAllocPerProjectRegion"


def test_cloudrun_checks_its_l4_quota_in_the_gpu_region_not_the_vms(
    fake: FakeGoogleProject,
) -> None:
    fake.run_quotas = {NO_ZR: {None: 0, "asia-southeast1": 3}, ZR: {None: 0}}
    fake.quotas["NVIDIA_T4_GPUS"] = (0.0, 0.0)  # the VM's quota does not matter here
    findings = check(fake, backend="cloudrun")
    assert fatal(findings) == []
    assert fake.calls["quota_info"] == 1
    assert any("cloudquotas.googleapis.com" in f.text for f in findings)  # enabled by `up`
    assert fake.calls["region"] == 0  # no Compute quota or zone lookups
    fake.enabled_apis.add("cloudquotas.googleapis.com")
    clean = check(fake, backend="cloudrun")
    assert clean == []
    assert "up to 3 Cloud Run L4 GPU(s) in asia-southeast1" in summary(
        settings(backend="cloudrun"), clean
    )


@pytest.mark.parametrize(
    ("overrides", "quota", "granted"),
    [
        ({}, NO_ZR, 0),  # asia-southeast1 falls back to the default: 0
        ({"gpuRegion": "europe-west4", "maxGpus": 5}, NO_ZR, 2),
        ({"gpuZonalRedundancy": True}, ZR, 0),
    ],
)
def test_cloudrun_quota_short_names_the_quota_id_region_and_fix(
    fake: FakeGoogleProject, overrides: dict[str, Any], quota: str, granted: int
) -> None:
    fake.run_quotas = {NO_ZR: {None: 0, "europe-west4": 2, "asia-southeast1": 0}, ZR: {None: 0}}
    s = settings(backend="cloudrun", **overrides)
    (line,) = fatal(check(fake, backend="cloudrun", **overrides))
    assert f"Cloud Run GPU quota {quota} in {s.gpu_region} is {granted}" in line
    assert f"maxGpus needs {s.max_gpus}" in line
    assert "iam-admin/quotas" in line


def test_cloudrun_quota_unreadable_is_a_note_not_a_stop(fake: FakeGoogleProject) -> None:
    fake.forbidden.add("quota_info")
    findings = check(fake, backend="cloudrun")
    assert fatal(findings) == []
    assert any("Cloud Run GPU quota not checked" in f.text for f in findings)


def test_only_a_real_up_enables_compute(
    fake: FakeGoogleProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A preview changes nothing in the project and does not fail for an API the program
    enables itself (a new project's first `pulumi up` previews first); the update enables
    Compute so that a zero GPU quota stops it before the image build."""
    monkeypatch.setenv(ENDPOINT_ENV, fake.endpoint)
    fake.enabled_apis.discard("compute.googleapis.com")
    fake.quotas["NVIDIA_T4_GPUS"] = (0.0, 0.0)
    notes = in_program(settings(), dry_run=True)
    assert [n.text for n in notes] == [
        "APIs not enabled yet: compute.googleapis.com; `pulumi up` enables them, or "
        "`gcloud services enable compute.googleapis.com --project t2i-test-project`",
        "GPU quota and zone are checked when `pulumi up` has enabled compute.googleapis.com",
    ]
    assert fake.calls["enable"] == 0
    with pytest.raises(PreflightError, match="quota NVIDIA_T4_GPUS in asia-northeast1 is 0"):
        in_program(settings(), dry_run=False)
    assert fake.calls["enable"] == 1

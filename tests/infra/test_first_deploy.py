"""What a first `pulumi up` on a fresh project needs (issue 11): the build region, waits for
IAM propagation, flow logs."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from infra_harness import PROJECT_FILE, Plan, Registration, StackState, run_program
from test_images import SCRIPT, run_script, sandbox  # noqa: F401  (fixture)

from infra.config import UNRESTRICTED_BUILD_REGIONS, ConfigError
from infra.replacements import REPLACING_KEYS

SLEEP = "time:index/sleep:Sleep"
SUBNET = "gcp:compute/subnetwork:Subnetwork"
PlanFor = Callable[..., Plan]
SCHEDULE = {"scheduleStart": "0 9 * * 1-5", "scheduleStop": "0 23 * * *"}


def named(plan: Plan, name: str) -> Registration:
    return next(r for r in plan.resources if r.name == name)


def seconds(duration: str) -> int:
    assert duration.endswith("s"), duration
    return int(duration[:-1])


@pytest.mark.slow
def test_images_build_in_the_build_region(plan_for: PlanFor) -> None:
    for plan, region in (
        (plan_for(), "us-central1"),
        (plan_for(buildRegion="europe-west1"), "europe-west1"),
    ):
        builds = plan.of_type("command:local:Command")
        assert len(builds) == 2
        for build in builds:
            env = build.inputs["environment"]
            assert env["T2I_REGION"] == region  # `gcloud builds submit --region`
            # the image still goes to the repository next to the VM
            assert env["T2I_IMAGE"].startswith("asia-northeast1-docker.pkg.dev/")


def test_build_region_default_is_one_every_project_may_use(plan: Plan) -> None:
    region = plan.of_type("command:local:Command")[0].inputs["environment"]["T2I_REGION"]
    assert region in UNRESTRICTED_BUILD_REGIONS
    assert not any("buildRegion" in w for w in plan.warnings)


def test_a_restricted_build_region_warns_with_the_fix(plan_for: PlanFor) -> None:
    plan = plan_for(buildRegion="asia-northeast1")
    note = next(w for w in plan.warnings if w.startswith("text2img:buildRegion:"))
    assert "pulumi config set buildRegion us-central1" in note
    assert plan.of_type("command:local:Command")[0].inputs["environment"]["T2I_REGION"] == (
        "asia-northeast1"
    )


def test_build_region_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"text2img:buildRegion: 'Tokyo' is not a region"):
        run_program("dev", {"buildRegion": "Tokyo"})


def test_failed_build_names_the_region_and_the_fix(
    sandbox: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    result = run_script({**sandbox, "BUILD_FAILS": "1", "T2I_REGION": "asia-east2"}, tmp_path)
    assert result.returncode == 1
    assert "Cloud Build run in asia-east2 failed" in result.stderr
    assert "pulumi config set buildRegion us-central1" in result.stderr
    assert result.stdout == ""


def test_build_waits_for_its_grants_to_propagate(plan: Plan) -> None:
    delay = named(plan, "build-grants-propagation")
    grants = [
        r.urn
        for r in plan.resources
        if r.name in ("build-repo-writer", "build-staging-reader", "build-logging-logWriter")
    ]
    assert len(grants) == 3
    assert set(delay.dependencies) == set(grants)
    assert seconds(delay.inputs["createDuration"]) >= 60
    for build in plan.of_type("command:local:Command"):
        assert delay.urn in build.dependencies


def test_gateway_deploys_after_its_secret_grant_propagated(plan: Plan) -> None:
    delay = named(plan, "gateway-grants-propagation")
    secret_grant = named(plan, "gateway-token-accessor")
    assert secret_grant.urn in delay.dependencies
    assert seconds(delay.inputs["createDuration"]) >= 60
    # a changed grant (e.g. a new service account) runs the delay again
    assert "roles/secretmanager.secretAccessor serviceAccount:t2i-dev-gw@" in " ".join(
        delay.inputs["triggers"].values()
    )
    service = plan.one("gcp:cloudrunv2/service:Service")
    assert delay.urn in service.dependencies


@pytest.mark.parametrize("translation", [True, False])
def test_vm_is_created_after_its_grants_propagated(plan_for: PlanFor, translation: bool) -> None:
    """The first boot reads the token secret, pulls from the repository and (translation
    on) calls Cloud Translation: the VM waits for a delay that starts when those grants
    exist (a fresh grant typically takes 2 minutes to apply)."""
    plan = plan_for(translation=translation)
    delay = named(plan, "vm-grants-propagation")
    wanted = {
        "vm-token-accessor",
        "vm-repo-reader",
        "vm-logging-logWriter",
        "vm-monitoring-metricWriter",
    }
    if translation:
        wanted.add("vm-cloudtranslate-user")
    grants = {r.urn: r.name for r in plan.resources if r.name in wanted}
    assert set(grants.values()) == wanted
    assert set(delay.dependencies) == set(grants)
    assert seconds(delay.inputs["createDuration"]) >= 120
    triggers = " ".join(delay.inputs["triggers"].values())
    assert "roles/secretmanager.secretAccessor serviceAccount:t2i-dev-vm@" in triggers
    assert "roles/artifactregistry.reader serviceAccount:t2i-dev-vm@" in triggers
    assert ("roles/cloudtranslate.user" in triggers) is translation
    vm = plan.one("gcp:compute/instance:Instance")
    assert delay.urn in vm.dependencies


def test_schedule_delay_is_long_enough_and_only_with_a_schedule(plan_for: PlanFor) -> None:
    plan = plan_for(scheduleStop="0 23 * * *")
    delay = named(plan, "server-schedule-agent-propagation")
    assert seconds(delay.inputs["createDuration"]) >= 120  # "typically 2 minutes"
    assert not any(r.name.startswith("server-") for r in plan_for().of_type(SLEEP))


def test_both_subnets_have_cost_conscious_flow_logs(plan: Plan) -> None:
    subnets = plan.of_type(SUBNET)
    assert {s.name for s in subnets} == {"vm-subnet", "gateway-subnet"}
    for subnet in subnets:
        assert subnet.inputs["logConfig"] == {
            "aggregationInterval": "INTERVAL_10_MIN",
            "flowSampling": 0.5,
            "metadata": "EXCLUDE_ALL_METADATA",
        }, subnet.name


def test_flow_logs_can_be_turned_off(plan_for: PlanFor) -> None:
    subnets = plan_for(flowLogs=False).of_type(SUBNET)
    assert len(subnets) == 2
    assert all("logConfig" not in s.inputs for s in subnets)


def test_build_script_is_still_bash_clean() -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def role_ids(plan: Plan) -> dict[str, str]:
    roles = plan.of_type("gcp:projects/iAMCustomRole:IAMCustomRole")
    return {r.name: r.inputs["roleId"] for r in roles}


def test_role_ids_are_kept_across_ups_and_new_after_destroy() -> None:
    """A deleted custom role's id is blocked for 37 days: ids carry a per-state random part."""
    dev = StackState()
    first, second = run_program("dev", state=dev), run_program("dev", state=dev)
    assert len(role_ids(first)) == 2
    assert role_ids(first) == role_ids(second)  # the same state: the same roles, no replace
    prod = role_ids(run_program("prod"))
    assert not set(prod.values()) & set(role_ids(first).values())
    recreated = role_ids(run_program("dev", state=StackState(seed="after-destroy")))
    for logical, role_id in role_ids(first).items():
        assert recreated[logical] != role_id  # `destroy` + `up` never reuses a blocked id
        assert re.fullmatch(r"t2i_dev_gateway_(start|ops)_[0-9a-f]{6}", role_id)
    # the grants name the roles the stack created
    binding = first.one("gcp:compute/instanceIAMMember:InstanceIAMMember").inputs["role"]
    assert binding.endswith("/roles/" + role_ids(first)["gateway-instance-role"])


DISK = "gcp:compute/disk:Disk"
INSTANCE = "gcp:compute/instance:Instance"


def test_boot_disk_is_its_own_resource_and_outlives_a_replaced_vm(plan_for: PlanFor) -> None:
    plan = plan_for(diskSizeGb=150, **SCHEDULE)
    disk, vm = plan.one(DISK), plan.one(INSTANCE)
    assert disk.inputs["size"] == 150  # Disk.size grows in place; initialize_params is ForceNew
    assert disk.inputs["type"] == "pd-balanced"
    assert disk.inputs["zone"] == vm.inputs["zone"]
    # the family, resolved by Compute when the disk is created (no lookup in the program)
    assert disk.inputs["image"] == (
        "projects/deeplearning-platform-release/global/images/family/"
        "common-cu129-ubuntu-2204-nvidia-580"
    )
    assert "image" in disk.ignore_changes  # a newer image in the family replaces nothing
    assert vm.inputs["bootDisk"]["source"].endswith(f"/disks/{disk.inputs['name']}")
    assert vm.inputs["bootDisk"]["autoDelete"] is False
    assert "initializeParams" not in vm.inputs["bootDisk"]
    # fixed names: the old VM goes first, so the new one can boot the same disk
    assert vm.delete_before_replace
    assert disk.delete_before_replace
    assert disk.urn in vm.dependencies
    attachment = plan.one("gcp:compute/resourcePolicyAttachment:ResourcePolicyAttachment")
    # a new VM gets its schedule again: the attachment's ForceNew `instance` comes from the
    # delete-before-replace VM, so Pulumi replaces it with the VM
    assert vm.urn in attachment.dependencies
    assert attachment.inputs["instance"] == vm.inputs["name"]
    assert plan.outputs["image_name"] == "common-cu129-ubuntu-2204-nvidia-580-v20260416"


def test_a_new_stack_gets_no_replacement_warnings() -> None:
    state = StackState()
    plan = run_program("dev", {"spot": True}, state=state)
    assert state.references == ["dev"]  # the program reads its own stack (DIY backend)
    assert not [w for w in plan.warnings if "since the last `pulumi up`" in w]
    assert plan.outputs["deployed_settings"]["spot"] is True


def test_changing_spot_on_an_existing_stack_warns_before_replacing() -> None:
    state = StackState()
    run_program("dev", state=state)  # the first `pulumi up`
    same = run_program("dev", state=state)
    assert same.warnings == []
    changed = run_program("dev", {"spot": True}, state=state)
    notes = [w for w in changed.warnings if w.startswith("text2img:spot:")]
    assert len(notes) == 1
    assert "changed from false to true" in notes[0]
    assert "replaces the VM" in notes[0]
    assert "boot disk" in notes[0]
    assert "The old VM is deleted first" in notes[0]  # a failed create leaves no VM
    assert "`pulumi config set spot false`" in notes[0]
    assert len(changed.warnings) == 1  # nothing else changed (gpuCount 1 == 1.0)


def test_zone_change_and_disk_shrink_warn_but_disk_growth_does_not() -> None:
    state = StackState()
    run_program("dev", state=state)
    grown = run_program("dev", {"diskSizeGb": 200}, state=state)
    assert grown.warnings == []
    moved = run_program("dev", {"zone": "asia-northeast1-c", "diskSizeGb": 150}, state=state)
    assert any(
        w.startswith("text2img:zone:")
        and "replaces the VM and its boot disk" in w
        and "scripts/vm move --zone Z" in w
        for w in moved.warnings
    )
    assert any(
        w.startswith("text2img:diskSizeGb: 150 is smaller than the deployed 200 GB")
        for w in moved.warnings
    )


def test_every_replacing_key_is_marked_in_pulumi_yaml() -> None:
    spec = yaml.safe_load(PROJECT_FILE.read_text())["config"]
    for key in REPLACING_KEYS:
        assert "CHANGING IT LATER replaces" in spec[key]["description"], key
    assert "in place" in spec["machineType"]["description"]
    assert "cannot shrink" in spec["diskSizeGb"]["description"]
    assert set(REPLACING_KEYS) <= set(deployed_settings_keys())


def deployed_settings_keys() -> list[str]:
    return list(run_program("dev").outputs["deployed_settings"])


def test_readme_checks_the_service_by_paths_cloud_run_passes() -> None:
    """Cloud Run reserves some paths ending in z: the public URL is probed elsewhere."""
    root = PROJECT_FILE.parent
    deploy_doc = (root / "docs" / "deploy.md").read_text()
    deploy = deploy_doc.split("<!-- section:deploy -->", 1)[1].split("<!-- /section:deploy -->")[0]
    readme = "\n".join(p.read_text() for p in [root / "README.md", *(root / "docs").glob("*.md")])
    assert '$(pulumi stack output url)/v1/ready"' in deploy
    assert '$(pulumi stack output url)/v1/status"' in deploy
    assert not re.search(r"(run\.app|output url\)?)/(healthz|readyz)", readme)
    warning = next(line for line in deploy.splitlines() if "`/healthz`" in line)
    assert warning.startswith("Do not probe")


@pytest.mark.parametrize(
    ("organization", "expected"),
    [("organization", "dev"), ("", "dev"), ("acme", "acme/text2img/dev")],
)
def test_the_stack_reads_itself_by_a_name_its_backend_accepts(
    monkeypatch: pytest.MonkeyPatch, organization: str, expected: str
) -> None:
    """DIY backends in the legacy layout refuse `organization/project/stack`."""
    import pulumi

    from infra import replacements

    monkeypatch.setattr(pulumi, "get_organization", lambda: organization)
    monkeypatch.setattr(pulumi, "get_project", lambda: "text2img")
    monkeypatch.setattr(pulumi, "get_stack", lambda: "dev")
    assert replacements.own_stack_name() == expected

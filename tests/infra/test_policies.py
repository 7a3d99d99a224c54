"""One assertion per policy of the stack, checked on what the program registers."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi_gcp as gcp
import pytest
from infra_harness import PROJECT_NUMBER, ROOT, TEST_PROJECT, TOKEN, Plan, run_program
from pulumi.runtime import rpc

INSTANCE = "gcp:compute/instance:Instance"
FIREWALL = "gcp:compute/firewall:Firewall"
PROJECT_MEMBER = "gcp:projects/iAMMember:IAMMember"
CLOUD_RUN = "gcp:cloudrunv2/service:Service"
SLEEP = "time:index/sleep:Sleep"
SCHEDULE = {"scheduleStart": "0 9 * * 1-5", "scheduleStop": "0 23 * * *"}
PlanFor = Callable[..., Plan]


def vm(plan: Plan) -> dict[str, Any]:
    return plan.one(INSTANCE).inputs


def account_email(plan: Plan, logical: str) -> str:
    account = next(
        r for r in plan.of_type("gcp:serviceaccount/account:Account") if r.name == logical
    )
    return f"{account.inputs['accountId']}@{TEST_PROJECT}.iam.gserviceaccount.com"


def test_no_public_ingress(plan: Plan) -> None:
    rules = {r.name: r.inputs for r in plan.of_type(FIREWALL)}
    for rule in rules.values():
        assert rule["direction"] == "INGRESS"
        assert not {"0.0.0.0/0", "::/0"} & set(rule.get("sourceRanges", []))
    assert rules["allow-iap-ssh"]["sourceRanges"] == ["35.235.240.0/20"]
    assert rules["allow-iap-ssh"]["allows"] == [{"protocol": "tcp", "ports": ["22"]}]
    assert rules["allow-gateway"]["sourceRanges"] == ["10.20.1.0/26"]
    assert rules["allow-gateway"]["allows"] == [{"protocol": "tcp", "ports": ["8080"]}]
    assert set(rules) == {"allow-iap-ssh", "allow-gateway"}
    tags = vm(plan)["tags"]
    assert all(rule["targetTags"] == tags for rule in rules.values())
    # no external IP on the VM: outbound through Cloud NAT only
    assert all(not nic.get("accessConfigs") for nic in vm(plan)["networkInterfaces"])


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


@pytest.mark.parametrize("config", [{}, SCHEDULE, {"translation": False, "spot": True}])
def test_no_public_iam_member_anywhere(plan_for: PlanFor, config: dict[str, Any]) -> None:
    """Organizations with Domain Restricted Sharing (iam.allowedPolicyMemberDomains)
    refuse any policy naming allUsers / allAuthenticatedUsers: the stack has none."""
    plan = plan_for(**config)
    public = {"allUsers", "allAuthenticatedUsers"}
    found = [
        (r.type, r.name, text)
        for r in plan.resources
        for text in _strings(r.inputs)
        if any(member in text for member in public)
    ]
    assert found == []
    members = [r for r in plan.resources if "member" in r.inputs or "members" in r.inputs]
    assert len(members) >= 8  # the scan saw the stack's grants


def test_gateway_egress_range_is_the_gateway_subnet(plan: Plan) -> None:
    subnet = next(
        r for r in plan.of_type("gcp:compute/subnetwork:Subnetwork") if r.name == "gateway-subnet"
    )
    rule = next(r for r in plan.of_type(FIREWALL) if r.name == "allow-gateway")
    assert rule.inputs["sourceRanges"] == [subnet.inputs["ipCidrRange"]]
    vpc_access = plan.one(CLOUD_RUN).inputs["template"]["vpcAccess"]
    assert vpc_access["egress"] == "PRIVATE_RANGES_ONLY"
    assert vpc_access["networkInterfaces"][0]["subnetwork"] == "gateway-subnet-id"
    assert all(
        s.inputs["privateIpGoogleAccess"] for s in plan.of_type("gcp:compute/subnetwork:Subnetwork")
    )


def test_no_default_service_account(plan: Plan) -> None:
    account = vm(plan)["serviceAccount"]
    assert account["email"] == account_email(plan, "sa-vm")
    assert "-compute@developer.gserviceaccount.com" not in plan_text(plan)
    assert account["scopes"] == ["https://www.googleapis.com/auth/cloud-platform"]
    template = plan.one(CLOUD_RUN).inputs["template"]
    assert template["serviceAccount"] == account_email(plan, "sa-gw")


def plan_text(plan: Plan) -> str:
    return "\n".join(r.text() for r in plan.resources)


def iam_bindings(plan: Plan) -> list[tuple[str, dict[str, Any]]]:
    return [
        (r.type, r.inputs)
        for r in plan.resources
        if re.search(r"I[Aa][Mm](Member|Binding|Policy)$", r.type)
    ]


def test_no_owner_or_editor_and_least_privilege(plan: Plan) -> None:
    roles = [inputs["role"] for _, inputs in iam_bindings(plan)]
    assert not {"roles/owner", "roles/editor"} & set(roles)
    assert not any(
        t.endswith("IAMBinding") or t.endswith("IAMPolicy") for t, _ in iam_bindings(plan)
    )
    project_roles = {(r.inputs["member"], r.inputs["role"]) for r in plan.of_type(PROJECT_MEMBER)}
    vm_member = f"serviceAccount:{account_email(plan, 'sa-vm')}"
    assert {role for member, role in project_roles if member == vm_member} == {
        "roles/logging.logWriter",
        "roles/monitoring.metricWriter",
        "roles/cloudtranslate.user",
    }
    # resource-level grants: the one repository and the one secret
    repo_grants = {
        (r.inputs["member"], r.inputs["role"])
        for r in plan.of_type("gcp:artifactregistry/repositoryIamMember:RepositoryIamMember")
    }
    assert (vm_member, "roles/artifactregistry.reader") in repo_grants
    secret_grants = plan.of_type("gcp:secretmanager/secretIamMember:SecretIamMember")
    assert {g.inputs["member"] for g in secret_grants} == {
        vm_member,
        f"serviceAccount:{account_email(plan, 'sa-gw')}",
    }
    assert {g.inputs["role"] for g in secret_grants} == {"roles/secretmanager.secretAccessor"}


def test_gateway_may_only_get_and_start_this_vm(plan: Plan) -> None:
    roles = {r.name: r.inputs for r in plan.of_type("gcp:projects/iAMCustomRole:IAMCustomRole")}
    assert set(roles["gateway-instance-role"]["permissions"]) == {
        "compute.instances.get",
        "compute.instances.start",
        "compute.instances.resume",
        "compute.instances.getGuestAttributes",  # the VM's boot-failure report, read-only
    }
    assert roles["gateway-operations-role"]["permissions"] == ["compute.zoneOperations.get"]
    binding = plan.one("gcp:compute/instanceIAMMember:InstanceIAMMember").inputs
    assert binding["instanceName"] == vm(plan)["name"]
    assert (
        binding["role"]
        == f"projects/{TEST_PROJECT}/roles/{roles['gateway-instance-role']['roleId']}"
    )
    assert binding["member"] == f"serviceAccount:{account_email(plan, 'sa-gw')}"
    gw_member = binding["member"]
    project_roles = [
        r.inputs["role"] for r in plan.of_type(PROJECT_MEMBER) if r.inputs["member"] == gw_member
    ]
    assert project_roles == [
        f"projects/{TEST_PROJECT}/roles/{roles['gateway-operations-role']['roleId']}"
    ]


def test_gpu_and_terminate(plan: Plan) -> None:
    inputs = vm(plan)
    assert inputs["machineType"] == "n1-standard-4"
    assert inputs["guestAccelerators"] == [{"type": "nvidia-tesla-t4", "count": 1}]
    assert inputs["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert "desiredStatus" not in inputs
    assert inputs["allowStoppingForUpdate"] is True
    assert inputs["shieldedInstanceConfig"] == {
        "enableSecureBoot": False,
        "enableVtpm": True,
        "enableIntegrityMonitoring": True,
    }
    assert plan.one("gcp:compute/disk:Disk").inputs["image"] == (
        "projects/deeplearning-platform-release/global/images/family/"
        "common-cu129-ubuntu-2204-nvidia-580"
    )


@pytest.mark.parametrize("spot", [True, False])
def test_spot_flags_consistent(plan_for: PlanFor, spot: bool) -> None:
    scheduling = vm(plan_for(spot=spot))["scheduling"]
    if spot:
        assert scheduling == {
            "onHostMaintenance": "TERMINATE",
            "provisioningModel": "SPOT",
            "preemptible": True,
            "automaticRestart": False,
            "instanceTerminationAction": "STOP",
        }
    else:
        assert scheduling["provisioningModel"] == "STANDARD"
        assert scheduling["preemptible"] is False
        assert scheduling["automaticRestart"] is True
        assert "instanceTerminationAction" not in scheduling


def test_schedule_iam_is_ordered_before_the_vm(plan_for: PlanFor) -> None:
    plan = plan_for(**SCHEDULE)
    agent = f"serviceAccount:service-{PROJECT_NUMBER}@compute-system.iam.gserviceaccount.com"
    grant = next(r for r in plan.of_type(PROJECT_MEMBER) if r.inputs["member"] == agent)
    assert grant.inputs["role"] == "roles/compute.instanceAdmin.v1"
    # shared by every stack of the project: destroying one stack must not revoke it
    assert grant.retain_on_delete
    assert [r.name for r in plan.resources if r.retain_on_delete] == [grant.name]
    instance = plan.one(INSTANCE)
    assert grant.urn in instance.dependencies
    attachment = plan.one("gcp:compute/resourcePolicyAttachment:ResourcePolicyAttachment")
    # the attachment waits for the grant to propagate, not only to exist (412 otherwise)
    delay = next(r for r in plan.of_type(SLEEP) if r.name.startswith("server-"))
    assert delay.dependencies == [grant.urn]
    assert {delay.urn, instance.urn} <= set(attachment.dependencies)
    assert grant.urn not in attachment.dependencies  # only through the delay
    policy = plan.one("gcp:compute/resourcePolicy:ResourcePolicy").inputs
    assert policy["instanceSchedulePolicy"] == {
        "timeZone": "Asia/Tokyo",
        "vmStartSchedule": {"schedule": "0 9 * * 1-5"},
        "vmStopSchedule": {"schedule": "0 23 * * *"},
    }
    assert policy["region"] == "asia-northeast1"
    # the VM, its schedule and the grant form one component
    server = plan.one("text2img:infra:GpuServer")
    assert {instance.parent, attachment.parent, grant.parent, delay.parent} == {server.urn}


def test_no_schedule_means_no_schedule_resources(plan: Plan) -> None:
    assert not plan.of_type("gcp:compute/resourcePolicy:ResourcePolicy")
    assert not any("compute-system" in r.inputs["member"] for r in plan.of_type(PROJECT_MEMBER))


def test_startup_script_is_systemd_startup_sh_verbatim(plan: Plan, program_inputs: Path) -> None:
    metadata = vm(plan)["metadata"]
    script = metadata["startup-script"]
    assert plan.startup_script is not None
    assert script == plan.startup_script  # the file's text when the program ran
    assert script.startswith("#!")
    assert len(script.encode()) < 256 * 1024
    assert "metadataStartupScript" not in vm(plan)


def developers_md_metadata_keys() -> list[str]:
    text = (ROOT / "DEVELOPERS.md").read_text()
    section = text.split("## Instance metadata", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE)


def test_metadata_keys_and_values_match_developers_md(plan: Plan) -> None:
    metadata = vm(plan)["metadata"]
    assert sorted(metadata) == sorted(developers_md_metadata_keys())
    assert re.fullmatch(
        rf"asia-northeast1-docker\.pkg\.dev/{TEST_PROJECT}/t2i-dev/text2img@sha256:[0-9a-f]{{64}}",
        metadata["text2img-image"],
    )
    assert metadata["text2img-token-secret"] == f"projects/{TEST_PROJECT}/secrets/t2i-dev-api-token"
    assert metadata["text2img-idle-minutes"] == "20"
    assert metadata["text2img-boot-grace-minutes"] == "30"
    assert metadata["text2img-model-cache"] == "/var/lib/text2img/models"
    assert metadata["text2img-translation"] == "on"
    assert metadata["text2img-translate-project"] == TEST_PROJECT
    assert metadata["text2img-port"] == "8080"
    assert metadata["enable-oslogin"] == "TRUE"
    assert metadata["block-project-ssh-keys"] == "TRUE"


def test_translation_off(plan_for: PlanFor) -> None:
    plan = plan_for(translation=False)
    metadata = vm(plan)["metadata"]
    assert (metadata["text2img-translation"], metadata["text2img-translate-project"]) == ("off", "")
    assert "roles/cloudtranslate.user" not in {
        r.inputs["role"] for r in plan.of_type(PROJECT_MEMBER)
    }
    apis = {r.inputs["service"] for r in plan.of_type("gcp:projects/service:Service")}
    assert "translate.googleapis.com" not in apis


def test_token_only_in_its_secret_version(plan: Plan) -> None:
    holders = [r for r in plan.resources if TOKEN in r.text()]
    assert [r.type for r in holders] == ["gcp:secretmanager/secretVersion:SecretVersion"]
    secret_data = holders[0].inputs["secretData"]  # sent to the engine marked secret
    assert rpc.is_rpc_secret(secret_data)
    assert secret_data["value"] == TOKEN
    # Cloud Run gets a reference to the secret, never the value
    envs = plan.one(CLOUD_RUN).inputs["template"]["containers"][0]["envs"]
    token_env = next(e for e in envs if e["name"] == "TEXT2IMG_API_TOKEN")
    assert "value" not in token_env
    assert token_env["valueSource"]["secretKeyRef"] == {
        "secret": "t2i-dev-api-token",
        "version": "1",  # pinned to the SecretVersion the stack wrote
    }
    password = plan.one("random:index/randomPassword:RandomPassword").inputs
    assert password["special"] is False
    assert password["length"] >= 32


def test_outputs_present_and_token_secret(plan: Plan) -> None:
    expected = {
        "url",
        "token",
        "instance_name",
        "zone",
        "project",
        "image",
        "gateway_image",
        "ssh_command",
        "hourly_cost_estimate",
        "image_name",
    }
    assert expected <= set(plan.outputs)
    assert plan.secret_outputs == {"token"}
    assert plan.outputs["token"] == TOKEN
    assert plan.outputs["url"].startswith("https://")
    assert plan.outputs["instance_name"] == "t2i-dev-gpu"
    assert plan.outputs["image_name"] == "common-cu129-ubuntu-2204-nvidia-580-v20260416"
    assert "--tunnel-through-iap" in plan.outputs["ssh_command"]
    assert "t2i-dev-gpu" in plan.outputs["ssh_command"]
    assert "@sha256:" in plan.outputs["image"]
    assert "@sha256:" in plan.outputs["gateway_image"]


def labelable(resource_type: str) -> bool:
    """Whether the pulumi_gcp resource class behind a type token takes `labels`."""
    _, module_path, class_name = resource_type.split(":")
    module = getattr(gcp, module_path.split("/")[0])
    cls = getattr(module, class_name)
    return "labels" in inspect.signature(cls._internal_init).parameters


def test_labels_on_every_labelable_resource(plan_for: PlanFor) -> None:
    plan = plan_for(**SCHEDULE)
    gcp_types = {r.type for r in plan.resources if r.type.startswith("gcp:")}
    checked = [t for t in gcp_types if labelable(t)]
    assert {INSTANCE, CLOUD_RUN, "gcp:secretmanager/secret:Secret"} <= set(checked)
    for resource in plan.resources:
        if resource.type in checked:
            assert resource.inputs.get("labels", {}).get("app") == "text2img", resource.name
            assert resource.inputs["labels"]["stack"] == "dev", resource.name
    assert plan.one("gcp:compute/disk:Disk").inputs["labels"]["app"] == "text2img"


NAME_KEYS = ("name", "accountId", "secretId", "repositoryId", "roleId")


def physical_names(plan: Plan) -> set[str]:
    names = set()
    for r in plan.resources:
        if r.type.startswith("gcp:projects/service") or not r.custom:
            continue
        for key in NAME_KEYS:
            value = r.inputs.get(key)
            if isinstance(value, str) and not value.endswith("-id") and "/" not in value:
                names.add(value)
    return names


def test_names_derived_from_the_stack_never_collide(plan_for: PlanFor) -> None:
    dev, prod = plan_for("dev", **SCHEDULE), plan_for("prod", **SCHEDULE)
    dev_names, prod_names = physical_names(dev), physical_names(prod)
    assert len(dev_names) >= 15
    assert not dev_names & prod_names
    assert all("dev" in n for n in dev_names)
    long = plan_for("Feature_Branch.With-A-Very-Long-Name", **SCHEDULE)
    for r in long.resources:
        if r.type == "gcp:serviceaccount/account:Account":
            assert 6 <= len(r.inputs["accountId"]) <= 30
        elif "name" in r.inputs and isinstance(r.inputs["name"], str) and r.custom:
            assert len(r.inputs["name"]) <= 63
            assert re.fullmatch(
                r"[a-z][-a-z0-9]*[a-z0-9]|[a-z0-9_-]+|projects/.+", r.inputs["name"]
            )


def test_every_resource_waits_for_the_apis(plan: Plan) -> None:
    api_urns = {r.urn for r in plan.of_type("gcp:projects/service:Service")}
    for typ in (
        INSTANCE,
        CLOUD_RUN,
        "gcp:compute/network:Network",
        "gcp:artifactregistry/repository:Repository",
    ):
        assert api_urns <= set(plan.one(typ).dependencies), typ


def test_registry_cleanup_really_deletes(plan: Plan) -> None:
    repo = plan.one("gcp:artifactregistry/repository:Repository").inputs
    assert repo["dockerConfig"] == {"immutableTags": True}
    assert repo["cleanupPolicyDryRun"] is False
    policies = {p["action"]: p for p in repo["cleanupPolicies"]}
    assert policies["KEEP"]["mostRecentVersions"]["keepCount"] >= 2
    assert policies["DELETE"]["condition"]["tagState"] == "ANY"
    assert re.fullmatch(r"[0-9]+s", policies["DELETE"]["condition"]["olderThan"])


def test_gateway_service(plan: Plan) -> None:
    service = plan.one(CLOUD_RUN).inputs
    assert service["ingress"] == "INGRESS_TRAFFIC_ALL"
    assert service["deletionProtection"] is False
    template = service["template"]
    assert template["scaling"]["minInstanceCount"] == 0
    assert 1 <= template["scaling"]["maxInstanceCount"] <= 10
    container = template["containers"][0]
    assert container["image"] == plan.outputs["gateway_image"]
    env = {e["name"]: e.get("value") for e in container["envs"]}
    assert env == {
        "TEXT2IMG_GATEWAY_BACKEND": "vm",
        "TEXT2IMG_GATEWAY_PROJECT": TEST_PROJECT,
        "TEXT2IMG_GATEWAY_ZONE": "asia-northeast1-a",
        "TEXT2IMG_GATEWAY_INSTANCE": "t2i-dev-gpu",
        "TEXT2IMG_GATEWAY_UPSTREAM_PORT": "8080",
        "TEXT2IMG_API_TOKEN": None,
    }
    # public by turning the invoker IAM check off, not by an `allUsers` binding (which
    # Domain Restricted Sharing refuses); the gateway checks the token itself
    assert service["invokerIamDisabled"] is True
    assert not plan.of_type("gcp:cloudrunv2/serviceIamMember:ServiceIamMember")
    # the revision reads the secret when deployed: version and grants come first
    deps = set(plan.one(CLOUD_RUN).dependencies)
    version = plan.one("gcp:secretmanager/secretVersion:SecretVersion")
    grant = next(
        g
        for g in plan.of_type("gcp:secretmanager/secretIamMember:SecretIamMember")
        if g.name == "gateway-token-accessor"
    )
    assert {version.urn, grant.urn} <= deps


def test_images_are_built_by_a_dedicated_account(plan: Plan) -> None:
    builds = plan.of_type("command:local:Command")
    assert {b.inputs["environment"]["T2I_DOCKERFILE"] for b in builds} == {
        "service/Dockerfile",
        "service/gateway.Dockerfile",
    }
    for build in builds:
        env = build.inputs["environment"]
        assert env["T2I_SERVICE_ACCOUNT"] == (
            f"projects/{TEST_PROJECT}/serviceAccounts/{account_email(plan, 'sa-build')}"
        )
        assert re.fullmatch(r"src-[0-9a-f]{20}", env["T2I_TAG"])
        assert build.inputs["triggers"] == [env["T2I_TAG"]]
    writer = next(
        r
        for r in plan.of_type("gcp:artifactregistry/repositoryIamMember:RepositoryIamMember")
        if r.name == "build-repo-writer"
    )
    assert writer.inputs["role"] == "roles/artifactregistry.writer"


def test_prebuilt_images_skip_the_build(plan_for: PlanFor) -> None:
    service = "asia-northeast1-docker.pkg.dev/p/r/text2img@sha256:" + "a" * 64
    gateway = "asia-northeast1-docker.pkg.dev/p/r/text2img-gateway@sha256:" + "b" * 64
    plan = plan_for(serviceImage=service, gatewayImage=gateway)
    assert not plan.of_type("command:local:Command")
    assert not plan.of_type("gcp:storage/bucket:Bucket")
    assert "sa-build" not in {r.name for r in plan.resources}
    assert vm(plan)["metadata"]["text2img-image"] == service
    assert plan.one(CLOUD_RUN).inputs["template"]["containers"][0]["image"] == gateway
    apis = {r.inputs["service"] for r in plan.of_type("gcp:projects/service:Service")}
    assert "cloudbuild.googleapis.com" not in apis


def test_hourly_cost_estimate(plan_for: PlanFor) -> None:
    standard = plan_for().outputs["hourly_cost_estimate"]
    spot = plan_for(spot=True).outputs["hourly_cost_estimate"]
    assert standard == pytest.approx(0.24376 + 0.37 + 0.0014 + 0.005 + 100 * 0.13 / 730, abs=1e-4)
    assert 0 < spot < standard / 2
    assert plan_for(gpuCount=2).outputs["hourly_cost_estimate"] == pytest.approx(
        standard + 0.37, abs=1e-4
    )
    assert (
        plan_for(region="europe-west4", zone="europe-west4-a").outputs["hourly_cost_estimate"]
        is None
    )


def test_image_family_or_pinned_name(plan_for: PlanFor, tmp_path: Path) -> None:
    pinned = plan_for(imageName="common-cu129-ubuntu-2204-nvidia-580-v20260101")
    assert pinned.outputs["image_name"] == "common-cu129-ubuntu-2204-nvidia-580-v20260101"


def test_systemd_files_travel_verbatim_and_fit_the_metadata_limits(plan: Plan) -> None:
    from infra.metadata import METADATA_TOTAL_LIMIT, VM_FILES

    metadata = vm(plan)["metadata"]
    for name, key in VM_FILES.items():
        assert metadata[key] == (ROOT / "systemd" / name).read_text(), name
    # every file of systemd/ is delivered: startup.sh as the script, the rest as attributes
    assert sorted(p.name for p in (ROOT / "systemd").iterdir()) == sorted([*VM_FILES, "startup.sh"])
    total = sum(len(str(v).encode()) for v in metadata.values())
    assert total < METADATA_TOTAL_LIMIT // 2  # Compute Engine allows 512 KB in all


def test_metadata_beyond_the_total_limit_is_refused() -> None:
    from infra.metadata import StartupScriptError, check_total_size

    values = {f"text2img-file-{i}": "x" * 200_000 for i in range(3)}  # each under 256 KB
    with pytest.raises(StartupScriptError, match="524288 in total"):
        check_total_size(values)
    with pytest.raises(StartupScriptError, match="one value may hold 262144"):
        check_total_size({"startup-script": "x" * 300_000})


@pytest.mark.parametrize(("model", "disk"), [("glide", 100), ("sdxl-lightning", 110)])
def test_model_reaches_the_vm_and_sizes_the_boot_disk(
    plan_for: PlanFor, model: str, disk: int
) -> None:
    plan = plan_for(model=model)
    instance = vm(plan)
    assert instance["metadata"]["text2img-model"] == model
    assert plan.one("gcp:compute/disk:Disk").inputs["size"] == disk  # the boot disk
    assert plan.warnings == []


def test_an_explicit_disk_size_is_kept_and_warned_about_when_small(plan_for: PlanFor) -> None:
    plan = plan_for(model="sdxl-lightning", diskSizeGb=80)
    assert plan.one("gcp:compute/disk:Disk").inputs["size"] == 80
    assert any(
        "diskSizeGb: 80 GB may be too small for model sdxl-lightning" in w for w in plan.warnings
    )
    assert plan_for(diskSizeGb=300).one("gcp:compute/disk:Disk").inputs["size"] == 300


def test_model_choices_are_registry_engines_without_the_random_twins() -> None:
    from infra.config import ConfigError
    from infra.models import served_models
    from text2img.engines.registry import MODEL_NAMES

    assert set(served_models()) == {m for m in MODEL_NAMES if not m.startswith("tiny")}
    with pytest.raises(
        ConfigError, match="text2img:model: 'tiny' is not one of glide, sdxl-lightning"
    ):
        run_program("dev", {"model": "tiny"})

"""Policies of `backend: cloudrun` (issue 23): a private Cloud Run GPU service behind the
same gateway, and nothing of the VM backend."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from infra_harness import TEST_PROJECT, TOKEN, Plan, project_defaults, run_program

from infra import cloudrun
from infra.config import CLOUD_RUN_GPU_REGIONS, ConfigError
from text2img.engines import registry

CLOUD_RUN = "gcp:cloudrunv2/service:Service"
RUN_MEMBER = "gcp:cloudrunv2/serviceIamMember:ServiceIamMember"
PlanFor = Callable[..., Plan]
VM_TYPES = (
    "gcp:compute/instance:Instance",
    "gcp:compute/disk:Disk",
    "gcp:compute/resourcePolicy:ResourcePolicy",
    "gcp:compute/firewall:Firewall",
    "gcp:compute/network:Network",
    "gcp:compute/subnetwork:Subnetwork",
    "gcp:compute/routerNat:RouterNat",
    "gcp:compute/instanceIAMMember:InstanceIAMMember",
    "gcp:projects/iAMCustomRole:IAMCustomRole",
)


def service(plan: Plan, logical: str) -> dict[str, Any]:
    return next(r for r in plan.of_type(CLOUD_RUN) if r.name == logical).inputs


def container(plan: Plan, logical: str) -> dict[str, Any]:
    (only,) = service(plan, logical)["template"]["containers"]
    return only


def env(plan: Plan, logical: str) -> dict[str, Any]:
    return {
        e["name"]: e.get("value", e.get("valueSource")) for e in container(plan, logical)["envs"]
    }


def email(plan: Plan, logical: str) -> str:
    account = next(
        r for r in plan.of_type("gcp:serviceaccount/account:Account") if r.name == logical
    )
    return f"{account.inputs['accountId']}@{TEST_PROJECT}.iam.gserviceaccount.com"


@pytest.fixture
def gpu_plan(plan_for: PlanFor) -> Plan:
    return plan_for(backend="cloudrun")


def test_defaults_keep_the_vm_backend() -> None:
    defaults = project_defaults()
    assert defaults["backend"] == "vm"
    assert defaults["gpuRegion"] == "asia-southeast1"
    assert (defaults["maxGpus"], defaults["gpuZonalRedundancy"]) == (3, False)


def test_vm_backend_creates_no_gpu_service(plan: Plan) -> None:
    assert [r.name for r in plan.of_type(CLOUD_RUN)] == ["gateway"]
    assert plan.of_type(RUN_MEMBER) == []
    assert env(plan, "gateway")["TEXT2IMG_GATEWAY_BACKEND"] == "vm"
    assert plan.outputs["backend"] == "vm"


def test_cloudrun_creates_no_vm_disk_network_schedule_or_roles(gpu_plan: Plan) -> None:
    for typ in VM_TYPES:
        assert gpu_plan.of_type(typ) == [], typ
    assert "instance_name" not in gpu_plan.outputs
    assert gpu_plan.outputs["backend"] == "cloudrun"
    assert "vpcAccess" not in service(gpu_plan, "gateway")["template"]


def test_one_l4_per_instance_with_its_minimum_cpu_and_memory(gpu_plan: Plan) -> None:
    template = service(gpu_plan, "gpu-service")["template"]
    assert template["nodeSelector"] == {"accelerator": "nvidia-l4"}
    resources = container(gpu_plan, "gpu-service")["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert int(resources["limits"]["cpu"]) >= 4
    memory = re.fullmatch(r"([0-9]+)Gi", resources["limits"]["memory"])
    assert memory
    assert int(memory.group(1)) >= 16
    assert resources["cpuIdle"] is False  # GPU needs instance-based billing
    assert resources["startupCpuBoost"] is True


@pytest.mark.parametrize(
    ("config", "region", "most"),
    [({}, "asia-southeast1", 3), ({"gpuRegion": "europe-west4", "maxGpus": 7}, "europe-west4", 7)],
)
def test_scales_from_zero_to_max_gpus_in_the_gpu_region(
    plan_for: PlanFor, config: dict[str, Any], region: str, most: int
) -> None:
    plan = plan_for(backend="cloudrun", **config)
    gpu = service(plan, "gpu-service")
    assert gpu["location"] == region
    assert gpu["template"]["scaling"] == {"minInstanceCount": 0, "maxInstanceCount": most}
    assert service(plan, "gateway")["location"] == "asia-northeast1"  # the gateway stays


@pytest.mark.parametrize(("model", "batch"), [("glide", 8), ("sdxl-lightning", 4)])
def test_concurrency_is_what_one_gpu_batches(plan_for: PlanFor, model: str, batch: int) -> None:
    plan = plan_for(backend="cloudrun", model=model)
    assert registry.get_spec(model).gpu_max_batch == batch
    assert service(plan, "gpu-service")["template"]["maxInstanceRequestConcurrency"] == batch
    assert env(plan, "gpu-service")["TEXT2IMG_MODEL"] == model
    assert env(plan, "gpu-service")["TEXT2IMG_JOB_API"] == "false"  # no instance affinity


@pytest.mark.parametrize(("redundant", "disabled"), [(False, True), (True, False)])
def test_zonal_redundancy_only_when_asked(
    plan_for: PlanFor, redundant: bool, disabled: bool
) -> None:
    plan = plan_for(backend="cloudrun", gpuZonalRedundancy=redundant)
    assert service(plan, "gpu-service")["template"]["gpuZonalRedundancyDisabled"] is disabled


def test_startup_probe_waits_for_the_model_within_cloud_runs_limits(gpu_plan: Plan) -> None:
    probe = container(gpu_plan, "gpu-service")["startupProbe"]
    assert "tcpSocket" not in probe  # a TCP probe passes before the weights are in
    assert probe["httpGet"] == {"path": cloudrun.STARTUP_PROBE_PATH, "port": cloudrun.PORT}
    assert probe["failureThreshold"] * probe["periodSeconds"] <= 240
    assert probe["timeoutSeconds"] < probe["periodSeconds"]
    assert container(gpu_plan, "gpu-service")["ports"] == {"containerPort": cloudrun.PORT}


def test_request_timeout_fits_a_batch_and_cloud_runs_maximum(gpu_plan: Plan) -> None:
    seconds = int(service(gpu_plan, "gpu-service")["template"]["timeout"].rstrip("s"))
    assert 600 <= seconds <= 3600


def test_only_the_gateway_may_invoke_the_gpu_service(gpu_plan: Plan) -> None:
    gpu = service(gpu_plan, "gpu-service")
    assert gpu["invokerIamDisabled"] is False
    (grant,) = gpu_plan.of_type(RUN_MEMBER)
    assert grant.inputs["role"] == "roles/run.invoker"
    assert grant.inputs["member"] == f"serviceAccount:{email(gpu_plan, 'sa-gw')}"
    assert grant.inputs["location"] == "asia-southeast1"
    # the public gateway is public by its own flag, never by a member
    assert service(gpu_plan, "gateway")["invokerIamDisabled"] is True
    for r in gpu_plan.resources:
        assert "allUsers" not in r.text()
        assert "allAuthenticatedUsers" not in r.text()


def test_gateway_is_told_the_backend_and_the_gpu_url(gpu_plan: Plan) -> None:
    gateway = env(gpu_plan, "gateway")
    assert gateway["TEXT2IMG_GATEWAY_BACKEND"] == "cloudrun"
    assert gateway["TEXT2IMG_GATEWAY_UPSTREAM_URL"].startswith("https://")
    assert gateway["TEXT2IMG_GATEWAY_UPSTREAM_URL"] == gpu_plan.outputs["gpu_url"]
    assert "TEXT2IMG_GATEWAY_INSTANCE" not in gateway
    assert float(gateway["TEXT2IMG_GATEWAY_TYPICAL_WAKE_S"]) < 120  # not the VM's minutes


def test_gpu_service_account_has_only_what_it_needs(plan_for: PlanFor) -> None:
    for translation, extra in ((True, {"roles/cloudtranslate.user"}), (False, set())):
        plan = plan_for(backend="cloudrun", translation=translation)
        principal = f"serviceAccount:{email(plan, 'sa-gpu')}"
        held = [r for r in plan.resources if r.inputs.get("member") == principal]
        project_roles = {r.inputs["role"] for r in held if r.type.startswith("gcp:projects/")}
        assert project_roles == {
            "roles/logging.logWriter",
            "roles/monitoring.metricWriter",
            *extra,
        }
        secret = [r for r in held if r.type.startswith("gcp:secretmanager/")]
        assert [(r.inputs["role"], r.inputs["secretId"]) for r in secret] == [
            ("roles/secretmanager.secretAccessor", "t2i-dev-api-token")
        ]
        assert len(held) == len(project_roles) + 1  # nothing else anywhere
        assert service(plan, "gpu-service")["template"]["serviceAccount"] == email(plan, "sa-gpu")


def test_the_token_reaches_the_gpu_service_by_reference_only(gpu_plan: Plan) -> None:
    ref = env(gpu_plan, "gpu-service")["TEXT2IMG_API_TOKEN"]["secretKeyRef"]
    assert ref == {"secret": "t2i-dev-api-token", "version": "1"}
    assert (
        TOKEN not in next(r for r in gpu_plan.of_type(CLOUD_RUN) if r.name == "gpu-service").text()
    )


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("backend", "gke", "is not one of vm, cloudrun"),
        ("gpuRegion", "asia-northeast1", "has no Cloud Run GPUs"),
        ("maxGpus", 0, "outside 1-20"),
        ("gpuZonalRedundancy", "sometimes", "true or false"),
    ],
)
def test_invalid_cloudrun_settings_name_the_key(key: str, value: Any, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        run_program("dev", {"backend": "cloudrun", key: value})
    assert f"text2img:{key}: " in str(info.value)
    assert why in str(info.value)
    if key == "gpuRegion":
        assert "asia-southeast1" in str(info.value)  # says what to use instead


def test_invite_only_region_warns(plan_for: PlanFor) -> None:
    assert "asia-south1" in CLOUD_RUN_GPU_REGIONS
    plan = plan_for(backend="cloudrun", gpuRegion="asia-south1")
    assert any("gpuRegion" in w and "invitation" in w for w in plan.warnings)
    assert not any("invitation" in w for w in plan_for(backend="cloudrun").warnings)


def _builds(plan: Plan) -> dict[str, dict[str, Any]]:
    return {r.name: r.inputs for r in plan.of_type("command:local:Command")}


@pytest.mark.parametrize("model", ["glide", "sdxl-lightning"])
def test_gpu_image_is_the_service_image_with_the_weights_baked_in(
    plan_for: PlanFor, model: str
) -> None:
    plan = plan_for(backend="cloudrun", model=model)
    build = _builds(plan)["build-gpu-image"]["environment"]
    assert build["T2I_DOCKERFILE"] == "service/cloudrun.Dockerfile"
    assert build["T2I_MODEL"] == model
    assert build["T2I_BASE"] == plan.outputs["image"]  # the service image, by digest
    image = container(plan, "gpu-service")["image"]
    assert re.fullmatch(r".+/text2img-gpu@sha256:[0-9a-f]{64}", image)
    assert env(plan, "gpu-service")["TEXT2IMG_MODEL_CACHE"] == "/opt/text2img/models"


def test_gpu_image_tag_follows_the_model(plan_for: PlanFor) -> None:
    tags = {
        model: _builds(plan_for(backend="cloudrun", model=model))["build-gpu-image"]["environment"][
            "T2I_TAG"
        ]
        for model in ("glide", "sdxl-lightning")
    }
    assert tags["glide"] != tags["sdxl-lightning"]  # never reused for another model


def test_vm_backend_bakes_nothing(plan: Plan) -> None:
    assert "build-gpu-image" not in _builds(plan)


def test_the_gpu_dockerfile_downloads_and_checks_outside_the_volume() -> None:
    text = (Path(__file__).resolve().parents[2] / "service" / "cloudrun.Dockerfile").read_text()
    steps = [line.strip() for line in text.splitlines() if line and not line.startswith("#")]
    assert "FROM ${BASE}" in steps
    assert 'text2img download --model "${MODEL}" --quiet' in text
    assert 'text2img download --model "${MODEL}" --check --quiet' in text
    assert "TEXT2IMG_MODEL_CACHE=/opt/text2img/models" in text  # not under VOLUME /models
    assert not any(s.startswith("VOLUME") for s in steps)
    assert [s for s in steps if s.startswith("USER")][-1] == "USER 10001:10001"  # not root


def test_the_gpu_dockerfile_passes_hadolint() -> None:
    import shutil
    import subprocess

    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed")
    dockerfile = Path(__file__).resolve().parents[2] / "service" / "cloudrun.Dockerfile"
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

"""The Cloud Run GPU backend (`backend: cloudrun`): a private Cloud Run service with one
NVIDIA L4 per instance, scaled by Cloud Run from 0 to `maxGpus`.

Facts it relies on (Google's documentation, read 2026-12; docs/backends.md has the list):
- one GPU per instance, type `nvidia-l4`, and with it at least 4 CPU and 16 GiB of memory;
  GPU services must use instance-based billing (CPU always allocated, `cpu_idle=False`)
  (cloud.google.com/run/docs/configuring/services/gpu, "Pricing impact").
- zonal redundancy is on by default; turning it off is cheaper per GPU-second and draws on
  a separate quota, and neither quota is granted by default
  (.../configuring/services/gpu-zonal-redundancy, "Request quota").
- a request may take at most 60 minutes (default 5) (.../configuring/request-timeout).
- an HTTP startup probe counts any 200-399 answer as started; until it passes the
  instance gets no requests; failure_threshold x period_seconds may be at most 240 s
  (.../configuring/healthchecks). The default probe is TCP, which would pass as soon as
  the port listens, long before the weights are in: hence our own probe on a path the
  service answers 200 only once the model is loaded.
- startup CPU boost gives the instance more CPU while it starts (.../configuring/cpu).

Nobody but the gateway may call it: the service keeps Cloud Run's invoker IAM check on,
and only the gateway's service account holds roles/run.invoker on it. The gateway sends
a Google-signed ID token whose audience is this service's URL
(.../authenticating/service-to-service). The user's bearer token is checked again here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from infra.api_token import Token, container_env, grant_accessor
from infra.config import Settings
from infra.iam import TRANSLATE_ROLE, grant_project_roles, member, service_account
from infra.naming import Names
from infra.propagation import GRANT_WAIT, wait_for_grants

GPU_TYPE = "nvidia-l4"
CPU = "4"  # the minimum with an L4
MEMORY = "16Gi"  # the minimum with an L4
PORT = 8080
# a whole batch, its queue wait and the stream of its progress fit; Cloud Run allows 3600 s
REQUEST_TIMEOUT_S = 900
# answered 200 without a token only once the model is loaded (503 before); the service
# declares the same path in its front-door table
STARTUP_PROBE_PATH = "/startup"  # not "...z": Cloud Run reserves some of those
PROBE_PERIOD_S = 5
PROBE_FAILURES = 48  # 5 s x 48 = 240 s, the most Cloud Run allows for a startup probe
GPU_PROJECT_ROLES = ("roles/logging.logWriter", "roles/monitoring.metricWriter")


@dataclass(frozen=True)
class GpuService:
    service: gcp.cloudrunv2.Service
    account: gcp.serviceaccount.Account

    @property
    def url(self) -> pulumi.Output[str]:
        return self.service.uri


def concurrency(model: str) -> int:
    """Requests one instance takes at once: what its engine batches on one GPU (more would
    only wait in the instance's own queue while another instance could start)."""
    from text2img.engines import registry  # torch-free

    return registry.get_spec(model).gpu_max_batch


def gpu_project_roles(settings: Settings) -> tuple[str, ...]:
    return GPU_PROJECT_ROLES + ((TRANSLATE_ROLE,) if settings.translation else ())


def create_gpu_service(
    settings: Settings,
    names: Names,
    *,
    image: pulumi.Input[str],
    token: Token,
    deps: Sequence[pulumi.Resource],
) -> GpuService:
    account = service_account("gpu", "text2img Cloud Run GPU service", settings, names, deps)
    principal = member(account)
    grants: list[pulumi.CustomResource] = [
        grant_accessor("gpu-token-accessor", token, principal),
        *grant_project_roles("gpu", settings, principal, gpu_project_roles(settings), deps),
    ]
    # the revision reads the token secret when it deploys: the grant must have propagated
    grants_active = wait_for_grants("gpu-grants-propagation", grants, GRANT_WAIT)
    env: dict[str, str] = {
        "TEXT2IMG_MODEL": settings.model,
        "TEXT2IMG_TRANSLATION": "on" if settings.translation else "off",
        "TEXT2IMG_TRANSLATE_PROJECT": settings.project,
        # the weights are in the image (service/cloudrun.Dockerfile; checked when built)
        "TEXT2IMG_MODEL_CACHE": "/opt/text2img/models",
        # Cloud Run's front end sets X-Forwarded-For; the gateway's entry is the last one
        "TEXT2IMG_TRUST_FORWARDED": "true",
        # no instance affinity: a job's follow-ups could reach another instance
        "TEXT2IMG_JOB_API": "false",
    }
    service = gcp.cloudrunv2.Service(
        "gpu-service",
        name=names.resource("gpu"),
        project=settings.project,
        location=settings.gpu_region,
        ingress="INGRESS_TRAFFIC_ALL",  # reachable, but only with the gateway's ID token
        invoker_iam_disabled=False,
        deletion_protection=False,
        labels=names.labels,
        template=gcp.cloudrunv2.ServiceTemplateArgs(
            service_account=account.email,
            timeout=f"{REQUEST_TIMEOUT_S}s",
            max_instance_request_concurrency=concurrency(settings.model),
            gpu_zonal_redundancy_disabled=not settings.gpu_zonal_redundancy,
            node_selector=gcp.cloudrunv2.ServiceTemplateNodeSelectorArgs(accelerator=GPU_TYPE),
            scaling=gcp.cloudrunv2.ServiceTemplateScalingArgs(
                min_instance_count=0, max_instance_count=settings.max_gpus
            ),
            labels=names.labels,
            containers=[
                gcp.cloudrunv2.ServiceTemplateContainerArgs(
                    image=image,
                    args=["serve", "--host", "0.0.0.0", "--port", str(PORT)],
                    ports=gcp.cloudrunv2.ServiceTemplateContainerPortsArgs(container_port=PORT),
                    envs=container_env(env, token),
                    resources=gcp.cloudrunv2.ServiceTemplateContainerResourcesArgs(
                        limits={"cpu": CPU, "memory": MEMORY, "nvidia.com/gpu": "1"},
                        cpu_idle=False,  # GPU services need instance-based billing
                        startup_cpu_boost=True,
                    ),
                    startup_probe=gcp.cloudrunv2.ServiceTemplateContainerStartupProbeArgs(
                        http_get=gcp.cloudrunv2.ServiceTemplateContainerStartupProbeHttpGetArgs(
                            path=STARTUP_PROBE_PATH, port=PORT
                        ),
                        period_seconds=PROBE_PERIOD_S,
                        timeout_seconds=PROBE_PERIOD_S - 1,
                        failure_threshold=PROBE_FAILURES,
                    ),
                )
            ],
        ),
        opts=pulumi.ResourceOptions(depends_on=[*deps, token.version, *grants, grants_active]),
    )
    return GpuService(service, account)


def grant_invoker(gpu: GpuService, principal: pulumi.Input[str]) -> gcp.cloudrunv2.ServiceIamMember:
    """roles/run.invoker on the GPU service, for one principal (the gateway)."""
    return gcp.cloudrunv2.ServiceIamMember(
        "gpu-invoker-gateway",
        project=gpu.service.project,
        location=gpu.service.location,
        name=gpu.service.name,
        role="roles/run.invoker",
        member=principal,
    )

"""The Cloud Run gateway: public HTTPS, checks the token, wakes and proxies to the GPU.

Backend `vm`:

Its service account can only read the token secret, get and start THIS VM (custom role
bound on the instance) and read zone operations (to follow its own start call). It
reaches the VM's internal IP through Direct VPC egress from its own subnet, which is the
only source the firewall admits to the service port.

Backend `cloudrun` (infra/cloudrun.py): no VM, no VPC access; the gateway's account holds
roles/run.invoker on the private GPU service and nothing on Compute Engine, and the
gateway calls the service's URL with a Google ID token for that URL.

Anyone may invoke it, on purpose: browsers and OpenAI SDKs cannot send Google identity
tokens, so the gateway checks the kit's own bearer token first, before it does anything
else. The service is made public by turning Cloud Run's invoker IAM check off
(`invoker_iam_disabled`), not by granting roles/run.invoker to `allUsers`: Google
recommends this way, and names the organization policy that forbids public members
(Domain Restricted Sharing, `iam.allowedPolicyMemberDomains`) as the case for it
(cloud.google.com/run/docs/authenticating/public; docs/gcp-facts.md §12). So no IAM policy
of the stack names `allUsers` or `allAuthenticatedUsers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from infra.api_token import Token, container_env, grant_accessor
from infra.cloudrun import GpuService, grant_invoker
from infra.config import Settings
from infra.iam import (
    GATEWAY_INSTANCE_PERMISSIONS,
    GATEWAY_PROJECT_PERMISSIONS,
    custom_role,
    member,
    role_suffix,
    service_account,
)
from infra.naming import Names
from infra.network import Network
from infra.propagation import GRANT_WAIT, wait_for_grants

REQUEST_TIMEOUT = "900s"  # long generations and progress streams pass through


@dataclass(frozen=True)
class VmUpstream:
    instance: gcp.compute.Instance
    network: Network


@dataclass(frozen=True)
class Gateway:
    service: gcp.cloudrunv2.Service
    account: gcp.serviceaccount.Account

    @property
    def url(self) -> pulumi.Output[str]:
        return self.service.uri


def create_gateway(
    settings: Settings,
    names: Names,
    *,
    image: pulumi.Input[str],
    token: Token,
    upstream: VmUpstream | GpuService,
    deps: Sequence[pulumi.Resource],
) -> Gateway:
    account = service_account("gw", "text2img gateway", settings, names, deps)
    principal = member(account)
    if isinstance(upstream, GpuService):
        grants: list[pulumi.CustomResource] = [
            grant_invoker(upstream, principal),
            grant_accessor("gateway-token-accessor", token, principal),
        ]
        env: dict[str, pulumi.Input[str]] = {
            "TEXT2IMG_GATEWAY_BACKEND": "cloudrun",
            "TEXT2IMG_GATEWAY_UPSTREAM_URL": upstream.url,
            # the ETA of a cold start: ~5 s for the instance + the model load (estimate)
            "TEXT2IMG_GATEWAY_TYPICAL_WAKE_S": "60",
        }
        return _service(settings, names, image, token, account, grants, env, None, deps)
    instance, network = upstream.instance, upstream.network
    unique = role_suffix("gateway-role-suffix").hex
    starter = custom_role(
        "gateway-instance-role",
        "gateway_start",
        "text2img gateway: get and start the GPU VM",
        GATEWAY_INSTANCE_PERMISSIONS,
        settings,
        names,
        deps,
        unique,
    )
    operations = custom_role(
        "gateway-operations-role",
        "gateway_ops",
        "text2img gateway: read zone operations",
        GATEWAY_PROJECT_PERMISSIONS,
        settings,
        names,
        deps,
        unique,
    )
    grants = [
        gcp.compute.InstanceIAMMember(
            "gateway-instance-start",
            project=settings.project,
            zone=settings.zone,
            instance_name=instance.name,
            role=starter.name,
            member=principal,
        ),
        gcp.projects.IAMMember(
            "gateway-zone-operations",
            project=settings.project,
            role=operations.name,
            member=principal,
        ),
        grant_accessor("gateway-token-accessor", token, principal),
    ]
    env = {
        "TEXT2IMG_GATEWAY_BACKEND": "vm",
        "TEXT2IMG_GATEWAY_PROJECT": settings.project,
        "TEXT2IMG_GATEWAY_ZONE": settings.zone,
        "TEXT2IMG_GATEWAY_INSTANCE": instance.name,
        "TEXT2IMG_GATEWAY_UPSTREAM_PORT": str(settings.service_port),
    }
    vpc = gcp.cloudrunv2.ServiceTemplateVpcAccessArgs(
        egress="PRIVATE_RANGES_ONLY",
        network_interfaces=[
            gcp.cloudrunv2.ServiceTemplateVpcAccessNetworkInterfaceArgs(
                network=network.vpc.id,
                subnetwork=network.gateway_subnet.id,
            )
        ],
    )
    return _service(settings, names, image, token, account, grants, env, vpc, deps)


def _service(
    settings: Settings,
    names: Names,
    image: pulumi.Input[str],
    token: Token,
    account: gcp.serviceaccount.Account,
    grants: Sequence[pulumi.CustomResource],
    env: dict[str, pulumi.Input[str]],
    vpc: gcp.cloudrunv2.ServiceTemplateVpcAccessArgs | None,
    deps: Sequence[pulumi.Resource],
) -> Gateway:
    # Cloud Run checks, when it deploys the revision, that its service account may read the
    # token secret ("Permission denied on secret ... for Revision service account"): the
    # grant must have propagated, not only exist (infra/propagation.py)
    grants_active = wait_for_grants("gateway-grants-propagation", grants, GRANT_WAIT)
    service = gcp.cloudrunv2.Service(
        "gateway",
        name=names.resource("gateway"),
        project=settings.project,
        location=settings.region,
        ingress="INGRESS_TRAFFIC_ALL",
        # public without an `allUsers` binding; the gateway's token check comes first
        invoker_iam_disabled=True,
        deletion_protection=False,
        labels=names.labels,
        template=gcp.cloudrunv2.ServiceTemplateArgs(
            service_account=account.email,
            timeout=REQUEST_TIMEOUT,
            scaling=gcp.cloudrunv2.ServiceTemplateScalingArgs(
                min_instance_count=0, max_instance_count=settings.gateway_max_instances
            ),
            vpc_access=vpc,
            labels=names.labels,
            containers=[
                gcp.cloudrunv2.ServiceTemplateContainerArgs(
                    image=image,
                    envs=container_env(env, token),
                    resources=gcp.cloudrunv2.ServiceTemplateContainerResourcesArgs(
                        limits={"cpu": "1", "memory": "512Mi"},
                        cpu_idle=True,
                        startup_cpu_boost=True,
                    ),
                    startup_probe=gcp.cloudrunv2.ServiceTemplateContainerStartupProbeArgs(
                        http_get=gcp.cloudrunv2.ServiceTemplateContainerStartupProbeHttpGetArgs(
                            path="/healthz"
                        ),
                        period_seconds=2,
                        failure_threshold=15,
                    ),
                )
            ],
        ),
        # the revision reads the secret at deploy time: version and access must exist first
        opts=pulumi.ResourceOptions(depends_on=[*deps, token.version, *grants, grants_active]),
    )
    return Gateway(service, account)

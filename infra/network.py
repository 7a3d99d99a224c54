"""Dedicated VPC: the VM subnet (Private Google Access, Cloud NAT for outbound only), the
gateway's Direct VPC egress subnet, and a firewall that admits nothing from the internet.

Ingress rules (all others fall to the VPC's implied deny):
  * tcp:22 from 35.235.240.0/20 only (Identity-Aware Proxy TCP forwarding, for `ssh`)
  * tcp:servicePort from the gateway's egress subnet only
The VM has no external IP; Cloud NAT gives it outbound access (apt, the NVIDIA container
toolkit, the model weights), Private Google Access reaches Google APIs directly.

Both subnets record VPC flow logs (Checkov CKV_GCP_26: a subnet without `log_config`
fails), set for a personal kit's budget: one record per flow per 10 minutes instead of
per 5 seconds, half of the flows sampled, no metadata annotations. `flowLogs: false`
turns them off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from infra.config import Settings
from infra.naming import Names

IAP_RANGE = "35.235.240.0/20"
FLOW_LOG_AGGREGATION = "INTERVAL_10_MIN"
FLOW_LOG_SAMPLING = 0.5
FLOW_LOG_METADATA = "EXCLUDE_ALL_METADATA"


def flow_logs(settings: Settings) -> gcp.compute.SubnetworkLogConfigArgs | None:
    """Cost-conscious flow logs, or none (`flowLogs: false`)."""
    if not settings.flow_logs:
        return None
    return gcp.compute.SubnetworkLogConfigArgs(
        aggregation_interval=FLOW_LOG_AGGREGATION,
        flow_sampling=FLOW_LOG_SAMPLING,
        metadata=FLOW_LOG_METADATA,
    )


@dataclass(frozen=True)
class Network:
    vpc: gcp.compute.Network
    vm_subnet: gcp.compute.Subnetwork
    gateway_subnet: gcp.compute.Subnetwork
    vm_tag: str
    firewalls: tuple[gcp.compute.Firewall, ...]
    nat: gcp.compute.RouterNat


def create_network(settings: Settings, names: Names, deps: Sequence[pulumi.Resource]) -> Network:
    opts = pulumi.ResourceOptions(depends_on=list(deps))
    vpc = gcp.compute.Network(
        "vpc",
        name=names.resource("vpc"),
        project=settings.project,
        auto_create_subnetworks=False,
        routing_mode="REGIONAL",
        description="text2img: GPU VM and gateway egress",
        opts=opts,
    )
    vm_subnet = gcp.compute.Subnetwork(
        "vm-subnet",
        name=names.resource("vm"),
        project=settings.project,
        region=settings.region,
        network=vpc.id,
        ip_cidr_range=settings.subnet_cidr,
        private_ip_google_access=True,
        log_config=flow_logs(settings),
        opts=opts,
    )
    gateway_subnet = gcp.compute.Subnetwork(
        "gateway-subnet",
        name=names.resource("gateway"),
        project=settings.project,
        region=settings.region,
        network=vpc.id,
        ip_cidr_range=settings.gateway_egress_cidr,
        private_ip_google_access=True,
        log_config=flow_logs(settings),
        description="Cloud Run Direct VPC egress of the text2img gateway",
        opts=opts,
    )
    vm_tag = names.resource("gpu")
    ssh = gcp.compute.Firewall(
        "allow-iap-ssh",
        name=names.resource("allow-iap-ssh"),
        project=settings.project,
        network=vpc.id,
        direction="INGRESS",
        priority=1000,
        source_ranges=[IAP_RANGE],
        target_tags=[vm_tag],
        allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=["22"])],
        description="SSH to the GPU VM only through Identity-Aware Proxy",
        opts=opts,
    )
    service = gcp.compute.Firewall(
        "allow-gateway",
        name=names.resource("allow-gateway"),
        project=settings.project,
        network=vpc.id,
        direction="INGRESS",
        priority=1000,
        source_ranges=[settings.gateway_egress_cidr],
        target_tags=[vm_tag],
        allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=[str(settings.service_port)])],
        description="The service port only from the Cloud Run gateway's egress subnet",
        opts=opts,
    )
    router = gcp.compute.Router(
        "router",
        name=names.resource("router"),
        project=settings.project,
        region=settings.region,
        network=vpc.id,
        opts=opts,
    )
    nat = gcp.compute.RouterNat(
        "nat",
        name=names.resource("nat"),
        project=settings.project,
        region=settings.region,
        router=router.name,
        nat_ip_allocate_option="AUTO_ONLY",
        source_subnetwork_ip_ranges_to_nat="LIST_OF_SUBNETWORKS",
        subnetworks=[
            gcp.compute.RouterNatSubnetworkArgs(
                name=vm_subnet.id, source_ip_ranges_to_nats=["ALL_IP_RANGES"]
            )
        ],
        log_config=gcp.compute.RouterNatLogConfigArgs(enable=True, filter="ERRORS_ONLY"),
        opts=opts,
    )
    return Network(vpc, vm_subnet, gateway_subnet, vm_tag, (ssh, service), nat)

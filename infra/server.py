"""The GPU server: the VM and its optional daily start/stop schedule, one component.

Ordering for the schedule (docs/gcp-facts.md §5, §11): the Compute Engine service agent
needs start/stop permission before a schedule is attached, or the attach fails with 412
"Compute Engine System service account ... needs to have [compute.instances.start,
compute.instances.stop]". Existing is not enough: the grant must have propagated, which
takes typically 2 and sometimes 7+ minutes. So the grant is created before the VM, a
`pulumiverse_time.Sleep` of SCHEDULE_AGENT_WAIT starts when it exists, and the attachment
waits for that delay and the VM (hashicorp/terraform-provider-google#11899,
GoogleCloudPlatform/cloud-foundation-fabric#2870; infra/propagation.py).
The schedule is attached with a ResourcePolicyAttachment, so turning it on or off later
does not recreate the VM (its disk holds the cached weights).

The boot disk is a resource of its own (a `gcp.compute.Disk` from the image, attached as
the boot disk with auto_delete off), not the instance's `initialize_params`, whose every
field forces a new instance in the provider. So:
  * a larger `diskSizeGb` resizes the disk in place (a disk only grows; the guest grows
    its root partition and filesystem at the next boot);
  * a change that replaces the VM (`spot`, `gpuType`, `gpuCount`: ForceNew fields of the
    instance) keeps the disk, with the cached weights and the pulled image: the old VM is
    deleted first (delete_before_replace, the name is fixed), the new one boots the disk;
  * only a new `zone` (or region) replaces the disk as well: disks are zonal.
infra/replacements.py warns before any of these is applied to an existing stack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from infra.config import Settings
from infra.naming import Names
from infra.propagation import SCHEDULE_AGENT_WAIT, wait_for_grants

SCHEDULE_AGENT_ROLE = "roles/compute.instanceAdmin.v1"


@dataclass(frozen=True)
class ServerArgs:
    settings: Settings
    names: Names
    subnet: gcp.compute.Subnetwork
    network_tag: str
    service_account_email: pulumi.Input[str]
    metadata: Mapping[str, pulumi.Input[str]]
    project_number: pulumi.Input[str]
    deps: Sequence[pulumi.Resource]


def boot_disk_source(settings: Settings) -> dict[str, str | None]:
    """What a new boot disk is created from: `bootDiskSnapshot` when set (scripts/vm
    move), else `imageName`, else the image family. The family is handed to Compute as
    `projects/P/global/images/family/F`, which the provider resolves to the newest image
    when it creates the disk and at no other time: the program makes no image lookup, so a
    family deprecated after the disk exists cannot fail a later `pulumi up`
    (images.getFromFamily returns only non-deprecated images)."""
    if settings.boot_disk_snapshot:
        return {
            "image": None,
            "snapshot": f"projects/{settings.project}/global/snapshots/"
            f"{settings.boot_disk_snapshot}",
        }
    images = f"projects/{settings.image_project}/global/images"
    if settings.image_name:
        return {"image": f"{images}/{settings.image_name}", "snapshot": None}
    return {"image": f"{images}/family/{settings.image_family}", "snapshot": None}


def scheduling(settings: Settings) -> gcp.compute.InstanceSchedulingArgs:
    """GPUs require TERMINATE on host maintenance. Spot: SPOT + preemptible + no automatic
    restart + STOP on preemption (the disk stays; the gateway starts it again)."""
    if settings.spot:
        return gcp.compute.InstanceSchedulingArgs(
            on_host_maintenance="TERMINATE",
            provisioning_model="SPOT",
            preemptible=True,
            automatic_restart=False,
            instance_termination_action="STOP",
        )
    return gcp.compute.InstanceSchedulingArgs(
        on_host_maintenance="TERMINATE",
        provisioning_model="STANDARD",
        preemptible=False,
        automatic_restart=True,
    )


class GpuServer(pulumi.ComponentResource):
    """The VM, its boot disk and the optional schedule. With a schedule: agent grant ->
    `time:Sleep` (SCHEDULE_AGENT_WAIT, for IAM propagation; a bare dependency is not enough,
    the attach fails with 412) -> ResourcePolicyAttachment, which also waits for the VM."""

    instance: gcp.compute.Instance
    boot_disk: gcp.compute.Disk
    schedule: gcp.compute.ResourcePolicy | None

    def __init__(
        self, name: str, args: ServerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("text2img:infra:GpuServer", name, None, opts)
        s, names = args.settings, args.names
        child = pulumi.ResourceOptions(parent=self)
        instance_deps: list[pulumi.Resource] = list(args.deps)

        self.schedule = None
        agent_grant: gcp.projects.IAMMember | None = None
        if s.has_schedule:
            agent_grant = gcp.projects.IAMMember(
                f"{name}-schedule-agent",
                project=s.project,
                role=SCHEDULE_AGENT_ROLE,
                member=pulumi.Output.from_input(args.project_number).apply(
                    lambda n: f"serviceAccount:service-{n}@compute-system.iam.gserviceaccount.com"
                ),
                opts=pulumi.ResourceOptions.merge(
                    child,
                    # the binding is per project, not per stack: another stack's schedule
                    # may rely on it, so `pulumi destroy` leaves it (it costs nothing)
                    pulumi.ResourceOptions(depends_on=list(args.deps), retain_on_delete=True),
                ),
            )
            self.schedule = gcp.compute.ResourcePolicy(
                f"{name}-schedule",
                name=names.resource("schedule"),
                project=s.project,
                region=s.region,
                description="text2img daily start/stop",
                instance_schedule_policy=gcp.compute.ResourcePolicyInstanceSchedulePolicyArgs(
                    time_zone=s.schedule_time_zone,
                    vm_start_schedule=(
                        gcp.compute.ResourcePolicyInstanceSchedulePolicyVmStartScheduleArgs(
                            schedule=s.schedule_start
                        )
                        if s.schedule_start
                        else None
                    ),
                    vm_stop_schedule=(
                        gcp.compute.ResourcePolicyInstanceSchedulePolicyVmStopScheduleArgs(
                            schedule=s.schedule_stop
                        )
                        if s.schedule_stop
                        else None
                    ),
                ),
                opts=pulumi.ResourceOptions.merge(
                    child, pulumi.ResourceOptions(depends_on=list(args.deps))
                ),
            )
            instance_deps.append(agent_grant)

        source = boot_disk_source(s)
        self.boot_disk = gcp.compute.Disk(
            f"{name}-boot-disk",
            name=names.resource("boot"),
            project=s.project,
            zone=s.zone,
            image=source["image"],
            snapshot=source["snapshot"],
            size=s.disk_size_gb,
            type="pd-balanced",
            labels=names.labels,
            description=f"text2img boot disk (OS, image, model cache) of stack {names.stack}",
            opts=pulumi.ResourceOptions.merge(
                child,
                pulumi.ResourceOptions(
                    depends_on=list(args.deps),
                    # a newer image in the family must not replace the disk (and its cached
                    # weights) on every `pulumi up`. Pulumi sends an ignored property's old
                    # value even when the disk is replaced (a new zone), so a disk made from
                    # a snapshot must not ignore it: image and snapshot exclude each other
                    ignore_changes=[] if source["snapshot"] else ["image"],
                    delete_before_replace=True,
                ),
            ),
        )

        self.instance = gcp.compute.Instance(
            f"{name}-vm",
            name=names.resource("gpu"),
            project=s.project,
            zone=s.zone,
            machine_type=s.machine_type,
            guest_accelerators=[
                gcp.compute.InstanceGuestAcceleratorArgs(type=s.gpu_type, count=s.gpu_count)
            ],
            scheduling=scheduling(s),
            # the disk outlives a replaced VM; `pulumi destroy` deletes it after the VM
            boot_disk=gcp.compute.InstanceBootDiskArgs(
                source=self.boot_disk.self_link, auto_delete=False
            ),
            network_interfaces=[
                # no access_configs: no external IP; outbound goes through Cloud NAT
                gcp.compute.InstanceNetworkInterfaceArgs(subnetwork=args.subnet.id)
            ],
            tags=[args.network_tag],
            service_account=gcp.compute.InstanceServiceAccountArgs(
                email=args.service_account_email,
                scopes=["https://www.googleapis.com/auth/cloud-platform"],
            ),
            shielded_instance_config=gcp.compute.InstanceShieldedInstanceConfigArgs(
                enable_secure_boot=False,  # the NVIDIA driver module is not signed for it
                enable_vtpm=True,
                enable_integrity_monitoring=True,
            ),
            metadata=dict(args.metadata),
            labels=names.labels,
            allow_stopping_for_update=True,
            deletion_protection=False,
            description=f"text2img GPU server of stack {names.stack}",
            opts=pulumi.ResourceOptions.merge(
                child,
                pulumi.ResourceOptions(
                    depends_on=instance_deps,
                    # the schedule attaches separately below
                    ignore_changes=["resourcePolicies"],
                    # fixed name: a replacement must delete the old VM (and free its boot
                    # disk) before it creates the new one
                    delete_before_replace=True,
                ),
            ),
        )

        if self.schedule is not None and agent_grant is not None:
            agent_active = wait_for_grants(
                f"{name}-schedule-agent-propagation",
                [agent_grant],
                SCHEDULE_AGENT_WAIT,
                parent=self,
            )
            gcp.compute.ResourcePolicyAttachment(
                f"{name}-schedule-attachment",
                project=s.project,
                zone=s.zone,
                instance=self.instance.name,
                name=self.schedule.name,
                opts=pulumi.ResourceOptions.merge(
                    child,
                    # a replaced VM needs the schedule attached again: the VM is replaced
                    # delete-before-replace, and Pulumi then also replaces dependents whose
                    # ForceNew inputs (here `instance`) come from it. (The `replace_with`
                    # option would say so explicitly but fails on older Pulumi CLIs.)
                    pulumi.ResourceOptions(depends_on=[agent_active, self.instance]),
                ),
            )

        self.register_outputs(
            {
                "instance_name": self.instance.name,
                "zone": self.instance.zone,
                "internal_ip": self.internal_ip,
                "boot_image": self.boot_image,
                "boot_disk": self.boot_disk.name,
                "schedule": self.schedule.self_link if self.schedule else None,
            }
        )

    @property
    def internal_ip(self) -> pulumi.Output[str]:
        return self.instance.network_interfaces.apply(lambda nics: nics[0].network_ip or "")

    @property
    def boot_image(self) -> pulumi.Output[str]:
        """The image the boot disk was created from (may be older than the family's newest;
        the provider records the resolved image, a preview shows the family), or the
        snapshot it was restored from."""
        return pulumi.Output.all(self.boot_disk.image, self.boot_disk.snapshot).apply(
            lambda parts: parts[0] or parts[1] or ""
        )

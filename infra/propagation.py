"""Waiting for IAM grants to take effect before the first call that relies on them.

An IAM binding is stored at once but is enforced everywhere only later: Google's "Access
change propagation" page says policy changes "typically 2 minutes, potentially 7 minutes or
longer". Pulumi orders resources by dependency, not by
propagation: a call made right after a new grant can still be refused. Seen for this
stack's calls:

  * attaching an instance schedule right after granting the Compute Engine service agent
    start/stop: 412 "Compute Engine System service account ... needs to have
    [compute.instances.start,compute.instances.stop]" (hashicorp/terraform-provider-google
    #11899; GoogleCloudPlatform/cloud-foundation-fabric#2870, where the grant and the
    schedule were created in parallel);
  * deploying a Cloud Run revision that reads a secret right after granting its service
    account secretAccessor: "Permission denied on secret ... for Revision service account"
    (hashicorp/terraform-provider-google#13786);
  * a Cloud Build run by a service account granted a minute earlier: "does not have
    storage.objects.get" on the staging bucket;
  * the VM's first boot right after its grants: the startup script reads the token from
    Secret Manager, pulls from Artifact Registry and calls Cloud Translation, and a 403
    there costs a boot. The VM is therefore created only after a delay that
    starts when its grants exist; the startup script also retries a 403 with back-off.

A `pulumiverse_time.Sleep` after the grants and before the dependent resource makes the
wait part of the graph: it runs once, when the grants are created (or change), not on
every `pulumi up`, and it overlaps with whatever else is being created meanwhile (the
image build takes far longer, so on a first deploy the waits cost nothing). A wait cannot
cover the rare 7-minute case; `pulumi up` again finishes the job then (docs/deploy.md, "If `pulumi
up` fails").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, cast

import pulumi
import pulumiverse_time as time

# the schedule agent's grant is project-wide and the 412 is documented: wait longer
SCHEDULE_AGENT_WAIT = "120s"
# resource-level grants used by one later call (secret, bucket, repository)
GRANT_WAIT = "60s"
# the VM's grants (secret, repository, translation, logging): the VM is created after
# this; on a first deploy it overlaps with the image build, which takes far longer
VM_GRANT_WAIT = "120s"


class Grant(Protocol):
    """Any IAM member resource: a role granted to a member."""

    @property
    def role(self) -> pulumi.Output[str]: ...

    @property
    def member(self) -> pulumi.Output[str]: ...


def wait_for_grants(
    logical: str,
    grants: Sequence[pulumi.CustomResource],
    duration: str,
    parent: pulumi.Resource | None = None,
) -> time.Sleep:
    """A delay that starts when every grant (an IAM member resource) exists; it runs again
    when a grant changes."""
    triggers = {
        f"grant-{i}": pulumi.Output.concat(cast(Grant, g).role, " ", cast(Grant, g).member)
        for i, g in enumerate(grants)
    }
    return time.Sleep(
        logical,
        create_duration=duration,
        triggers=triggers,
        opts=pulumi.ResourceOptions(depends_on=list(grants), parent=parent),
    )

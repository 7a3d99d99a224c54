"""Service accounts and project-level role grants. Least privilege: resource-level grants
(one repository, one secret, one VM) are made next to the resource; only roles that have
no narrower scope are granted on the project here. Never owner or editor."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_gcp as gcp
import pulumi_random as random

from infra.api_token import Token, grant_accessor
from infra.config import Settings
from infra.naming import Names

# roles that exist only at project level; cloudtranslate.user only with translation on
VM_PROJECT_ROLES = ("roles/logging.logWriter", "roles/monitoring.metricWriter")
TRANSLATE_ROLE = "roles/cloudtranslate.user"
BUILD_PROJECT_ROLES = ("roles/logging.logWriter",)
# the gateway may read and start exactly one VM (granted on that instance) ...
GATEWAY_INSTANCE_PERMISSIONS = (
    "compute.instances.get",
    "compute.instances.start",
    "compute.instances.resume",  # a suspended VM is woken by resume, not start
    "compute.instances.getGuestAttributes",  # text2img/boot-failure (GPU driver)
)
# ... and follow the start operation it launched (zone operations have no narrower scope)
GATEWAY_PROJECT_PERMISSIONS = ("compute.zoneOperations.get",)
FORBIDDEN_ROLES = frozenset({"roles/owner", "roles/editor"})


def service_account(
    suffix: str,
    display_name: str,
    settings: Settings,
    names: Names,
    deps: Sequence[pulumi.Resource],
) -> gcp.serviceaccount.Account:
    return gcp.serviceaccount.Account(
        f"sa-{suffix}",
        account_id=names.account_id(suffix),
        display_name=display_name,
        description=f"text2img stack {names.stack}: {display_name}",
        project=settings.project,
        opts=pulumi.ResourceOptions(depends_on=list(deps)),
    )


def member(account: gcp.serviceaccount.Account) -> pulumi.Output[str]:
    return account.email.apply(lambda email: f"serviceAccount:{email}")


def grant_project_roles(
    logical: str,
    settings: Settings,
    principal: pulumi.Input[str],
    roles: Sequence[str],
    deps: Sequence[pulumi.Resource],
) -> list[gcp.projects.IAMMember]:
    """Additive project bindings (IAMMember never removes anyone else's access)."""
    grants = []
    for role in roles:
        assert role not in FORBIDDEN_ROLES, role
        grants.append(
            gcp.projects.IAMMember(
                f"{logical}-{role.split('/')[-1].replace('.', '-')}",
                project=settings.project,
                role=role,
                member=principal,
                opts=pulumi.ResourceOptions(depends_on=list(deps)),
            )
        )
    return grants


def vm_project_roles(settings: Settings) -> tuple[str, ...]:
    return VM_PROJECT_ROLES + ((TRANSLATE_ROLE,) if settings.translation else ())


def role_suffix(logical: str) -> random.RandomId:
    """The stack's random part of its custom role ids, drawn once and kept in the state.

    A deleted custom role can be undeleted for 7 days and its id cannot be reused until 37
    days after the deletion (IAM roles.delete / "Creating and managing custom roles"), so
    `pulumi destroy` followed by `pulumi up` within that window would fail creating a role
    with the same id. A new stack state (after destroy) draws a new suffix; every `up` of
    the same state keeps it, so the roles are not replaced.
    """
    return random.RandomId(logical, byte_length=3)


def custom_role(
    logical: str,
    suffix: str,
    title: str,
    permissions: Sequence[str],
    settings: Settings,
    names: Names,
    deps: Sequence[pulumi.Resource],
    unique: pulumi.Input[str] = "",
) -> gcp.projects.IAMCustomRole:
    return gcp.projects.IAMCustomRole(
        logical,
        project=settings.project,
        role_id=pulumi.Output.from_input(unique).apply(lambda u: names.role_id(suffix, u)),
        title=title,
        description=f"text2img stack {names.stack}: {title}",
        permissions=list(permissions),
        stage="GA",
        opts=pulumi.ResourceOptions(depends_on=list(deps)),
    )


def grant_vm_access(
    settings: Settings,
    account: gcp.serviceaccount.Account,
    repo: gcp.artifactregistry.Repository,
    token: Token,
    deps: Sequence[pulumi.Resource],
) -> list[pulumi.CustomResource]:
    """The VM may pull from this one repository, read this one secret, write logs and
    metrics, and (translation on) call Cloud Translation; nothing else."""
    principal = member(account)
    return [
        gcp.artifactregistry.RepositoryIamMember(
            "vm-repo-reader",
            project=settings.project,
            location=repo.location,
            repository=repo.name,
            role="roles/artifactregistry.reader",
            member=principal,
        ),
        grant_accessor("vm-token-accessor", token, principal),
        *grant_project_roles("vm", settings, principal, vm_project_roles(settings), deps),
    ]

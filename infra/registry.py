"""The Artifact Registry Docker repository: immutable tags, cleanup that really deletes."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_gcp as gcp

from infra.config import Settings
from infra.naming import Names

KEEP_RECENT = 5
DELETE_OLDER_THAN = "604800s"  # 7 days


def create_repository(
    settings: Settings, names: Names, deps: Sequence[pulumi.Resource]
) -> gcp.artifactregistry.Repository:
    """Keep the KEEP_RECENT newest versions of each image; delete everything else older
    than a week, tagged or not (a keep policy alone deletes nothing; keep wins over delete)."""
    return gcp.artifactregistry.Repository(
        "repository",
        project=settings.project,
        location=settings.region,
        repository_id=names.prefix,
        format="DOCKER",
        mode="STANDARD_REPOSITORY",
        description=f"text2img images of stack {names.stack}",
        docker_config=gcp.artifactregistry.RepositoryDockerConfigArgs(immutable_tags=True),
        cleanup_policy_dry_run=False,
        cleanup_policies=[
            gcp.artifactregistry.RepositoryCleanupPolicyArgs(
                id="keep-recent",
                action="KEEP",
                most_recent_versions=gcp.artifactregistry.RepositoryCleanupPolicyMostRecentVersionsArgs(
                    keep_count=KEEP_RECENT
                ),
            ),
            gcp.artifactregistry.RepositoryCleanupPolicyArgs(
                id="delete-old",
                action="DELETE",
                condition=gcp.artifactregistry.RepositoryCleanupPolicyConditionArgs(
                    tag_state="ANY", older_than=DELETE_OLDER_THAN
                ),
            ),
        ],
        labels=names.labels,
        opts=pulumi.ResourceOptions(depends_on=list(deps)),
    )


def image_base(settings: Settings, repo: gcp.artifactregistry.Repository) -> pulumi.Output[str]:
    """`REGION-docker.pkg.dev/PROJECT/REPO`"""
    return repo.repository_id.apply(
        lambda rid: f"{settings.region}-docker.pkg.dev/{settings.project}/{rid}"
    )

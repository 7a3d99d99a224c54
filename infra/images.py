"""The service and gateway images: built with Cloud Build and referenced by digest, or
taken as configured (prebuilt, by digest).

Why Cloud Build through `gcloud` (pulumi-command) rather than the docker-build provider:
the service image carries CUDA PyTorch (several GB); Cloud Build builds it next to
Artifact Registry on a fast machine, so `pulumi up` needs neither a local Docker daemon
nor uploading gigabytes from the user's connection, and works the same from a laptop,
Cloud Shell or CI. Only the source (a few hundred KB) is uploaded.

The image tag is a hash of the build context, so an unchanged tree never rebuilds, and a
tag that already exists is reused (the repository's tags are immutable).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_command as command
import pulumi_gcp as gcp

from infra.config import Settings
from infra.iam import BUILD_PROJECT_ROLES, grant_project_roles, member, service_account
from infra.naming import Names
from infra.propagation import GRANT_WAIT, wait_for_grants

REPO_ROOT = Path(__file__).resolve().parent.parent
# tests only: another directory laid out like the repository (pyproject.toml, service/)
BUILD_CONTEXT_ENV = "TEXT2IMG_INFRA_BUILD_CONTEXT"
SERVICE_DOCKERFILE = "service/Dockerfile"
GATEWAY_DOCKERFILE = "service/gateway.Dockerfile"
# backend cloudrun: the service image plus one model's weights, checked at build
GPU_DOCKERFILE = "service/cloudrun.Dockerfile"
DIGEST_REF_RE = re.compile(r"^[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+@sha256:[0-9a-f]{64}$")
_SKIP_PARTS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
_SKIP_SUFFIXES = (".pyc", ".pt", ".safetensors")


class BuildError(pulumi.RunError):
    """An image cannot be built as configured."""


@dataclass(frozen=True)
class Images:
    service: pulumi.Output[str]
    gateway: pulumi.Output[str]
    gpu: pulumi.Output[str] | None = None  # backend cloudrun: service + baked weights


def build_context() -> Path:
    override = os.environ.get(BUILD_CONTEXT_ENV)
    return Path(override) if override else REPO_ROOT


def context_files(root: Path) -> list[Path]:
    """The files the Dockerfiles use (see infra/build.gcloudignore), sorted."""
    files = [root / "pyproject.toml"]
    for path in sorted((root / "service").rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or _SKIP_PARTS.intersection(rel.parts):
            continue
        if path.suffix in _SKIP_SUFFIXES or any(p.endswith(".egg-info") for p in rel.parts):
            continue
        files.append(path)
    return files


def context_hash(dockerfile: str, root: Path) -> str:
    """sha256 over the relative paths and contents of the build context + the Dockerfile name."""
    digest = hashlib.sha256(dockerfile.encode())
    for path in context_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def check_digest_ref(ref: str) -> str:
    ref = ref.strip().splitlines()[-1] if ref.strip() else ""
    if not DIGEST_REF_RE.match(ref):
        raise BuildError(f"the image build printed {ref!r}, not an image reference by digest")
    return ref


@dataclass(frozen=True)
class _Builder:
    settings: Settings
    names: Names
    image_base: pulumi.Output[str]
    environment: dict[str, pulumi.Input[str]]
    deps: list[pulumi.Resource]

    def build(
        self,
        logical: str,
        image_name: str,
        dockerfile: str,
        *,
        args: dict[str, pulumi.Input[str]] | None = None,
        tag_seed: str = "",
    ) -> pulumi.Output[str]:
        root = build_context()
        if not (root / dockerfile).is_file():
            key = "serviceImage" if dockerfile == SERVICE_DOCKERFILE else "gatewayImage"
            raise BuildError(
                f"{dockerfile} not found, so the image cannot be built; run from a complete "
                f"checkout or set a prebuilt image: `pulumi config set {key} IMAGE@sha256:...`"
            )
        tag = "src-" + context_hash(dockerfile, root)[:20]
        if tag_seed:  # what else the image is made of (its base, its model)
            tag = "src-" + hashlib.sha256(f"{tag}\0{tag_seed}".encode()).hexdigest()[:20]
        cmd = command.local.Command(
            logical,
            create="bash infra/build_image.sh",
            dir=str(root),
            environment={
                **self.environment,
                "T2I_IMAGE": self.image_base.apply(lambda base: f"{base}/{image_name}"),
                "T2I_TAG": tag,
                "T2I_DOCKERFILE": dockerfile,
                **(args or {}),
            },
            triggers=[tag],
            opts=pulumi.ResourceOptions(depends_on=self.deps),
        )
        return cmd.stdout.apply(check_digest_ref)


def build_images(
    settings: Settings,
    names: Names,
    image_base: pulumi.Output[str],
    repo: gcp.artifactregistry.Repository,
    deps: Sequence[pulumi.Resource],
) -> Images:
    """Configured images pass through; missing ones are built by a dedicated build account
    that may only write to this repository, read its own staging bucket and write logs."""
    if not settings.needs_build:
        return Images(
            pulumi.Output.from_input(settings.service_image),
            pulumi.Output.from_input(settings.gateway_image),
        )

    account = service_account("build", "text2img image builds", settings, names, deps)
    principal = member(account)
    bucket = gcp.storage.Bucket(
        "build-staging",
        name=names.build_bucket,
        project=settings.project,
        location=settings.region,
        uniform_bucket_level_access=True,
        public_access_prevention="enforced",
        force_destroy=True,
        lifecycle_rules=[
            gcp.storage.BucketLifecycleRuleArgs(
                action=gcp.storage.BucketLifecycleRuleActionArgs(type="Delete"),
                condition=gcp.storage.BucketLifecycleRuleConditionArgs(age=1),
            )
        ],
        labels=names.labels,
        opts=pulumi.ResourceOptions(depends_on=list(deps)),
    )
    grants = [
        gcp.artifactregistry.RepositoryIamMember(
            "build-repo-writer",
            project=settings.project,
            location=repo.location,
            repository=repo.name,
            role="roles/artifactregistry.writer",
            member=principal,
        ),
        gcp.storage.BucketIAMMember(
            "build-staging-reader",
            bucket=bucket.name,
            role="roles/storage.objectViewer",
            member=principal,
        ),
        *grant_project_roles("build", settings, principal, BUILD_PROJECT_ROLES, deps),
    ]
    # the first build reads the staging bucket as this account seconds after the grants
    grants_active = wait_for_grants("build-grants-propagation", grants, GRANT_WAIT)
    builder = _Builder(
        settings,
        names,
        image_base,
        environment={
            "T2I_PROJECT": settings.project,
            # Cloud Build runs in buildRegion (not every project may build everywhere) and
            # pushes to the repository in `region`
            "T2I_REGION": settings.build_region,
            "T2I_SERVICE_ACCOUNT": account.email.apply(
                lambda e: f"projects/{settings.project}/serviceAccounts/{e}"
            ),
            "T2I_STAGING": bucket.name.apply(lambda b: f"gs://{b}/source"),
            "T2I_MACHINE_TYPE": settings.build_machine_type,
        },
        deps=[*deps, repo, bucket, *grants, grants_active],
    )
    service = (
        pulumi.Output.from_input(settings.service_image)
        if settings.service_image
        else builder.build("build-service-image", "text2img", SERVICE_DOCKERFILE)
    )
    gateway = (
        pulumi.Output.from_input(settings.gateway_image)
        if settings.gateway_image
        else builder.build("build-gateway-image", "text2img-gateway", GATEWAY_DOCKERFILE)
    )
    gpu = None
    if settings.on_cloud_run:
        gpu = builder.build(
            "build-gpu-image",
            "text2img-gpu",
            GPU_DOCKERFILE,
            args={"T2I_BASE": service, "T2I_MODEL": settings.model},
            tag_seed=f"{settings.service_image}\0{settings.model}",
        )
    return Images(service, gateway, gpu)

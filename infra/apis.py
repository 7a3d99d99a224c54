"""The Google APIs the stack uses, enabled first; every other resource depends on them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from infra.config import Settings

if TYPE_CHECKING:  # the preflight (scripts/vm) reads the list without the provider SDK
    import pulumi_gcp as gcp

BASE_APIS = (
    "cloudresourcemanager.googleapis.com",  # project IAM bindings, project lookup
    "serviceusage.googleapis.com",
    "iam.googleapis.com",  # service accounts, custom roles
    "compute.googleapis.com",
    "artifactregistry.googleapis.com",
    "secretmanager.googleapis.com",
    "run.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "iap.googleapis.com",  # `gcloud compute ssh --tunnel-through-iap`
    "oslogin.googleapis.com",
)
BUILD_APIS = ("cloudbuild.googleapis.com", "storage.googleapis.com")
TRANSLATION_APIS = ("translate.googleapis.com",)
# backend cloudrun: the preflight reads the Cloud Run GPU quota through the Cloud Quotas API
CLOUD_RUN_APIS = ("cloudquotas.googleapis.com",)


def required_apis(settings: Settings) -> list[str]:
    apis = list(BASE_APIS)
    if settings.needs_build:
        apis += BUILD_APIS
    if settings.translation:
        apis += TRANSLATION_APIS
    if settings.on_cloud_run:
        apis += CLOUD_RUN_APIS
    return apis


def enable_apis(settings: Settings) -> list[gcp.projects.Service]:
    """One Service per API; left enabled on destroy (other workloads may use them)."""
    import pulumi_gcp as gcp

    return [
        gcp.projects.Service(
            f"api-{api.split('.')[0]}",
            project=settings.project,
            service=api,
            disable_on_destroy=False,
            disable_dependent_services=False,
        )
        for api in required_apis(settings)
    ]

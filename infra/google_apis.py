"""Calls to Google Cloud APIs made outside Pulumi's providers (the preflight checks and
`scripts/vm move`): Compute through google-cloud-compute, the small JSON APIs (Cloud
Billing, Service Usage, Resource Manager) over REST with the same credentials.

Credentials are Application Default Credentials, the ones the Pulumi Google provider uses.
`TEXT2IMG_GOOGLE_ENDPOINT` sends every call to one other base URL with anonymous
credentials (the tests' fake server on loopback). No pulumi import: scripts/vm uses it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import google.auth
import requests
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError
from google.auth.transport.requests import AuthorizedSession
from google.cloud import compute_v1

ENDPOINT_ENV = "TEXT2IMG_GOOGLE_ENDPOINT"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
REST_BASES = {
    "billing": "https://cloudbilling.googleapis.com",
    "serviceusage": "https://serviceusage.googleapis.com",
    "resourcemanager": "https://cloudresourcemanager.googleapis.com",
    "cloudquotas": "https://cloudquotas.googleapis.com",
}
TIMEOUT_S = 20.0


class GoogleApiError(Exception):
    """A call failed; `status` is the HTTP status (0: no answer), the text says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class NoCredentials(Exception):
    """No Application Default Credentials on this machine."""


@dataclass
class GoogleApis:
    """Clients for one endpoint (Google's, or a test's) with one set of credentials."""

    endpoint: str | None = None
    credentials: Credentials | None = None
    _session: AuthorizedSession | None = field(default=None, repr=False)

    @classmethod
    def from_environment(cls) -> GoogleApis:
        endpoint = os.environ.get(ENDPOINT_ENV) or None
        if endpoint:
            return cls(endpoint.rstrip("/"), AnonymousCredentials())
        try:
            credentials, _ = google.auth.default(scopes=list(SCOPES))
        except (DefaultCredentialsError, GoogleAuthError) as exc:
            raise NoCredentials(
                "no Google credentials: run `gcloud auth application-default login`"
            ) from exc
        return cls(None, credentials)

    # -- Compute (google-cloud-compute) ------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        if self.endpoint:
            return {
                "client_options": ClientOptions(api_endpoint=self.endpoint),
                "credentials": self.credentials,
            }
        return {"credentials": self.credentials}

    def regions(self) -> compute_v1.RegionsClient:
        return compute_v1.RegionsClient(**self._options())

    def projects(self) -> compute_v1.ProjectsClient:
        return compute_v1.ProjectsClient(**self._options())

    def accelerator_types(self) -> compute_v1.AcceleratorTypesClient:
        return compute_v1.AcceleratorTypesClient(**self._options())

    def instances(self) -> compute_v1.InstancesClient:
        return compute_v1.InstancesClient(**self._options())

    def disks(self) -> compute_v1.DisksClient:
        return compute_v1.DisksClient(**self._options())

    def snapshots(self) -> compute_v1.SnapshotsClient:
        return compute_v1.SnapshotsClient(**self._options())

    def zone_operations(self) -> compute_v1.ZoneOperationsClient:
        return compute_v1.ZoneOperationsClient(**self._options())

    # -- REST (Cloud Billing, Service Usage, Resource Manager) ---------------------------------

    def rest(
        self, api: str, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """JSON of `method base(api)+path`; GoogleApiError with Google's message on failure."""
        if self._session is None:
            self._session = AuthorizedSession(self.credentials)
        url = (self.endpoint or REST_BASES[api]) + path
        try:
            resp = self._session.request(method, url, json=body, timeout=TIMEOUT_S)
        except (requests.RequestException, GoogleAuthError) as exc:
            raise GoogleApiError(0, f"{url} did not answer: {exc}") from exc
        try:
            data = resp.json() if resp.content else {}
        except ValueError:
            data = {}
        if resp.status_code >= 400:
            error = data.get("error", {}) if isinstance(data, dict) else {}
            message = error.get("message") or resp.reason or f"HTTP {resp.status_code}"
            raise GoogleApiError(resp.status_code, str(message))
        return data if isinstance(data, dict) else {}

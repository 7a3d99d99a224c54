"""Backend `cloudrun`: a private Cloud Run service with one L4 GPU per instance.

There is nothing to start: Cloud Run starts an instance for the first request after a
quiet spell (about 5 s for the instance, then the model load; the instance gets no request
before its startup probe, the service's `/startup`, passes). So `start()` does nothing and
`state()` looks whether an instance answers `/startup` within `probe_timeout_s`: then `Up`;
if the probe waits, Cloud Run is starting one (`Starting`: phase `starting` for the first
`INSTANCE_START_S`, then `loading_model`), and the gateway answers 503 + Retry-After with
that phase while its probe's request keeps the start going.

Every request to the service carries a Google-signed ID token whose audience is the
service's URL (cloud.google.com/run/docs/authenticating/service-to-service), in
`X-Serverless-Authorization`: Cloud Run checks that header when present and leaves
`Authorization` to the app, which still checks the user's bearer token
(GoogleCloudPlatform/cloud-run-proxy#25). The token comes from google-auth's ID-token
credentials (on Cloud Run: the metadata server) and is refreshed `REFRESH_BEFORE_S` before
it expires (Google's ID tokens last an hour).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC

import httpx

from text2img.gateway.backend import BackendFailure, BackendState, Failed, Starting, Up

log = logging.getLogger("text2img.gateway")

REFRESH_BEFORE_S = 300.0
INSTANCE_START_S = 10.0  # Google: an L4 instance starts in about 5 s; then the model loads
STARTUP_PATH = "/startup"  # open, 200 only once the model is loaded (infra/cloudrun.py)
ID_TOKEN_HEADER = "X-Serverless-Authorization"  # noqa: S105 (a header name)

TokenSource = Callable[[str], tuple[str, float]]  # audience -> (token, expiry wall time)


def google_id_token(audience: str) -> tuple[str, float]:
    """An ID token for `audience` from google-auth (the metadata server on Cloud Run)."""
    import google.auth.transport.requests
    import google.oauth2.id_token

    request = google.auth.transport.requests.Request()
    credentials = google.oauth2.id_token.fetch_id_token_credentials(audience, request=request)
    credentials.refresh(request)
    expiry = credentials.expiry  # naive UTC (google-auth's convention)
    expires = expiry.replace(tzinfo=UTC).timestamp() if expiry else time.time() + 3600
    return str(credentials.token), expires


class CloudRunBackend:
    """`text2img.gateway.backend.Backend` for a private Cloud Run GPU service at `url`."""

    def __init__(
        self,
        url: str,
        *,
        token_source: TokenSource | None = None,
        probe_timeout_s: float = 3.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.url = url.rstrip("/")
        self.audience = self.url  # Cloud Run accepts the service URL as the audience
        self._source = token_source or google_id_token
        self._probe_timeout_s = probe_timeout_s
        self._wall = wall
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()
        self._cold_since: float | None = None  # wall time a probe first found no instance

    def id_token(self) -> str:
        """A valid ID token, fetched again when less than REFRESH_BEFORE_S is left."""
        with self._lock:
            if self._token is None or self._expires - self._wall() < REFRESH_BEFORE_S:
                try:
                    self._token, self._expires = self._source(self.audience)
                except Exception as exc:
                    raise BackendFailure(
                        "NO_ID_TOKEN",
                        "the gateway could not get a Google ID token to call the GPU service "
                        f"({type(exc).__name__}: {exc}); on Cloud Run it comes from the "
                        "metadata server: check the gateway's service account",
                    ) from exc
                log.info("fetched an ID token for %s", self.audience)
            return self._token

    def upstream_headers(self) -> Mapping[str, str]:
        return {ID_TOKEN_HEADER: f"Bearer {self.id_token()}"}

    def state(self) -> BackendState:
        headers = self.upstream_headers()
        try:
            resp = httpx.get(
                f"{self.url}{STARTUP_PATH}", headers=headers, timeout=self._probe_timeout_s
            )
        except httpx.TimeoutException:
            return self._starting()  # Cloud Run holds the probe while an instance starts
        except httpx.HTTPError as exc:
            raise BackendFailure(
                "UNREACHABLE", f"the GPU service at {self.url} did not answer ({exc})"
            ) from exc
        if resp.status_code == 200:
            self._cold_since = None
            return Up(self.url, None)
        if resp.status_code in (401, 403):
            return Failed(
                "INVOKER_DENIED",
                f"the GPU service refused the gateway's ID token ({resp.status_code}): the "
                "gateway's service account needs roles/run.invoker on it (`pulumi up` grants "
                "it; a new grant takes a minute to apply)",
                lasting=False,
            )
        if resp.status_code == 429:
            return Starting(
                "queued",
                None,
                "every GPU instance (maxGpus) is busy and Cloud Run is not starting another; "
                "retry in a few seconds, or raise maxGpus",
            )
        return self._starting()  # 503 from a starting instance, or Cloud Run's own

    def _starting(self) -> Starting:
        now = self._wall()
        if self._cold_since is None or now - self._cold_since > 900:
            self._cold_since = now
        waited = now - self._cold_since
        if waited < INSTANCE_START_S:
            return Starting(
                "starting", self._cold_since, "Cloud Run is starting a GPU instance (estimate)"
            )
        return Starting(
            "loading_model",
            self._cold_since,
            "a GPU instance has started and the service is loading the model (estimate)",
        )

    def start(self) -> None:
        """Nothing to do: the probe's own request makes Cloud Run start an instance."""

    def start_failure(self, *, ended_asleep: bool) -> Failed | None:
        return None

"""The service's front door: `text2img.http_guard.RequestGuard` with the service's settings.

Which paths are open, activity or waking is `text2img.front_door`'s table (shared with
the gateway); only `GET`/`HEAD` of `/healthz`, the web page and its static files are open,
every other request, unknown paths included, needs the token before anything reads the
request body.
"""

from __future__ import annotations

from collections.abc import Callable

from text2img.auth import FailureThrottle
from text2img.front_door import MAX_BODY_BYTES
from text2img.http_guard import GuardPolicy
from text2img.settings import Settings


def service_policy(
    settings: Settings,
    token: str | None,
    throttle: FailureThrottle,
    on_auth_failure: Callable[[], None],
) -> GuardPolicy:
    """The guard's policy from the service's settings."""
    return GuardPolicy(
        token=token,
        throttle=throttle,
        trust_forwarded=settings.trust_forwarded,
        max_body_bytes=MAX_BODY_BYTES,
        body_timeout_s=settings.body_timeout_s,
        on_auth_failure=on_auth_failure,
    )

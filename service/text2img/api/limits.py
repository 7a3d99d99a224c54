"""The service's front door: `text2img.http_guard.RequestGuard` with the service's own
error shapes (OpenAI's JSON) and its open paths.

Only `GET /healthz`, the web page and its static files are open; every other path, unknown
ones included, needs the token before anything reads the request body.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import Response

from text2img.api.errors import ApiError, error_response
from text2img.auth import FailureThrottle
from text2img.http_guard import MAX_BODY_BYTES, GuardPolicy, Refusal
from text2img.settings import Settings

OPEN_PATHS = frozenset({"/healthz", "/", "/favicon.ico"})
UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="text2img"'}


def is_open(path: str) -> bool:
    """Paths served without a token: liveness and the web UI's files."""
    return path in OPEN_PATHS or path.startswith("/static/")


def refusal_response(refusal: Refusal, retry_after: int | None) -> Response:
    """The JSON error a client gets when the guard answers instead of the app."""
    if refusal is Refusal.THROTTLED:
        seconds = retry_after or 1
        return error_response(
            ApiError(
                429,
                "too many failed authentication attempts from this client; retry after "
                f"{seconds} s",
                type="rate_limit_error",
                code="auth_throttled",
                headers={"Retry-After": str(seconds)},
            )
        )
    if refusal in (Refusal.NO_CREDENTIAL, Refusal.BAD_CREDENTIAL):
        message = (
            "missing API token: send `Authorization: Bearer <token>`"
            if refusal is Refusal.NO_CREDENTIAL
            else "the API token is wrong: check TEXT2IMG_API_TOKEN / the token `pulumi up` printed"
        )
        return error_response(
            ApiError(
                401,
                message,
                type="authentication_error",
                code="invalid_api_key",
                headers=UNAUTHORIZED_HEADERS,
            )
        )
    if refusal is Refusal.TOO_LARGE:
        return error_response(
            ApiError(
                413,
                f"the request body is larger than {MAX_BODY_BYTES} bytes; a generation "
                "request is a small JSON object",
                code="body_too_large",
            )
        )
    return error_response(
        ApiError(
            408,
            "the request body did not arrive in time; send it in one go",
            code="body_timeout",
        )
    )


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
        is_open=is_open,
        respond=refusal_response,
        trust_forwarded=settings.trust_forwarded,
        max_body_bytes=MAX_BODY_BYTES,
        body_timeout_s=settings.body_timeout_s,
        on_auth_failure=on_auth_failure,
    )

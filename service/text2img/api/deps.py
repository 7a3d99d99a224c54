"""FastAPI dependencies (used through `Annotated` aliases)."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import Depends, Request

from text2img.api.errors import ApiError
from text2img.api.scheduler import Scheduler
from text2img.api.state import ServiceState
from text2img.auth import bearer_from_header, token_matches


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


State = Annotated[ServiceState, Depends(get_state)]


def client_key(request: Request) -> str:
    """The throttle's key for this client, as the request guard resolved it."""
    key = getattr(request.state, "client", None)
    if isinstance(key, str):
        return key
    return request.client.host if request.client else "unknown"


def require_token(request: Request, state: State) -> None:
    """Bearer token check (constant time) with throttling of repeated failures."""
    if state.token is None:
        return
    client = client_key(request)
    request.state.auth_failed = True  # until proven otherwise: not user activity
    wait = state.throttle.retry_after(client)
    if wait is not None:
        seconds = max(1, math.ceil(wait))
        raise ApiError(
            429,
            f"too many failed authentication attempts from this client; retry after {seconds} s",
            type="rate_limit_error",
            code="auth_throttled",
            headers={"Retry-After": str(seconds)},
        )
    presented = bearer_from_header(request.headers.get("authorization"))
    if token_matches(presented, state.token):
        state.throttle.success(client)
        request.state.auth_failed = False
        return
    state.throttle.failure(client)
    state.metrics.auth_failures.inc()
    message = (
        "missing API token: send `Authorization: Bearer <token>`"
        if presented is None
        else "the API token is wrong: use TEXT2IMG_API_TOKEN's value (locally) or, for the "
        "cloud, the output of `pulumi stack output token --show-secrets`"
    )
    raise ApiError(
        401,
        message,
        type="authentication_error",
        code="invalid_api_key",
        headers={"WWW-Authenticate": 'Bearer realm="text2img"'},
    )


Authorized = Depends(require_token)


def get_scheduler(state: State) -> Scheduler:
    """The scheduler once the model is loaded, else 503 (with the phase, like /readyz)."""
    if state.scheduler is not None:
        return state.scheduler
    if state.load_error is not None:
        raise ApiError(
            503,
            f"the model failed to load: {state.load_error}",
            type="unavailable",
            code="model_failed",
            extra={"phase": "failed"},
        )
    raise ApiError(
        503,
        "the model is still loading; retry in a few seconds",
        type="unavailable",
        code="waking",
        headers={"Retry-After": "5"},
        extra={"phase": "loading_model", "retry_after": 5},
    )


ReadyScheduler = Annotated[Scheduler, Depends(get_scheduler)]

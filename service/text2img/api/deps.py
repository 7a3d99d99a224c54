"""FastAPI dependencies (used through `Annotated` aliases).

The token is checked once, by the request guard in front of every route
(`text2img.http_guard`, the table in `text2img.front_door`), not here.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from text2img.api.errors import ApiError
from text2img.api.scheduler import Scheduler
from text2img.api.state import ServiceState


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


State = Annotated[ServiceState, Depends(get_state)]


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

"""Health, readiness, status (read by the VM's autostop and the gateway) and metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from text2img.api.deps import State
from text2img.api.schemas import StatusOut

router = APIRouter(tags=["system"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness (no auth): the process answers."""
    return {"status": "ok"}


@router.get("/startup")
async def startup(state: State) -> JSONResponse:
    """Startup probe (no auth): 200 once the model is loaded, else 503. Cloud Run sends an
    instance no request before this passes (infra/cloudrun.py); it says nothing else."""
    return JSONResponse({"started": state.ready}, status_code=200 if state.ready else 503)


# /v1/ready is the same check under a path that Cloud Run passes through: Cloud Run
# reserves some paths ending in "z", so clients that go through the gateway use it.
@router.get("/v1/ready")
@router.get("/readyz")
async def readyz(state: State) -> JSONResponse:
    """200 once the model is loaded, else 503 with the phase (loading_model | failed)."""
    if state.ready:
        return JSONResponse({"ready": True, "model": state.model_name})
    body: dict[str, object] = {"ready": False, "phase": state.phase}
    if state.load_error:
        body["message"] = state.load_error
    headers = {} if state.load_error else {"Retry-After": "5"}
    return JSONResponse(body, status_code=503, headers=headers)


@router.get("/v1/status", response_model=StatusOut)
async def status(state: State) -> StatusOut:
    """Idle seconds, jobs in flight, queue depth; polling it is not activity."""
    scheduler = state.scheduler
    return StatusOut(
        ready=state.ready,
        model=state.model_name or state.settings.model,
        idle_seconds=round(state.idle_seconds(), 3),
        jobs_in_flight=scheduler.jobs_in_flight if scheduler else 0,
        queue_depth=scheduler.queue_depth if scheduler else 0,
        started_at=state.activity.started_at,
        last_activity_at=state.activity.last_activity_at,
    )


@router.get("/metrics", response_class=Response)
async def metrics(state: State) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

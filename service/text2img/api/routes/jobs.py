"""The job API the web UI uses: submit, follow progress (server-sent events), fetch, cancel.

POST   /v1/jobs               same body as /v1/images/generations -> 202 job
GET    /v1/jobs/{id}          the job; `data` (the images) once it succeeded
GET    /v1/jobs/{id}/events   text/event-stream: `queued`, `progress`, then `done`
DELETE /v1/jobs/{id}          cancel (a queued job never runs; a running one stops)

`router(spec)` builds the routes for the served engine (the body has its options); no
`from __future__ import annotations`, as in `images`.
"""

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.responses import StreamingResponse

from text2img.api.deps import ReadyScheduler, State
from text2img.api.errors import ApiError
from text2img.api.failures import job_error
from text2img.api.generation import create_job, image_data
from text2img.api.jobs import Job, JobState
from text2img.api.scheduler import Scheduler
from text2img.api.schemas import (
    ERROR_RESPONSES,
    ErrorDetail,
    ImageGenerationRequest,
    JobOut,
    JobProgressOut,
    request_model,
)
from text2img.engines.base import EngineSpec

JobId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
KEEPALIVE_S = 15.0


def _job_out(job: Job, scheduler: Scheduler, model: str, *, images: bool) -> JobOut:
    error = job_error(job)
    return JobOut(
        id=job.id,
        status=job.state.value,
        created=int(job.created),
        n=job.n,
        revised_prompt=job.prompt,
        progress=JobProgressOut(**job.progress.as_dict()),
        queue_position=scheduler.queue_position(job),
        model=model,
        error=None
        if error is None
        else ErrorDetail(
            message=error.message, type=error.type, param=error.param, code=error.code
        ),
        data=image_data(job) if images and job.state is JobState.SUCCEEDED else None,
    )


def _find(state: State, job_id: str) -> Job:
    job = state.jobs.get(job_id)
    if job is None:
        raise ApiError(
            404,
            f"no job {job_id!r} (finished jobs are kept {state.settings.job_ttl_s:.0f} s)",
            type="not_found_error",
            code="job_not_found",
            param="job_id",
        )
    return job


def jobs_served(state: State) -> None:
    """400 where the job API is off (several instances: a follow-up may reach another)."""
    if not state.settings.job_api:
        raise ApiError(
            400,
            "the job API is off here: this service runs on several instances, and a job's "
            "follow-up requests may reach another one; send the same body to POST "
            "/v1/images/generations with stream: true (progress and images in one response)",
            code="job_api_unavailable",
        )


def router(spec: EngineSpec) -> APIRouter:
    """The job routes, the submitted body built from `spec`'s options."""
    body_type = request_model(spec)
    out = APIRouter(
        prefix="/v1/jobs",
        tags=["jobs"],
        dependencies=[Depends(jobs_served)],
        responses=ERROR_RESPONSES,
    )

    @out.post("", status_code=202, response_model=JobOut)
    async def submit_job(body: body_type, state: State, scheduler: ReadyScheduler) -> JobOut:  # type: ignore[valid-type]
        """Queue a generation and return at once; follow it with /events."""
        return await submit(body, state, scheduler)

    out.add_api_route("/{job_id}", get_job, methods=["GET"], response_model=JobOut)
    out.add_api_route("/{job_id}", cancel_job, methods=["DELETE"], response_model=JobOut)
    out.add_api_route(
        "/{job_id}/events",
        job_events,
        methods=["GET"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "progress events"}},
    )
    return out


async def submit(body: ImageGenerationRequest, state: State, scheduler: ReadyScheduler) -> JobOut:
    if body.stream:
        raise ApiError(
            400,
            "stream applies to POST /v1/images/generations; a job is followed with GET "
            "/v1/jobs/{id}/events instead",
            param="stream",
            code="unsupported_parameter",
        )
    job = await create_job(state, scheduler, body)
    state.jobs.add(job)
    return _job_out(job, scheduler, state.model_name, images=False)


async def get_job(job_id: JobId, state: State, scheduler: ReadyScheduler) -> JobOut:
    """The job's state, progress and, once it succeeded, its images."""
    return _job_out(_find(state, job_id), scheduler, state.model_name, images=True)


async def cancel_job(job_id: JobId, state: State, scheduler: ReadyScheduler) -> JobOut:
    """Cancel the job (no effect once it is finished)."""
    job = _find(state, job_id)
    if not job.finished:
        scheduler.cancel(job)
        await job.wait_done(5.0)
    return _job_out(job, scheduler, state.model_name, images=False)


async def job_events(job_id: JobId, state: State, scheduler: ReadyScheduler) -> StreamingResponse:
    """Server-sent events until the job finishes (then fetch it with GET /v1/jobs/{id})."""
    job = _find(state, job_id)

    async def stream() -> AsyncIterator[str]:
        yield "retry: 1000\n\n"
        seen = -1
        while True:
            if job.seq != seen:
                seen = job.seq
                out = _job_out(job, scheduler, state.model_name, images=False)
                event = {"queued": "queued", "running": "progress"}.get(out.status, "done")
                data = json.dumps(out.model_dump(exclude_none=True), ensure_ascii=False)
                yield f"event: {event}\ndata: {data}\n\n"
                if job.finished:
                    return
            if not await job.wait_change(seen, KEEPALIVE_S):
                yield ": keep-alive\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )

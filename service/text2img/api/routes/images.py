"""POST /v1/images/generations: OpenAI Images API compatible (b64_json)."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request

from text2img.api.deps import ReadyScheduler, State
from text2img.api.errors import ApiError
from text2img.api.generation import create_job, image_data
from text2img.api.jobs import JobState
from text2img.api.schemas import ERROR_RESPONSES, ImageGenerationRequest, ImagesResponse

router = APIRouter(prefix="/v1/images", tags=["images"], responses=ERROR_RESPONSES)

DISCONNECT_POLL_S = 0.25


@router.post("/generations", response_model=ImagesResponse)
async def create_images(
    body: ImageGenerationRequest, request: Request, state: State, scheduler: ReadyScheduler
) -> ImagesResponse:
    """Draw `n` images of `prompt`; the English actually drawn is in `revised_prompt`."""
    job = await create_job(state, scheduler, body)
    try:
        while not job.finished:
            await job.wait_change(job.seq, DISCONNECT_POLL_S)
            scheduler.expire_if_due(job)
            if not job.finished and await request.is_disconnected():
                scheduler.cancel(job)
                # drop the job now; the worker stops it before its next model call
                raise ApiError(499, "the client went away", code="client_closed_request")
    except asyncio.CancelledError:
        scheduler.cancel(job)
        raise
    if job.state is not JobState.SUCCEEDED:
        assert job.error is not None or job.state is JobState.CANCELLED
        if job.error is not None:
            raise ApiError.from_job(job.error)
        raise ApiError(409, "the request was cancelled", code="cancelled")
    return ImagesResponse(
        created=int(time.time()),
        data=image_data(job),
        model=state.model_name,
        size=job.size,
        output_format=job.output_format,
    )

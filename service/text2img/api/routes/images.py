"""POST /v1/images/generations: OpenAI Images API compatible (b64_json).

`router(spec)` builds the route for the served engine, so the body (and the OpenAPI
schema) has that engine's options. No `from __future__ import annotations` here: FastAPI
reads the body's type from the handler's signature, and it is a local class.
"""

import asyncio
import time

from fastapi import APIRouter, Request, Response

from text2img.api.deps import ReadyScheduler, State
from text2img.api.errors import ApiError
from text2img.api.failures import job_error
from text2img.api.generation import create_job, image_data
from text2img.api.jobs import JobState
from text2img.api.schemas import (
    ERROR_RESPONSES,
    ImageGenerationRequest,
    ImagesResponse,
    request_model,
)
from text2img.api.streaming import stream_response
from text2img.engines.base import EngineSpec

DISCONNECT_POLL_S = 0.25


def router(spec: EngineSpec) -> APIRouter:
    """The images route, its body built from `spec`'s options."""
    body_type = request_model(spec)
    out = APIRouter(prefix="/v1/images", tags=["images"], responses=ERROR_RESPONSES)

    @out.post("/generations", response_model=ImagesResponse)
    async def create_images(
        body: body_type,  # type: ignore[valid-type]
        request: Request,
        state: State,
        scheduler: ReadyScheduler,
    ) -> ImagesResponse | Response:
        """Draw `n` images of `prompt`; the English actually drawn is in `revised_prompt`.

        With `stream: true` the answer is server-sent events as OpenAI streams images
        (`image_generation.partial_image`, `image_generation.completed`; see
        text2img.api.streaming)."""
        if body.stream:  # type: ignore[attr-defined]
            job = await create_job(state, scheduler, body)
            return stream_response(job, request, scheduler)
        return await generate(body, request, state, scheduler)

    return out


async def generate(
    body: ImageGenerationRequest, request: Request, state: State, scheduler: ReadyScheduler
) -> ImagesResponse:
    """Queue the job, wait for it (cancelling it when the client goes away), answer."""
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
        error = job_error(job)
        assert error is not None or job.state is JobState.CANCELLED
        if error is not None:
            raise ApiError.from_job(error)
        raise ApiError(409, "the request was cancelled", code="cancelled")
    return ImagesResponse(
        created=int(time.time()),
        data=image_data(job),
        model=state.model_name,
        size=job.size,
        output_format=job.output_format,
    )

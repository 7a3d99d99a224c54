"""`stream: true` on POST /v1/images/generations: OpenAI's Images API streaming.

Server-sent events, each `event: TYPE` with a JSON `data` whose `type` is TYPE:

- `image_generation.partial_image`: b64_json, background, created_at, output_format,
  partial_image_index, quality, size (openai-python `ImageGenPartialImageEvent`);
- `image_generation.completed`: b64_json, background, created_at, output_format, quality,
  size, usage (`ImageGenCompletedEvent`), one per image, in order;
- `text2img.progress`: ours (stage, step, total, fraction, queue_position); SDKs yield it
  as an event of an unknown type, which code that looks at `event.type` passes over;
- `error`: `{"type": "error", "error": {message, type, code, param}}`, the last event when
  the generation fails after the stream began (the SDKs raise `APIError` on a data object
  with an `error` member).

Extensions on the image events: `image_index` (which of the n images), `seed`,
`revised_prompt` and `prompt_truncated` (completed only). Everything a generation needs
happens inside this one response, so no follow-up request has to reach the same instance
(Cloud Run has no instance affinity). When the client goes away the job is cancelled.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from PIL import Image

from text2img.api.encoding import encode_image
from text2img.api.failures import job_error
from text2img.api.jobs import Job, JobState, Partial
from text2img.api.scheduler import Scheduler

PARTIAL = "image_generation.partial_image"
COMPLETED = "image_generation.completed"
PROGRESS = "text2img.progress"
ERROR = "error"
POLL_S = 0.25  # how often a quiet stream looks whether its client is still there
KEEPALIVE_S = 15.0  # a comment line on a quiet stream, so proxies keep it open
ZERO_USAGE = {
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "total_tokens": 0,
}
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _common(job: Job) -> dict[str, Any]:
    return {
        "background": "opaque",
        "created_at": int(time.time()),
        "output_format": job.output_format,
        "quality": "auto",
        "size": job.size,
    }


def encode_partial(job: Job, partial: Partial) -> bytes:
    """A partial image at the size the final one will have, in the job's format."""
    image: Image.Image = partial.image
    width, _, height = job.size.partition("x")
    size = (int(width), int(height)) if width.isdigit() and height.isdigit() else image.size
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return encode_image(image, job.output_format, job.output_compression)


def partial_event(job: Job, partial: Partial, data: bytes) -> bytes:
    return sse(
        PARTIAL,
        {
            "type": PARTIAL,
            "b64_json": base64.b64encode(data).decode("ascii"),
            **_common(job),
            "partial_image_index": partial.partial_index,
            "image_index": partial.index,
            "seed": job.seeds[partial.index],
        },
    )


def completed_events(job: Job) -> list[bytes]:
    out = []
    for index, (data, used) in enumerate(zip(job.images, job.prompts_used, strict=True)):
        if data is None:
            continue
        out.append(
            sse(
                COMPLETED,
                {
                    "type": COMPLETED,
                    "b64_json": base64.b64encode(data).decode("ascii"),
                    **_common(job),
                    "usage": ZERO_USAGE,
                    "image_index": index,
                    "seed": job.seeds[index],
                    "revised_prompt": used if used is not None else job.prompt,
                    "prompt_truncated": used is not None,
                },
            )
        )
    return out


def error_event(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    error = {"message": message, "type": type_, "code": code, "param": param}
    return sse(ERROR, {"type": ERROR, "error": error})


def progress_event(job: Job, scheduler: Scheduler) -> bytes:
    return sse(
        PROGRESS,
        {
            "type": PROGRESS,
            **job.progress.as_dict(),
            "queue_position": scheduler.queue_position(job),
            "n": job.n,
        },
    )


async def events(job: Job, request: Request, scheduler: Scheduler) -> AsyncIterator[bytes]:
    """The stream of one job: progress and partial images while it runs, then its images
    (or an error event); cancels the job when the client goes away or the stream is
    dropped."""
    seen_partials = 0
    last_progress: tuple[dict[str, Any], int | None] | None = None
    last_sent = time.monotonic()
    try:
        while True:
            seq = job.seq
            state = (job.progress.as_dict(), scheduler.queue_position(job))
            if state != last_progress:
                last_progress = state
                yield progress_event(job, scheduler)
                last_sent = time.monotonic()
            while seen_partials < len(job.partials):
                partial = job.partials[seen_partials]
                seen_partials += 1
                data = await asyncio.to_thread(encode_partial, job, partial)
                yield partial_event(job, partial, data)
                last_sent = time.monotonic()
            if job.finished:
                break
            await job.wait_change(seq, POLL_S)
            scheduler.expire_if_due(job)
            if not job.finished and await request.is_disconnected():
                scheduler.cancel(job)
                return
            if time.monotonic() - last_sent > KEEPALIVE_S:
                yield b": keep-alive\n\n"
                last_sent = time.monotonic()
        if job.state is JobState.SUCCEEDED:
            for event in completed_events(job):
                yield event
            return
        error = job_error(job)
        if error is None:  # cancelled by someone else (DELETE, shutdown)
            yield error_event("the request was cancelled", "invalid_request_error", "cancelled")
        else:
            yield error_event(error.message, error.type, error.code, error.param)
    finally:
        if not job.finished:  # the client went away mid-stream (generator closed)
            scheduler.cancel(job)


def stream_response(job: Job, request: Request, scheduler: Scheduler) -> StreamingResponse:
    return StreamingResponse(
        events(job, request, scheduler), media_type="text/event-stream", headers=HEADERS
    )

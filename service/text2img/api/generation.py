"""From a request body to a queued job, shared by the images and the jobs routes."""

from __future__ import annotations

import asyncio
import base64
import secrets

from text2img.api.errors import ApiError
from text2img.api.jobs import Job
from text2img.api.scheduler import QueueFull, Scheduler, SchedulerStopped
from text2img.api.schemas import MAX_REQUEST_SEED, ImageData, ImageGenerationRequest
from text2img.api.state import ServiceState
from text2img.engines import registry
from text2img.engines.base import EngineSettings, EngineSpec, InvalidSetting
from text2img.front_door import jittered
from text2img.translate import Mode, Translation, TranslationError, TranslationRefused


async def translate(state: ServiceState, text: str, mode: Mode, param: str) -> Translation:
    """Translate off the event loop; 400 when refused, 424 when the API fails.

    424 (Failed Dependency), not 502: OpenAI's SDKs retry 408, 409, 429 and every 5xx
    (openai-python `_should_retry`), and a missing Cloud Translation setup or a refused
    request does not heal in the seconds between retries; the translator already retried
    Google's transient 429/503 itself. `x-should-retry: false` says the same to SDKs that
    read it.
    """
    try:
        result = await asyncio.to_thread(state.translator.translate, text, mode)
    except TranslationRefused as exc:
        state.metrics.translations.labels("refused").inc()
        raise ApiError(400, str(exc), param=param, code="untranslatable_prompt") from exc
    except TranslationError as exc:
        state.metrics.translations.labels("failed").inc()
        raise ApiError(
            424,
            str(exc),
            type="upstream_error",
            code="translation_failed",
            param=param,
            headers={"x-should-retry": "false"},
        ) from exc
    state.metrics.translations.labels("translated" if result.translated else "passed").inc()
    return result


def engine_settings(spec: EngineSpec, body: ImageGenerationRequest) -> tuple[str, EngineSettings]:
    """(size drawn, the engine's frozen settings) for this body; 400 naming the field."""
    if body.model is not None and body.model != spec.name:
        raise ApiError(
            400,
            f"model {body.model!r} is not served here; this service draws with {spec.name!r} "
            "(GET /v1/models), so leave model out or set it to that",
            param="model",
            code="model_not_found",
        )
    if body.output_compression is not None and body.output_format == "png":
        raise ApiError(
            400,
            "output_compression applies to jpeg and webp only (png is lossless); leave it "
            "out or set output_format",
            param="output_compression",
            code="unsupported_parameter",
        )
    for key in body.model_extra or {}:
        if key not in registry.options_by_name():  # not an option of any model: a typo
            raise ApiError(
                400,
                f"{key}: is not a field this endpoint accepts (check the spelling)",
                param=key,
                code="invalid_value",
            )
    options = body.engine_options()
    try:
        spec.check_option_names(options)
        size = spec.resolve_size(body.size)
        settings = spec.settings(size=body.size, **options)
    except InvalidSetting as exc:
        raise ApiError(400, str(exc), param=exc.param, code=exc.code) from exc
    return size, settings


async def create_job(
    state: ServiceState, scheduler: Scheduler, body: ImageGenerationRequest
) -> Job:
    """Validate, translate and queue; raises ApiError (400, 424, 429, 503)."""
    if body.response_format == "url":
        raise ApiError(
            400,
            "response_format 'url' is not supported: this service keeps no images, so they "
            "come back inline; use response_format 'b64_json'",
            param="response_format",
            code="unsupported_response_format",
        )
    if body.partial_images and not body.stream:
        raise ApiError(
            400,
            "partial_images applies to streamed generations only: set stream: true, or "
            "leave partial_images out",
            param="partial_images",
            code="unsupported_parameter",
        )
    size, settings = engine_settings(state.spec, body)
    if scheduler.queue_depth >= scheduler.queue_limit:  # refuse before paying to translate
        raise _queue_full(state, scheduler, scheduler.retry_after())
    translation = await translate(state, body.prompt, body.translate, "prompt")
    first = body.seed if body.seed is not None else secrets.randbelow(MAX_REQUEST_SEED + 1)
    job = Job(
        prompt=translation.text,
        settings=settings,
        # image i uses seed+i, wrapping past the largest accepted seed to 0 so that every
        # returned seed can be sent again (4294967295 with n=3: 4294967295, 0, 1)
        seeds=[(first + i) % (MAX_REQUEST_SEED + 1) for i in range(body.n)],
        timeout_s=state.settings.request_timeout_s,
        size=size,
        output_format=body.output_format,
        output_compression=body.output_compression,
        partial_images=(body.partial_images or 0) if body.stream else 0,
    )
    job.bind_loop(asyncio.get_running_loop())
    try:
        scheduler.submit(job)
    except QueueFull as exc:
        raise _queue_full(state, scheduler, exc.retry_after) from exc
    except SchedulerStopped as exc:
        raise ApiError(503, str(exc), type="unavailable", code="shutting_down") from exc
    return job


def _queue_full(state: ServiceState, scheduler: Scheduler, estimate: int) -> ApiError:
    """429 with the wait for what is queued ahead, jittered: a crowd refused together is
    told different waits, so its retries do not all arrive in the same second."""
    state.metrics.rejected.inc()
    retry_after = jittered(estimate)
    return ApiError(
        429,
        f"the GPU queue is full ({scheduler.queue_limit} requests waiting); retry after "
        f"{retry_after} s",
        type="rate_limit_error",
        code="queue_full",
        headers={"Retry-After": str(retry_after)},
    )


def image_data(job: Job) -> list[ImageData]:
    """Each image with the text actually drawn: the engine's cut of the prompt when it
    had to shorten it (then `prompt_truncated`), else the whole English prompt."""
    return [
        ImageData(
            b64_json=base64.b64encode(data).decode("ascii"),
            revised_prompt=used if used is not None else job.prompt,
            prompt_truncated=used is not None,
            seed=seed,
        )
        for data, used, seed in zip(job.images, job.prompts_used, job.seeds, strict=True)
        if data is not None
    ]

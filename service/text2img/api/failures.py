"""What a client is told when the queue gave up on a job: failure kind -> HTTP status + error.

The queue (`api.scheduler`) records why a job failed as a `jobs.Failure`, without HTTP;
this table is the one place that decides the status, type and code each kind answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from text2img.api.jobs import Failure, FailureKind, Job


@dataclass(frozen=True)
class JobError:
    """An OpenAI-style error the HTTP layer returns as is."""

    status: int
    message: str
    type: str = "server_error"
    code: str | None = None
    param: str | None = None


_FIXED = {
    FailureKind.OUT_OF_MEMORY: JobError(
        503,
        "the GPU ran out of memory even for a single image; retry later, or use a smaller "
        "size or fewer steps",
        "server_error",
        "gpu_out_of_memory",
    ),
    FailureKind.INTERNAL: JobError(
        500,
        "image generation failed inside the service; see the service log",
        "server_error",
        "generation_failed",
    ),
    FailureKind.SHUTDOWN: JobError(
        503, "the service is shutting down; retry in a moment", "unavailable", "shutting_down"
    ),
}


def error_of(failure: Failure, job: Job) -> JobError:
    """The answer for a job that ended with `failure`."""
    if failure.kind is FailureKind.TIMEOUT:
        return JobError(
            504,
            f"the request ran past the service's time limit of {job.timeout_s:.0f} s "
            "(TEXT2IMG_REQUEST_TIMEOUT_S); ask for fewer images or steps, or retry when the "
            "queue is shorter",
            "timeout",
            "request_timeout",
        )
    if failure.kind is FailureKind.BAD_OUTPUT:
        return JobError(500, failure.detail, "server_error", "bad_output")
    if failure.kind is FailureKind.INVALID:
        return JobError(400, failure.detail, "invalid_request_error", "invalid_settings")
    return _FIXED[failure.kind]


def job_error(job: Job) -> JobError | None:
    """The error a finished job answers with (None: it succeeded, or was cancelled by its
    client)."""
    return None if job.failure is None else error_of(job.failure, job)

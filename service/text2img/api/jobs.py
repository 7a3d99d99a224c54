"""A job: one generation request (n images of one prompt) and everything it goes through.

Jobs are written by the GPU worker thread and read by asyncio handlers; every state
change happens under the job's lock and wakes the handlers waiting on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from text2img.engines.base import EngineSettings

if TYPE_CHECKING:
    from PIL import Image


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class FailureKind(StrEnum):
    """Why the queue gave up on a job; `api.failures` turns each into an HTTP answer."""

    TIMEOUT = "timeout"  # ran past its time limit
    OUT_OF_MEMORY = "out_of_memory"  # even one image did not fit on the device
    BAD_OUTPUT = "bad_output"  # the engine refused its own output (NaN or constant)
    INVALID = "invalid"  # the engine refused the request's settings
    INTERNAL = "internal"  # anything else (logged)
    SHUTDOWN = "shutdown"  # the service is stopping


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    detail: str = ""  # the engine's own message, where it has one


@dataclass
class JobProgress:
    stage: str = "queued"
    step: int = 0
    total: int = 0
    fraction: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "step": self.step,
            "total": self.total,
            "fraction": round(self.fraction, 4),
        }


@dataclass(frozen=True)
class Partial:
    """An intermediate look at image `index` (its `partial_index`-th), not yet encoded."""

    index: int
    partial_index: int
    image: Image.Image


@dataclass(eq=False)  # identity: jobs are hashed and compared by object
class Job:
    """n images of one English prompt under one set of sampling settings."""

    prompt: str  # the English text asked for (revised_prompt unless an engine cut it)
    settings: EngineSettings
    seeds: list[int]
    timeout_s: float
    size: str = ""  # the size drawn ("WxH"), as the response states it
    output_format: str = "png"  # png | jpeg | webp
    output_compression: int | None = None  # 0-100 for jpeg/webp; None: the format's default
    id: str = field(default_factory=lambda: "job_" + secrets.token_urlsafe(12))
    created: float = field(default_factory=time.time)
    state: JobState = JobState.QUEUED
    progress: JobProgress = field(default_factory=JobProgress)
    failure: Failure | None = None
    started_at: float | None = None
    finished_at: float | None = None
    # worker bookkeeping (guarded by the scheduler's lock)
    next_index: int = 0
    bypassed: int = 0  # times a later job went first to spare a weight swap (api.batching)
    done_count: int = 0
    cancel_requested: bool = False
    images: list[bytes | None] = field(default_factory=list)
    # per image: the text actually drawn when the engine cut the prompt, else None
    prompts_used: list[str | None] = field(default_factory=list)
    # streaming: intermediate images wanted per image (0-3) and those taken so far
    partial_images: int = 0
    partials: list[Partial] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.images = [None] * len(self.seeds)
        self.prompts_used = [None] * len(self.seeds)
        self.deadline = time.monotonic() + self.timeout_s
        self.submitted_at = time.monotonic()
        self.seq = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    @property
    def n(self) -> int:
        return len(self.seeds)

    def partial_due(self, index: int, fraction: float) -> bool:
        """True when image `index`, `fraction` drawn, is owed its next partial image: the
        k-th of P is taken once (k + 1) / (P + 1) of it is drawn (P = 2: at 1/3 and 2/3)."""
        taken = sum(1 for p in self.partials if p.index == index)
        return taken < self.partial_images and fraction >= (taken + 1) / (self.partial_images + 1)

    def add_partial(self, index: int, image: Image.Image) -> None:
        taken = sum(1 for p in self.partials if p.index == index)
        self.partials.append(Partial(index, taken, image))  # list.append: atomic
        self.notify()

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called on the event loop before the job is queued."""
        self._loop = loop
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Wake every handler waiting on this job (safe from any thread)."""
        self.seq += 1
        loop, event = self._loop, self._event
        if loop is None or event is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(event.set)

    async def wait_change(self, seen_seq: int, timeout: float) -> bool:
        """Wait until `seq` differs from `seen_seq`; False on timeout."""
        assert self._event is not None, "bind_loop() first"
        while self.seq == seen_seq:
            self._event.clear()
            if self.seq != seen_seq:
                break
            try:
                await asyncio.wait_for(self._event.wait(), timeout)
            except TimeoutError:
                return self.seq != seen_seq
        return True

    async def wait_done(self, timeout: float) -> bool:
        """Wait until the job is finished; False on timeout."""
        end = time.monotonic() + timeout
        while not self.finished:
            left = end - time.monotonic()
            if left <= 0:
                return False
            await self.wait_change(self.seq, min(left, 1.0))
        return True

    def finish(self, state: JobState, failure: Failure | None = None) -> bool:
        """Move to a final state once; False if it was already final."""
        with self._lock:
            if self.finished:
                return False
            self.state = state
            self.failure = failure
            self.finished_at = time.time()
            if state is JobState.SUCCEEDED:
                self.progress = JobProgress("done", self.progress.total, self.progress.total, 1.0)
        self.notify()
        return True


class JobRegistry:
    """Jobs of the job API by id; finished ones are forgotten after a TTL or beyond a cap."""

    def __init__(self, ttl_s: float, max_finished: int) -> None:
        self.ttl_s = ttl_s
        self.max_finished = max_finished
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job
        self.prune()

    def get(self, job_id: str) -> Job | None:
        self.prune()
        with self._lock:
            return self._jobs.get(job_id)

    def prune(self) -> None:
        now = time.time()
        with self._lock:
            finished = [j for j in self._jobs.values() if j.finished]
            finished.sort(key=lambda j: j.finished_at or 0.0)
            excess = len(finished) - self.max_finished
            for i, job in enumerate(finished):
                if i < excess or now - (job.finished_at or now) > self.ttl_s:
                    self._jobs.pop(job.id, None)

    def all(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

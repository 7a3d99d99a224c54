"""The GPU worker: one thread, a bounded FIFO queue, batching of compatible jobs.

Knows neither torch nor HTTP: it drives an `engines.base.Engine` and records why a job
failed as a `jobs.Failure` (`api.failures` decides what a client is told).

- `submit` refuses a job when `queue_limit` jobs already wait (QueueFull).
- The worker takes the oldest waiting job and fills one sampling batch, up to the
  engine's `max_batch` images, with images of later jobs whose engine settings
  are equal (a job larger than a batch is spread over several batches). A job that
  needs the weights already loaded may go ahead of older ones that would swap them, at
  most `batching.MAX_BYPASS` times per job passed over (`api.batching`).
- A batch is cancelled (the engine checks `should_cancel` before every model call)
  once every job in it was cancelled or ran past its time limit.
- Out of memory (the engine raises `OutOfMemory`): the batch is retried in halves, and
  later batches are capped at the size that worked; one image out of memory fails its job.
- A batch the engine's output guard refuses (BadOutput: NaN or constant images) fails its
  jobs; any other failure fails the jobs of that batch; the worker itself never dies.
- Images are encoded off the worker thread (`api.encoder`, `encode_threads` default 1),
  and the next batch starts at once; a job succeeds when its last image is encoded.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from text2img.api.batching import next_head
from text2img.api.encoder import Encode, Encoder
from text2img.api.jobs import Failure, FailureKind, Job, JobProgress, JobState
from text2img.engines.base import BadOutput, Cancelled, Engine, ImageRequest, OutOfMemory, Progress

log = logging.getLogger(__name__)

DEFAULT_BATCH_S = 10.0  # a guess of one sampling batch until one has been measured
MAX_RETRY_AFTER_S = 600


class QueueFull(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class SchedulerStopped(Exception):
    pass


@dataclass(frozen=True)
class _Item:
    job: Job
    index: int


@dataclass
class BatchRecord:
    """Reported to the `on_batch` hook (metrics, benchmarks)."""

    images: int
    seconds: float
    outcome: str  # "ok" | "cancelled" | "oom" | "error"


_SHUTDOWN = Failure(FailureKind.SHUTDOWN)
_INTERNAL = Failure(FailureKind.INTERNAL)


class Scheduler:
    """Owns the engine; the only thread that ever calls `engine.generate`."""

    def __init__(
        self,
        engine: Engine,
        *,
        queue_limit: int,
        encode: Encode,
        max_batch: int | None = None,
        batch_window_s: float = 0.03,
        encode_threads: int = 1,
        on_batch: Callable[[BatchRecord], None] | None = None,
        on_job_finished: Callable[[Job, JobState], None] | None = None,
    ) -> None:
        self.engine = engine
        self.queue_limit = queue_limit
        self.max_batch = max(1, min(max_batch or engine.max_batch, engine.max_batch))
        self.batch_window_s = batch_window_s
        self._on_batch = on_batch
        self._on_job_finished = on_job_finished
        self._queue: deque[Job] = deque()
        self._running: list[Job] = []
        self._cond = threading.Condition()
        self._encoder = Encoder(encode, encode_threads, self._cond, self._delivered)
        self._stopping = False
        self._draining = False
        self._thread: threading.Thread | None = None
        self._batch_seconds = 0.0  # moving average of a sampling batch, for Retry-After
        self._loaded: Hashable | None = None  # weights key of the last batch taken
        # shown between two batches of one job: the engine's first stage
        self._next_stage = next(iter(engine.spec.stages), "queued")

    # -- public, any thread ------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="text2img-gpu", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel everything waiting, running or being encoded, and join the threads."""
        with self._cond:
            self._stopping = True
            pending = [*self._queue, *self._running, *self._encoder.pending]
            self._queue.clear()
            self._cond.notify_all()
        for job in pending:
            job.cancel_requested = True
            self._finish(job, JobState.CANCELLED, _SHUTDOWN)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the GPU worker did not stop within %.0f s", timeout)
            self._thread = None
        self._encoder.shutdown()

    def begin_shutdown(self) -> None:
        """Refuse new jobs and fail the waiting ones (shutdown) now; the batch being drawn
        runs on and is encoded, and then `alive` turns False."""
        with self._cond:
            self._draining = True
            waiting = [j for j in self._queue if j.state is JobState.QUEUED]
            for job in waiting:
                self._queue.remove(job)
            self._cond.notify_all()
        for job in waiting:
            job.cancel_requested = True
            self._finish(job, JobState.CANCELLED, _SHUTDOWN)

    @property
    def alive(self) -> bool:
        """The worker runs, or images it drew are still being encoded."""
        worker = self._thread is not None and self._thread.is_alive()
        with self._cond:
            return worker or bool(self._encoder.pending)

    @property
    def queue_depth(self) -> int:
        """Jobs waiting that have not started."""
        with self._cond:
            return sum(1 for j in self._queue if j.state is JobState.QUEUED)

    @property
    def jobs_in_flight(self) -> int:
        """Jobs with images being drawn, encoded, or left to draw after a started batch."""
        with self._cond:
            return len(self._in_flight())

    @property
    def busy(self) -> bool:
        with self._cond:
            return bool(self._queue) or bool(self._in_flight())

    def _in_flight(self) -> set[str]:
        ids = {j.id for j in self._running if not j.finished}
        ids |= {j.id for j in self._encoder.pending if not j.finished}
        return ids | {j.id for j in self._queue if j.state is JobState.RUNNING}

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the time to draw what is queued ahead
        (waiting images in batches of `max_batch`, plus half of the batch being drawn) at
        the measured seconds per batch. Grows with the queue, so a crowd of retrying
        clients is spread out instead of all being refused again."""
        batch_s = self._batch_seconds or DEFAULT_BATCH_S
        with self._cond:
            images = sum(j.n - j.next_index for j in self._queue)
            drawing = any(not j.finished for j in self._running)
        batches = math.ceil(images / self.max_batch) + (0.5 if drawing else 0.0)
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil(batch_s * max(1.0, batches))))

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping or self._draining:
                raise SchedulerStopped("the service is shutting down; retry in a moment")
            waiting = sum(1 for j in self._queue if j.state is JobState.QUEUED)
            if waiting >= self.queue_limit:
                raise QueueFull(self.retry_after())
            job.submitted_at = time.monotonic()
            self._queue.append(job)
            self._cond.notify_all()
        job.notify()

    def cancel(self, job: Job) -> bool:
        """Ask for the job to stop; a queued job is dropped before it runs."""
        with self._cond:
            job.cancel_requested = True
            dropped = job in self._queue and job.state is JobState.QUEUED
            if dropped:
                self._queue.remove(job)
            self._cond.notify_all()
        if dropped:
            self._finish(job, JobState.CANCELLED, None)
        return dropped

    def expire_if_due(self, job: Job) -> None:
        """Fail a waiting job past its time limit now (the worker may be busy for long)."""
        if time.monotonic() <= job.deadline:
            return
        with self._cond:
            waiting = job in self._queue and job.state is JobState.QUEUED
            if waiting:
                self._queue.remove(job)
        if waiting:
            self._finish(job, JobState.FAILED, Failure(FailureKind.TIMEOUT))

    def queue_position(self, job: Job) -> int | None:
        """0-based position among waiting jobs, None when not waiting."""
        with self._cond:
            waiting = [j for j in self._queue if j.state is JobState.QUEUED]
        return waiting.index(job) if job in waiting else None

    # -- worker thread -----------------------------------------------------------------

    def _work(self) -> None:
        while True:
            try:
                batch = self._take_batch()
                if batch is None:
                    return
                if batch:
                    self._run(batch, self.max_batch)
            except Exception:  # the worker never dies
                log.exception("the GPU worker hit an unexpected error; continuing")
                for job in list(self._running):
                    self._finish(job, JobState.FAILED, _INTERNAL)
            finally:
                with self._cond:
                    self._running = []

    def _take_batch(self) -> list[_Item] | None:
        with self._cond:
            while True:
                if self._stopping or self._draining:
                    return None
                self._expire_waiting()
                if self._queue:
                    head, passed = next_head(self._queue, self._loaded, self._weights_key)
                    wait = self._window_left(head)
                    if wait <= 0:
                        break
                    self._cond.wait(timeout=wait)  # a submit wakes us to re-check
                    continue
                self._cond.wait(timeout=1.0)
            for job in passed:
                job.bypassed += 1
            self._loaded = self._weights_key(head)
            items: list[_Item] = []
            for job in list(self._queue):
                if job.settings != head.settings:
                    continue
                take = min(job.n - job.next_index, self.max_batch - len(items))
                items.extend(_Item(job, job.next_index + k) for k in range(take))
                job.next_index += take
                if job.state is JobState.QUEUED:
                    job.state = JobState.RUNNING
                    job.started_at = time.time()
                if job.next_index >= job.n:
                    self._queue.remove(job)
                if len(items) >= self.max_batch:
                    break
            self._running = list(dict.fromkeys(i.job for i in items))
        for job in self._running:
            job.notify()
        return items

    def _weights_key(self, job: Job) -> Hashable | None:
        return self.engine.spec.weights_key(job.settings)

    def _window_left(self, head: Job) -> float:
        """Seconds to keep a fresh job waiting for compatible company (0 = start now).

        Requests sent together arrive a few ms apart; without this short window the first
        would always run alone and the rest in a second batch.
        """
        if head.state is not JobState.QUEUED or self.batch_window_s <= 0:
            return 0.0
        images = sum(j.n - j.next_index for j in self._queue if j.settings == head.settings)
        if images >= self.max_batch:
            return 0.0
        return head.submitted_at + self.batch_window_s - time.monotonic()

    def _expire_waiting(self) -> None:
        now = time.monotonic()
        for job in [j for j in self._queue if now > j.deadline or j.cancel_requested]:
            self._queue.remove(job)
            if job.cancel_requested:
                self._finish(job, JobState.CANCELLED, None)
            else:
                self._finish(job, JobState.FAILED, Failure(FailureKind.TIMEOUT))

    def _live(self, job: Job) -> bool:
        """False once the job no longer wants images (cancelled, timed out, failed)."""
        if job.finished:
            return False
        if job.cancel_requested:
            self._finish(job, JobState.CANCELLED, None)
            return False
        if time.monotonic() > job.deadline:
            self._finish(job, JobState.FAILED, Failure(FailureKind.TIMEOUT))
            return False
        return True

    def _run(self, items: list[_Item], cap: int) -> None:
        """Draw `items` in sampling batches of at most `cap` (and `max_batch`) images."""
        start = 0
        while start < len(items):
            size = max(1, min(cap, self.max_batch))
            chunk = [i for i in items[start : start + size] if self._live(i.job)]
            start += size
            if chunk:
                self._run_chunk(chunk)

    def _run_chunk(self, items: list[_Item]) -> None:
        jobs = list(dict.fromkeys(i.job for i in items))
        per_job = Counter(i.job for i in items)
        requests = [ImageRequest(prompt=i.job.prompt, seed=i.job.seeds[i.index]) for i in items]

        def progress(p: Progress) -> None:
            for job in jobs:
                done = job.done_count + p.fraction * per_job[job]
                job.progress = JobProgress(p.stage, p.step, p.total, min(done / job.n, 0.999))
                job.notify()
            if p.preview is not None:
                self._take_partials(items, p)

        def should_cancel() -> bool:
            return not any([self._live(job) for job in jobs])

        t0 = time.perf_counter()
        try:
            images = self.engine.generate(
                requests, jobs[0].settings, progress=progress, should_cancel=should_cancel
            )
        except Cancelled:
            self._report(len(items), t0, "cancelled")
            for job in jobs:
                self._live(job)  # finishes cancelled / timed-out jobs
            return
        except OutOfMemory:
            self._report(len(items), t0, "oom")
            if len(items) > 1:
                smaller = max(1, len(items) // 2)
                if smaller < self.max_batch:
                    log.warning("out of memory at %d images; batches capped at %d",
                                len(items), smaller)  # fmt: skip
                    self.max_batch = smaller
                self._run(items, smaller)
                return
            self._fail(jobs, Failure(FailureKind.OUT_OF_MEMORY))
            return
        except BadOutput as exc:
            self._report(len(items), t0, "error")
            log.error("the engine refused its own output: %s", exc)
            self._fail(jobs, Failure(FailureKind.BAD_OUTPUT, str(exc)))
            return
        except ValueError as exc:  # InvalidSetting: settings the engine refuses
            self._report(len(items), t0, "error")
            self._fail(jobs, Failure(FailureKind.INVALID, str(exc)))
            return
        except Exception:
            self._report(len(items), t0, "error")
            log.exception("generation failed for %d image(s)", len(items))
            self._fail(jobs, _INTERNAL)
            return
        # a weights swap is a one-off, not what each waiting batch will cost
        seconds = max(0.0, self._report(len(items), t0, "ok") - self.engine.last_setup_seconds)
        self._batch_seconds = (
            seconds if not self._batch_seconds else 0.7 * self._batch_seconds + 0.3 * seconds
        )
        self._encoder.submit([(i.job, i.index) for i in items], images)  # counts them drawn
        for job in jobs:
            if job.done_count < job.n and not job.finished:
                fraction = job.done_count / job.n
                job.progress = JobProgress(self._next_stage, 0, job.progress.total, fraction)
                job.notify()

    @staticmethod
    def _take_partials(items: list[_Item], p: Progress) -> None:
        """Hand each streamed image that is owed a partial image its preview."""
        due = [(row, i) for row, i in enumerate(items) if i.job.partial_due(i.index, p.fraction)]
        if not due or p.preview is None:
            return
        try:
            pictures = p.preview()
        except Exception:  # a preview is a courtesy: never fail the generation for it
            log.exception("the engine's preview failed")
            return
        if len(pictures) != len(items):
            log.error("preview gave %d images for %d requests", len(pictures), len(items))
            return
        for row, item in due:
            item.job.add_partial(item.index, pictures[row])

    def _fail(self, jobs: list[Job], failure: Failure) -> None:
        for job in jobs:
            self._finish(job, JobState.FAILED, failure)

    def _delivered(self, job: Job, ok: bool) -> None:
        """The encoder has every image of `job` (ok), or could not encode one."""
        self._finish(job, JobState.SUCCEEDED if ok else JobState.FAILED, None if ok else _INTERNAL)

    def _report(self, images: int, t0: float, outcome: str) -> float:
        seconds = time.perf_counter() - t0
        if self._on_batch is not None:
            self._on_batch(BatchRecord(images, seconds, outcome))
        return seconds

    def _finish(self, job: Job, state: JobState, failure: Failure | None) -> None:
        """Finish a job once; the hook runs before anyone waiting on the job wakes up."""
        with self._cond:
            if job.finished:
                return
            if state is not JobState.SUCCEEDED:
                job.images = [None] * job.n
            if job in self._queue:
                self._queue.remove(job)
            if self._on_job_finished is not None:
                self._on_job_finished(job, state)
            job.finish(state, failure)

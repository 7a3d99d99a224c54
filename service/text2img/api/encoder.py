"""Drawn images into their jobs' bytes, off the GPU worker thread.

The worker hands each finished batch to `Encoder.submit` and takes the next batch at once.
`threads` encoder threads (the service uses one, so the thread feeding the GPU keeps a
core) encode each image with the job's format; when a job's last drawn image is encoded
and nothing of it is left to draw, `on_done(job, ok)` finishes it. `threads=0` encodes on
the caller's thread (how the service worked before; kept for the benchmark).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from text2img.api.jobs import Job
from text2img.engines.base import GeneratedImage

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

Encode = Callable[[Job, "Image.Image"], bytes]


class Encoder:
    def __init__(
        self,
        encode: Encode,
        threads: int,
        lock: threading.Condition,
        on_done: Callable[[Job, bool], None],
    ) -> None:
        self._encode = encode
        self._lock = lock  # the queue's: job bookkeeping is read under it
        self._on_done = on_done
        self._pool = (
            ThreadPoolExecutor(threads, thread_name_prefix="text2img-encode") if threads else None
        )
        self.pending: Counter[Job] = Counter()  # images drawn, not yet encoded, per job

    def submit(self, slots: Sequence[tuple[Job, int]], images: list[GeneratedImage]) -> None:
        """Encode `images[i]` into `slots[i]` = (job, image index); call with the lock free.

        Counts the images drawn (`job.done_count`) in the same step as pending, so a job
        is never seen complete between the two."""
        with self._lock:
            for job, _ in slots:
                self.pending[job] += 1
                job.done_count += 1
        if self._pool is None:
            self._deliver(slots, images)
        else:
            self._pool.submit(self._deliver, slots, images)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _deliver(self, slots: Sequence[tuple[Job, int]], images: list[GeneratedImage]) -> None:
        failed: set[Job] = set()
        for (job, index), generated in zip(slots, images, strict=True):
            if job.finished or job in failed:
                continue
            try:
                data = self._encode(job, generated.image)
            except Exception:
                log.exception("encoding an image of job %s failed", job.id)
                failed.add(job)
                continue
            with self._lock:
                job.images[index] = data
                job.prompts_used[index] = generated.prompt_used
        done: list[Job] = []
        with self._lock:
            for job, _ in slots:
                self.pending[job] -= 1
                if self.pending[job] <= 0:
                    del self.pending[job]
                    if job.done_count >= job.n:
                        done.append(job)
        for job in dict.fromkeys([*done, *failed]):
            self._on_done(job, job not in failed)

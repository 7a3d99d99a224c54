"""What one running service holds: settings, token, translator, model loader, scheduler,
activity clock, job registry and metrics. Created by `create_app`, one per app."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from text2img.api.encoding import encode_image
from text2img.api.jobs import Job, JobRegistry, JobState
from text2img.api.metrics import Metrics
from text2img.api.scheduler import Scheduler
from text2img.auth import FailureThrottle
from text2img.engines.base import Engine, EngineSpec
from text2img.engines.registry import get_spec
from text2img.errors import UserError
from text2img.settings import Settings
from text2img.translate import Translator

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


class Activity:
    """Idle clock for the VM's autostop: idle = seconds since the later of start and the
    last user request (or job) finishing; 0 while any request or job is in flight."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.started_at = clock()
        self.last_activity_at: float | None = None
        self._in_flight = 0
        self._lock = threading.Lock()

    def begin(self) -> None:
        with self._lock:
            self._in_flight += 1

    def end(self, touch: bool = True) -> None:
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            if touch:
                self.last_activity_at = self._clock()

    def touch(self) -> None:
        with self._lock:
            self.last_activity_at = self._clock()

    def idle_seconds(self, busy: bool) -> float:
        with self._lock:
            if busy or self._in_flight:
                return 0.0
            since = max(self.started_at, self.last_activity_at or self.started_at)
            return max(0.0, self._clock() - since)


def encode_job_image(job: Job, image: Image.Image) -> bytes:
    """The scheduler's encoder: an image in the format its job asked for."""
    return encode_image(image, job.output_format, job.output_compression)


@dataclass
class ServiceState:
    settings: Settings
    token: str | None
    translator: Translator
    metrics: Metrics
    activity: Activity
    throttle: FailureThrottle
    jobs: JobRegistry
    engine: Engine | None = None
    scheduler: Scheduler | None = None
    load_error: str | None = None
    phase: str = "loading_model"
    model_name: str = ""
    on_load_failure: Callable[[str], None] | None = None
    _loader: threading.Thread | None = field(default=None, repr=False)
    _closing: bool = field(default=False, repr=False)

    @property
    def spec(self) -> EngineSpec:
        """The served engine's spec (known before the weights are loaded)."""
        return self.engine.spec if self.engine is not None else get_spec(self.settings.model)

    @property
    def ready(self) -> bool:
        return self.scheduler is not None

    @property
    def busy(self) -> bool:
        return self.scheduler is not None and self.scheduler.busy

    def idle_seconds(self) -> float:
        return self.activity.idle_seconds(self.busy)

    def start_loading(self, load: Callable[[], Engine]) -> None:
        """Load the engine on a thread, so /healthz and /readyz answer meanwhile."""

        def run() -> None:
            try:
                engine = load()
            except UserError as exc:
                self._failed(str(exc))
                return
            except Exception as exc:
                log.exception("loading the model failed")
                self._failed(f"loading the model failed: {type(exc).__name__}: {exc}")
                return
            if self._closing:
                return
            scheduler = Scheduler(
                engine,
                queue_limit=self.settings.queue_limit,
                encode=encode_job_image,
                max_batch=self.settings.max_batch,
                batch_window_s=self.settings.batch_window_s,
                on_batch=self.metrics.record_batch,
                on_job_finished=self._job_finished,
            )
            scheduler.start()
            self.engine = engine
            self.model_name = engine.name
            self.scheduler = scheduler
            self.phase = "ready"
            log.info(
                "model %s ready on %s (max batch %d)",
                engine.name,
                engine.device,
                scheduler.max_batch,
            )

        self._loader = threading.Thread(target=run, name="text2img-load", daemon=True)
        self._loader.start()

    def _failed(self, message: str) -> None:
        self.load_error = message
        self.phase = "failed"
        log.error("the model could not be loaded: %s", message)
        if self.on_load_failure is not None:
            self.on_load_failure(message)

    def _job_finished(self, job: Job, state: JobState) -> None:
        self.activity.touch()
        if state is JobState.SUCCEEDED:
            self.metrics.images.inc(job.n)

    def wait_loaded(self, timeout: float | None = None) -> bool:
        if self._loader is not None:
            self._loader.join(timeout)
        return self.ready

    def shutdown(self) -> None:
        # a model still loading is not waited for long: the process is exiting
        self._closing = True
        if self._loader is not None:
            self._loader.join(timeout=5)
        if self.scheduler is not None:
            self.scheduler.stop(timeout=10)

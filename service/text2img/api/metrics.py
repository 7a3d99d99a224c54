"""Prometheus metrics, one registry per app (so several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from text2img.api.scheduler import BatchRecord

LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "text2img_http_requests",
            "HTTP requests handled",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "text2img_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter("text2img_images_generated", "Images delivered", registry=r)
        self.batches = Counter(
            "text2img_sampling_batches", "Sampling batches run", ["outcome"], registry=r
        )
        self.batch_images = Histogram(
            "text2img_batch_images",
            "Images per sampling batch",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "text2img_batch_duration_seconds",
            "Time per sampling batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "text2img_queue_rejections",
            "Requests refused because the queue was full",
            registry=r,
        )
        self.translations = Counter(
            "text2img_translations", "Prompt translations", ["outcome"], registry=r
        )
        self.auth_failures = Counter(
            "text2img_auth_failures",
            "Requests refused for a missing or wrong token",
            registry=r,
        )
        self.queue_depth = Gauge("text2img_queue_depth", "Jobs waiting for the GPU", registry=r)
        self.jobs_in_flight = Gauge("text2img_jobs_in_flight", "Jobs being drawn now", registry=r)
        self.idle_seconds = Gauge(
            "text2img_idle_seconds",
            "Seconds since the last user request finished",
            registry=r,
        )
        self.ready = Gauge("text2img_ready", "1 once the model is loaded", registry=r)

    def bind(
        self,
        queue_depth: Callable[[], float],
        jobs_in_flight: Callable[[], float],
        idle_seconds: Callable[[], float],
        ready: Callable[[], float],
    ) -> None:
        """Gauges read live values at scrape time."""
        self.queue_depth.set_function(queue_depth)
        self.jobs_in_flight.set_function(jobs_in_flight)
        self.idle_seconds.set_function(idle_seconds)
        self.ready.set_function(ready)

    def record_batch(self, record: BatchRecord) -> None:
        self.batches.labels(record.outcome).inc()
        if record.outcome == "ok":
            self.batch_images.observe(record.images)
            self.batch_seconds.observe(record.seconds)

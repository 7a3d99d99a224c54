"""`create_app()`: the FastAPI application (model loaded once, by the lifespan, on a thread)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from text2img import __version__
from text2img.api.errors import install_error_handlers
from text2img.api.jobs import JobRegistry
from text2img.api.limits import service_policy
from text2img.api.metrics import Metrics
from text2img.api.routes import images, jobs, models, system, translations, ui
from text2img.api.state import Activity, ServiceState
from text2img.auth import FailureThrottle, load_token
from text2img.engines.base import Engine
from text2img.front_door import BadPath, normalise, treatment
from text2img.http_guard import RequestGuard
from text2img.settings import Settings, get_settings
from text2img.translate import Translator, make_translator

log = logging.getLogger(__name__)


class ObserveMiddleware:
    """Request metrics and the activity clock (pure ASGI, so client disconnects still
    reach the handlers). Token, throttle and body limits are `limits`' guard, inside."""

    def __init__(self, app: ASGIApp, service: ServiceState) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # the guard inside has not run yet: classify the same normalised path it will use
        try:
            path = normalise(scope.get("raw_path") or scope["path"].encode())[0]
        except BadPath:
            path = ""
        activity = treatment(scope["method"], path).activity
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        if activity:
            self.service.activity.begin()
        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            auth_failed = bool(scope.get("state", {}).get("auth_failed"))
            if activity:
                self.service.activity.end(touch=not auth_failed and status != 401)
            route = scope.get("route")
            label = getattr(route, "path", None) or (
                "/static" if scope["path"].startswith("/static/") else "unmatched"
            )
            method = scope.get("method", "GET")
            m = self.service.metrics
            m.requests.labels(method, label, str(status)).inc()
            m.latency.labels(method, label).observe(time.perf_counter() - t0)


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    translator: Translator | None = None,
    on_load_failure: Callable[[str], None] | None = None,
) -> FastAPI:
    """The service. `engine` skips loading (e.g. one tiny engine shared by tests);
    `on_load_failure` is called with the message when the model cannot be loaded."""
    settings = settings or get_settings()
    service = ServiceState(
        settings=settings,
        token=load_token(settings.api_token, settings.api_token_file),
        translator=translator or make_translator(settings),
        metrics=Metrics(),
        activity=Activity(),
        throttle=FailureThrottle(
            max_failures=settings.auth_max_failures, block_s=settings.auth_block_s
        ),
        jobs=JobRegistry(settings.job_ttl_s, settings.max_finished_jobs),
        on_load_failure=on_load_failure,
    )
    service.metrics.bind(
        queue_depth=lambda: service.scheduler.queue_depth if service.scheduler else 0,
        jobs_in_flight=lambda: service.scheduler.jobs_in_flight if service.scheduler else 0,
        idle_seconds=service.idle_seconds,
        ready=lambda: 1.0 if service.ready else 0.0,
    )

    def load() -> Engine:
        if engine is not None:
            return engine
        from text2img.engines.registry import load_engine

        return load_engine(
            settings.model,
            device=settings.device,
            dtype=settings.dtype,
            cache_dir=settings.model_cache,
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start_loading(load)
        try:
            yield
        finally:
            await asyncio.to_thread(service.shutdown)

    app = FastAPI(
        title="text2img",
        version=__version__,
        summary="Your own text-to-image service: OpenAI-compatible images API, "
        "translation, job progress.",
        lifespan=lifespan,
        # the schema needs the token like every API route; no docs pages (they load a CDN)
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    install_error_handlers(app)
    for module in (system, models, translations, ui):
        app.include_router(module.router)
    for build in (images.router, jobs.router):  # their bodies carry the engine's options
        app.include_router(build(service.spec))

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    app.mount("/static", ui.PageFiles(directory=ui.static_dir()), name="static")
    # the guard checks token and body before anything else reads them; Observe, outside
    # it, still counts the refusals
    app.add_middleware(
        RequestGuard,
        policy=service_policy(
            settings, service.token, service.throttle, service.metrics.auth_failures.inc
        ),
    )
    app.add_middleware(ObserveMiddleware, service=service)
    return app

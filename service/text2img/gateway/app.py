"""The gateway's HTTP app: token check first, then proxy, wake or explain.

Run: `uvicorn text2img.gateway.app:create_app --factory` or `python -m text2img.gateway`.
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
from collections.abc import AsyncIterator
from importlib.resources import files
from importlib.resources.abc import Traversable

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from text2img.auth import FailureThrottle, load_token
from text2img.errors import UserError
from text2img.front_door import (
    MAX_BODY_BYTES,
    UI_HEADERS,
    error_response,
    jittered,
    treatment,
)
from text2img.gateway.backend import Asleep, Backend
from text2img.gateway.cloudrun_backend import CloudRunBackend
from text2img.gateway.proxy import ClientGone, UpstreamDown, UpstreamFailed, forward, timeouts
from text2img.gateway.settings import GatewaySettings
from text2img.gateway.vm_backend import VmBackend
from text2img.gateway.waker import Decision, Ready, StartFailed, Waker, Waking
from text2img.gce import VmRef
from text2img.http_guard import GuardPolicy, RequestGuard

log = logging.getLogger("text2img.gateway")

# The page's files the gateway serves itself (GET/HEAD, no token: text2img.front_door).
PAGE_FILES = {"/": "index.html", "/favicon.ico": "favicon.ico"}


def _error(status: int, code: str, message: str, *, type_: str, **extra: object) -> Response:
    return error_response(status, code, message, type_=type_, extra=extra)


def _static_root() -> Traversable | None:
    try:
        return files("text2img.api") / "static"
    except ModuleNotFoundError:
        return None


def decision_response(decision: Decision) -> Response:
    if isinstance(decision, Waking):
        eta = round(decision.eta_s)
        retry = jittered(decision.retry_after_s)
        resp = _error(
            503,
            "waking",
            decision.message,
            type_="unavailable",
            phase=decision.phase,
            retry_after=retry,
            eta_seconds=eta,
        )
        resp.headers["Retry-After"] = str(retry)
        resp.headers["Cache-Control"] = "no-store"
        return resp
    if isinstance(decision, StartFailed):
        retry = jittered(decision.retry_after_s)
        resp = _error(
            503,
            "start_failed",
            decision.message,
            type_="unavailable",
            cause=decision.cause,
            retry_after=retry,
        )
        resp.headers["Retry-After"] = str(retry)
        resp.headers["Cache-Control"] = "no-store"
        return resp
    if isinstance(decision, Asleep):
        resp = _error(
            503,
            "asleep",
            decision.message,
            type_="unavailable",
            phase="asleep",
            vm_status=decision.status,
        )
        resp.headers["Cache-Control"] = "no-store"
        return resp
    raise AssertionError(f"no response for {decision!r}")


def make_backend(settings: GatewaySettings) -> Backend:
    """The GPU backend the settings choose (`TEXT2IMG_GATEWAY_BACKEND`)."""
    if settings.backend == "cloudrun":
        if not settings.upstream_url:
            raise UserError(
                "the gateway does not know its GPU service: set TEXT2IMG_GATEWAY_UPSTREAM_URL "
                "to the Cloud Run service's URL (`pulumi stack output gpu_url`)"
            )
        return CloudRunBackend(settings.upstream_url, probe_timeout_s=settings.probe_timeout_s)
    missing = [
        f"TEXT2IMG_GATEWAY_{name.upper()}"
        for name in ("project", "zone", "instance")
        if not getattr(settings, name)
    ]
    if missing:
        raise UserError(f"the gateway does not know its VM: set {', '.join(missing)}")
    return VmBackend(
        VmRef(settings.project, settings.zone, settings.instance),
        endpoint=settings.compute_endpoint,
        port=settings.upstream_port,
        upstream_url=settings.upstream_url,
    )


def create_app(
    settings: GatewaySettings | None = None,
    *,
    backend: Backend | None = None,
    static_root: Traversable | None = None,
) -> Starlette:
    """The gateway app. Refuses to start without a token or without its backend's identity.

    `backend` defaults to the one the settings choose (`make_backend`), `static_root` to
    the service's web UI (`text2img.api/static`); tests pass their own.
    """
    settings = settings or GatewaySettings()
    token = load_token(settings.api_token, settings.api_token_file)
    if token is None:
        raise UserError(
            "the gateway needs the API token: set TEXT2IMG_API_TOKEN (Cloud Run: a secret "
            "environment variable); it refuses to run open"
        )
    gpu = backend or make_backend(settings)
    throttle = FailureThrottle(max_failures=settings.max_auth_failures)
    static_root = static_root if static_root is not None else _static_root()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=20)
        async with httpx.AsyncClient(
            timeout=timeouts(settings.connect_timeout_s, settings.read_timeout_s),
            limits=limits,
            follow_redirects=False,
        ) as http:
            app.state.http = http
            app.state.waker = Waker(settings, gpu, http, token)
            yield

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def static_file(request: Request) -> Response:
        name = PAGE_FILES.get(request.url.path) or request.path_params.get("path", "")
        parts = [p for p in str(name).split("/") if p]
        if static_root is None or not parts or any(p in (".", "..") for p in parts):
            return _error(404, "not_found", "no such file", type_="invalid_request_error")
        item = static_root.joinpath(*parts)
        if not item.is_file():
            return _error(404, "not_found", "no such file", type_="invalid_request_error")
        media = mimetypes.guess_type(parts[-1])[0] or "application/octet-stream"
        if media.startswith("text/") or media == "application/javascript":
            media += "; charset=utf-8"
        return Response(item.read_bytes(), media_type=media, headers=UI_HEADERS)

    async def gateway(request: Request) -> Response:
        # the guard in front has normalised the path and checked throttle, token and
        # body size already; what is forwarded is exactly the path it checked
        client = request.state.client
        waker: Waker = request.app.state.waker
        wake = treatment(request.method, request.url.path).wakes
        decision = await waker.check(wake=wake)
        if isinstance(decision, Ready):
            try:
                return await forward(
                    request,
                    decision.base_url,
                    request.app.state.http,
                    client,
                    extra_headers=gpu.upstream_headers(),
                )
            except UpstreamFailed as exc:
                log.warning("upstream %s failed: %s", decision.base_url, exc)
                waker.invalidate()  # the VM may have stopped: look again next time
                if exc.timeout:
                    return _error(
                        504,
                        "upstream_timeout",
                        f"the service did not answer within {settings.read_timeout_s:.0f} s; "
                        "try fewer images or fewer steps, or try again",
                        type_="server_error",
                    )
                return _error(
                    502,
                    "upstream_failed",
                    "the connection to the service broke before it answered (the GPU VM may "
                    "have stopped or restarted); try again",
                    type_="server_error",
                )
            except ClientGone:
                log.info("client went away before the service answered %s", request.url.path)
                return Response(status_code=499)  # nobody reads it
            except UpstreamDown as exc:
                log.info("upstream %s did not answer: %s", decision.base_url, exc)
                waker.invalidate()
                decision = await waker.check(wake=wake)
                if isinstance(decision, Ready):
                    # ready a moment ago and refused now: nothing was sent, so a retry is
                    # safe (the egress path of a new instance can still be settling)
                    decision = Waking(
                        "connecting",
                        5.0,
                        3,
                        "the gateway could not reach the service on the GPU VM just now; "
                        "retry in a few seconds",
                    )
        return decision_response(decision)

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    routes = [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/", static_file, methods=["GET", "HEAD"]),
        Route("/favicon.ico", static_file, methods=["GET", "HEAD"]),
        Route("/static/{path:path}", static_file, methods=["GET", "HEAD"]),
        Route("/{rest:path}", gateway, methods=methods),
    ]
    guard = GuardPolicy(
        token=token,
        throttle=throttle,
        trust_forwarded=settings.trust_forwarded_for,
        max_body_bytes=MAX_BODY_BYTES,
        body_timeout_s=settings.body_timeout_s,
    )
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(RequestGuard, policy=guard)],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 as JSON with a code (every answer of the gateway is)."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_request")
    return _error(
        status, code, f"{request.method} {request.url.path}: {exc}", type_="invalid_request_error"
    )


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(
        500, "gateway_error", "the gateway failed unexpectedly; try again", type_="server_error"
    )

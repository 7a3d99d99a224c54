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
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from text2img.auth import FailureThrottle, load_token
from text2img.errors import UserError
from text2img.gateway.compute import VmRef
from text2img.gateway.paths import may_wake, normalise
from text2img.gateway.proxy import ClientGone, UpstreamDown, UpstreamFailed, forward, timeouts
from text2img.gateway.settings import GatewaySettings
from text2img.gateway.waker import (
    Asleep,
    ComputeBackend,
    Decision,
    Ready,
    StartFailed,
    VmBackend,
    Waker,
    Waking,
)
from text2img.http_guard import MAX_BODY_BYTES, GuardPolicy, Refusal, RequestGuard, client_key

log = logging.getLogger("text2img.gateway")

# Only documented calls that do work wake the VM (text2img.gateway.paths); pollers of
# /v1/ready, /readyz, /metrics and anything unknown see the VM's state without waking it.
PUBLIC_FILES = {"/": "index.html", "/favicon.ico": "favicon.ico"}
# The same headers the service sends with its web UI (text2img.api.routes.ui.UI_HEADERS;
# a test keeps them equal): the page users open in the cloud is served from here.
UI_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _error(status: int, code: str, message: str, *, type_: str, **extra: object) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code, **extra}}
    return JSONResponse(body, status_code=status)


def client_address(request: Request, trust_forwarded_for: bool) -> str:
    """The caller's address: the last X-Forwarded-For entry (the one Cloud Run's front end
    appends after whatever the client sent), else the socket peer."""
    return client_key(request.scope, trust_forwarded_for)


def is_open(path: str) -> bool:
    """Served without a token: the web page, its files and liveness."""
    return path in PUBLIC_FILES or path == "/healthz" or path.startswith("/static/")


def refusal_response(refusal: Refusal, retry_after: int | None) -> Response:
    """The gateway's JSON answer when its guard refuses a request before reading it."""
    if refusal is Refusal.THROTTLED:
        resp = _error(
            429,
            "auth_throttled",
            "too many requests with a wrong token; wait and try again with the right one",
            type_="rate_limit_error",
        )
        resp.headers["Retry-After"] = str(retry_after or 1)
        return resp
    if refusal in (Refusal.NO_CREDENTIAL, Refusal.BAD_CREDENTIAL):
        resp = _error(
            401,
            "invalid_api_key",
            "missing or wrong token: send `Authorization: Bearer <token>` (the token is "
            "printed by `pulumi stack output token --show-secrets`)",
            type_="invalid_request_error",
        )
        resp.headers["WWW-Authenticate"] = "Bearer"
        return resp
    if refusal is Refusal.TOO_LARGE:
        return _error(
            413,
            "body_too_large",
            f"the request body is larger than {MAX_BODY_BYTES} bytes; API requests are "
            "small JSON objects",
            type_="invalid_request_error",
        )
    return _error(
        408,
        "body_timeout",
        "the request body did not arrive in time; send it in one go",
        type_="invalid_request_error",
    )


def _static_root() -> Traversable | None:
    try:
        return files("text2img.api") / "static"
    except ModuleNotFoundError:
        return None


def decision_response(decision: Decision) -> Response:
    if isinstance(decision, Waking):
        eta = round(decision.eta_s)
        resp = _error(
            503,
            "waking",
            decision.message,
            type_="unavailable",
            phase=decision.phase,
            retry_after=decision.retry_after_s,
            eta_seconds=eta,
        )
        resp.headers["Retry-After"] = str(decision.retry_after_s)
        resp.headers["Cache-Control"] = "no-store"
        return resp
    if isinstance(decision, StartFailed):
        resp = _error(
            503,
            "start_failed",
            decision.message,
            type_="unavailable",
            cause=decision.cause,
            retry_after=decision.retry_after_s,
        )
        resp.headers["Retry-After"] = str(decision.retry_after_s)
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


def create_app(
    settings: GatewaySettings | None = None,
    *,
    backend: VmBackend | None = None,
    static_root: Traversable | None = None,
) -> Starlette:
    """The gateway app. Refuses to start without a token or without the VM's identity.

    `backend` and `static_root` default to the Compute API and the service's web UI
    (`text2img.api/static`); tests pass their own.
    """
    settings = settings or GatewaySettings()
    token = load_token(settings.api_token, settings.api_token_file)
    if token is None:
        raise UserError(
            "the gateway needs the API token: set TEXT2IMG_API_TOKEN (Cloud Run: a secret "
            "environment variable); it refuses to run open"
        )
    missing = [
        f"TEXT2IMG_GATEWAY_{name.upper()}"
        for name in ("project", "zone", "instance")
        if not getattr(settings, name)
    ]
    if missing:
        raise UserError(f"the gateway does not know its VM: set {', '.join(missing)}")
    vm = VmRef(settings.project, settings.zone, settings.instance)
    vm_backend = backend or ComputeBackend(vm, settings.compute_endpoint)
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
            app.state.waker = Waker(settings, vm_backend, http, token)
            yield

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def static_file(request: Request) -> Response:
        name = PUBLIC_FILES.get(request.url.path) or request.path_params.get("path", "")
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
        # the guard in front has checked throttle, token and body size already
        client = client_address(request, settings.trust_forwarded_for)
        waker: Waker = request.app.state.waker
        path = normalise(request.url.path)
        wake = may_wake(request.method, path)
        decision = await waker.check(wake=wake)
        if isinstance(decision, Ready):
            try:
                return await forward(
                    request, decision.base_url, request.app.state.http, client, path
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
        is_open=is_open,
        respond=refusal_response,
        trust_forwarded=settings.trust_forwarded_for,
        max_body_bytes=MAX_BODY_BYTES,
        body_timeout_s=settings.body_timeout_s,
    )
    return Starlette(
        routes=routes, lifespan=lifespan, middleware=[Middleware(RequestGuard, policy=guard)]
    )

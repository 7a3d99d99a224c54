"""One table for how each request is treated, shared by the service and the gateway.

For every path (and method) it says: served without a token (`open`), counted as user
activity by the VM's idle clock (`activity`), and allowed to wake a sleeping GPU backend
(`wakes`). The service's guard and idle clock and the gateway's guard and waker all read
`treatment(method, path)`; nothing else lists paths.

Every decision is made on ONE form of the path, made by `normalise` from the raw request
target before anything else looks at it: percent-encoded separators (`%2f`, `%5c`), a
backslash, dot segments (`.`/`..`, also encoded) and control characters are refused
outright (400 `invalid_path`), repeated slashes are collapsed and a trailing slash is
dropped. The guard then rewrites the request to that path, so the route that runs (and,
in the gateway, the URL that is proxied) is exactly the path that was checked.

Also here, because both sides send them: the JSON error builder, the guard's refusals
(401/408/413/429 with one text each) and the web page's security headers. Only
`starlette` is imported (the gateway image has no FastAPI).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from urllib.parse import unquote_to_bytes

from starlette.responses import JSONResponse

MAX_BODY_BYTES = 64 * 1024
GET = frozenset({"GET", "HEAD"})
NONE: frozenset[str] = frozenset()
JOB_ID = r"[A-Za-z0-9_-]{1,64}"


@dataclass(frozen=True)
class Rule:
    """How one path is treated, per method."""

    pattern: str  # an exact path, or a regular expression when `regex`
    open: frozenset[str] = NONE  # methods served without a token
    activity: frozenset[str] = NONE  # methods that are user activity (idle clock)
    wakes: frozenset[str] = NONE  # methods that may wake a sleeping GPU backend
    regex: bool = False

    def matches(self, path: str) -> bool:
        return bool(re.fullmatch(self.pattern, path)) if self.regex else path == self.pattern


def _work(pattern: str, *methods: str, regex: bool = False) -> Rule:
    """A documented call that does work: token, activity, and it wakes the GPU."""
    return Rule(pattern, activity=frozenset(methods), wakes=frozenset(methods), regex=regex)


# The table. Paths not listed need the token, are not activity and wake nothing.
RULES: tuple[Rule, ...] = (
    Rule("/healthz", open=GET),  # liveness
    # startup probe of the Cloud Run GPU service: 200 once the model is loaded, else 503
    Rule("/startup", open=GET),
    Rule("/", open=GET),  # the web page and its files
    Rule("/favicon.ico", open=GET),
    Rule(r"/static/[^/].*", open=GET, regex=True),
    # pollers: token, never activity, never wake (autostop, the gateway, monitoring)
    Rule("/readyz"),
    Rule("/v1/ready"),
    Rule("/metrics"),
    Rule("/openapi.json"),
    # the web page asks for it when it opens, so the VM boots while the user types
    Rule("/v1/status", wakes=frozenset({"GET"})),
    Rule("/v1/models", activity=frozenset({"GET"})),
    _work("/v1/images/generations", "POST"),
    _work("/v1/translations", "POST"),
    _work("/v1/jobs", "POST"),
    _work(f"/v1/jobs/{JOB_ID}", "GET", "DELETE", regex=True),
    _work(f"/v1/jobs/{JOB_ID}/events", "GET", regex=True),
)


@dataclass(frozen=True)
class Treatment:
    open: bool
    activity: bool
    wakes: bool


def treatment(method: str, path: str) -> Treatment:
    """How `method path` is treated; `path` must come from `normalise`."""
    for rule in RULES:
        if rule.matches(path):
            return Treatment(method in rule.open, method in rule.activity, method in rule.wakes)
    return Treatment(False, False, False)


# -- the one form of the path -----------------------------------------------------------


class BadPath(ValueError):
    """A request target refused before any decision (see `normalise`)."""


_ENCODED_SEPARATOR = re.compile(rb"%(2f|5c)", re.IGNORECASE)


def normalise(raw_path: bytes) -> tuple[str, bytes]:
    """The decided form of a raw request path: (decoded path, raw path to forward).

    Refuses (BadPath) encoded separators, backslashes, dot segments and control
    characters, and anything that is not UTF-8; collapses repeated slashes and drops a
    trailing one. Case is kept (`/V1/STATUS` is not `/v1/status`).
    """
    if not raw_path.startswith(b"/"):
        raise BadPath("the request path must start with '/'")
    if _ENCODED_SEPARATOR.search(raw_path) or b"\\" in raw_path:
        raise BadPath("encoded '/' or '\\' in the request path")
    decoded = unquote_to_bytes(raw_path)
    if any(b < 0x20 or b == 0x7F for b in decoded):
        raise BadPath("control characters in the request path")
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadPath("the request path is not UTF-8") from exc
    if any(segment in (".", "..") for segment in text.split("/")):
        raise BadPath("'.' or '..' segments in the request path")
    raw = re.sub(rb"/{2,}", b"/", raw_path)
    if len(raw) > 1:
        raw = raw.rstrip(b"/") or b"/"
    return re.sub(r"/{2,}", "/", text).rstrip("/") or "/", raw


# -- errors both sides send ---------------------------------------------------------------


def error_response(
    status: int,
    code: str | None,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, object] | None = None,
) -> JSONResponse:
    """OpenAI's error shape, `{"error": {"message", "type", "param", "code", **extra}}`:
    every error of the service (`text2img.api.errors`) and of the gateway is built here."""
    error = {"message": message, "type": type_, "param": param, "code": code, **(extra or {})}
    body = {"error": error}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


class Refusal(Enum):
    """Why the guard answered instead of the app."""

    BAD_PATH = "bad_path"  # 400
    THROTTLED = "throttled"  # 429: too many wrong tokens from this client
    NO_CREDENTIAL = "no_credential"  # 401, not counted against the client
    BAD_CREDENTIAL = "bad_credential"  # 401, counted
    TOO_LARGE = "too_large"  # 413
    TOO_SLOW = "too_slow"  # 408: the body did not arrive in time


KEY_SOURCES = (
    "TEXT2IMG_API_TOKEN's value (local) or the output of "
    "`pulumi stack output token --show-secrets` (cloud)"
)


def jittered(seconds: int) -> int:
    """Retry-After with up to a third more, so refused clients do not all return at once
    (the gateway's wake answers and the service's full queue alike)."""
    return seconds + random.randint(0, seconds // 3)


def refusal_response(
    refusal: Refusal, retry_after: int | None = None, detail: str = ""
) -> JSONResponse:
    """The JSON answer to a request the guard refused (service and gateway alike)."""
    if refusal is Refusal.BAD_PATH:
        return error_response(
            400,
            "invalid_path",
            f"{detail or 'the request path is not allowed'}; use the documented paths",
        )
    if refusal is Refusal.THROTTLED:
        seconds = retry_after or 1
        return error_response(
            429,
            "auth_throttled",
            "too many requests with a wrong API token from this client; retry after "
            f"{seconds} s with the right one ({KEY_SOURCES})",
            type_="rate_limit_error",
            headers={"Retry-After": str(seconds)},
        )
    if refusal in (Refusal.NO_CREDENTIAL, Refusal.BAD_CREDENTIAL):
        what = "missing" if refusal is Refusal.NO_CREDENTIAL else "wrong"
        return error_response(
            401,
            "invalid_api_key",
            f"the API token is {what}: send `Authorization: Bearer <token>` with {KEY_SOURCES}",
            type_="authentication_error",
            headers={"WWW-Authenticate": 'Bearer realm="text2img"'},
        )
    if refusal is Refusal.TOO_LARGE:
        return error_response(
            413,
            "body_too_large",
            f"the request body is larger than {MAX_BODY_BYTES} bytes; API requests are "
            "small JSON objects",
        )
    return error_response(
        408, "body_timeout", "the request body did not arrive in time; send it in one go"
    )


# -- the web page's headers (the service's `/`, `/static/*` and the gateway's copies) -----

CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
UI_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

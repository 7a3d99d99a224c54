"""The front door shared by the service and the gateway: which request is it, who is
calling, are they allowed, and is their request body small and quick enough, all decided
before any handler runs.

A pure ASGI middleware, so that nothing reads a body before the token is checked:

0. the path: `text2img.front_door.normalise` makes the one form every decision below (and
   the route, and the gateway's proxy) uses, or the request gets 400 `invalid_path`;
1. the client key (the socket peer, or the last `X-Forwarded-For` entry when a trusted
   proxy appends it) and the failed-token throttle: a blocked client gets 429 at once;
2. the bearer token (constant time), unless the table opens this method and path: no
   token gets 401 (not counted: a poller without a token locks nobody out), a wrong one
   gets 401 and counts towards the throttle;
3. the body: a declared `Content-Length` over the limit gets 413 at once; otherwise the
   body is read (chunked too) with a running count that answers 413 as soon as the limit
   is passed, and a deadline that answers 408 when the client sends too slowly.

Every early answer carries `Connection: close`, so the server drops the connection rather
than reading (and discarding) the rest of a hostile upload. Only `starlette` types are
imported: the gateway image has no FastAPI extras it does not need.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from text2img.auth import FailureThrottle, bearer_from_header, token_matches
from text2img.front_door import (
    MAX_BODY_BYTES,
    BadPath,
    Refusal,
    normalise,
    refusal_response,
    treatment,
)

BODY_TIMEOUT_S = 30.0
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


def client_key(scope: Scope, trust_forwarded: bool) -> str:
    """The address the throttle counts failures against.

    With `trust_forwarded` the LAST `X-Forwarded-For` entry: a proxy such as Cloud Run's
    front end or the gateway appends the address it saw, after whatever the client sent,
    so earlier entries are the client's own words and the last one is the proxy's.
    Without it, the socket peer (a client can forge any header).
    """
    if trust_forwarded:
        entries = [
            part.strip()
            for name, value in scope.get("headers", ())
            if name == b"x-forwarded-for"
            for part in value.decode("latin-1").split(",")
        ]
        entries = [e for e in entries if e]
        if entries:
            return entries[-1]
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class _TooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


@dataclass(frozen=True)
class GuardPolicy:
    """What the guard enforces; `token=None` means no authentication (local use)."""

    token: str | None
    throttle: FailureThrottle
    trust_forwarded: bool = False
    max_body_bytes: int = MAX_BODY_BYTES
    body_timeout_s: float = BODY_TIMEOUT_S
    on_auth_failure: Callable[[], None] | None = None


class RequestGuard:
    """Throttle, token and body limits in front of an ASGI app (see the module docstring).

    It records `client` (the throttle key) and, when it refused a token, `auth_failed`
    in the scope's state, for handlers and metrics behind it; `scope["path"]` and
    `scope["raw_path"]` become the normalised path the decisions were made on.
    """

    def __init__(self, app: ASGIApp, policy: GuardPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self.policy
        state = scope.setdefault("state", {})
        client = client_key(scope, policy.trust_forwarded)
        state["client"] = client
        try:
            path, raw_path = normalise(scope.get("raw_path") or scope["path"].encode())
        except BadPath as exc:
            await self._refuse(Refusal.BAD_PATH, None, scope, receive, send, str(exc))
            return
        # decide, route and (in the gateway) forward the same path
        scope["path"], scope["raw_path"] = path, raw_path
        headers = Headers(scope=scope)
        if policy.token is not None and not treatment(scope["method"], path).open:
            refusal, wait = self._check_token(client, headers.get("authorization"))
            if refusal is not None:
                state["auth_failed"] = True
                await self._refuse(refusal, wait, scope, receive, send)
                return
        declared = _declared_length(headers)
        if declared is not None and declared > policy.max_body_bytes:
            await self._refuse(Refusal.TOO_LARGE, None, scope, receive, send)
            return
        if (
            scope["method"] in BODYLESS_METHODS
            and declared is None
            and ("transfer-encoding" not in headers)
        ):
            await self.app(scope, receive, send)
            return
        try:
            async with asyncio.timeout(policy.body_timeout_s):
                body = await _read_body(receive, policy.max_body_bytes)
        except _TooLarge:
            await self._refuse(Refusal.TOO_LARGE, None, scope, receive, send)
            return
        except TimeoutError:
            await self._refuse(Refusal.TOO_SLOW, None, scope, receive, send)
            return
        except _ClientGone:
            return
        await self.app(scope, _replay(body, receive), send)

    def _check_token(
        self, client: str, authorization: str | None
    ) -> tuple[Refusal | None, int | None]:
        policy = self.policy
        assert policy.token is not None
        presented = bearer_from_header(authorization)
        if presented is None:
            # no credential at all is not a guess: refused, never counted, so a poller
            # without a token cannot get its address (or a proxy's) blocked
            return Refusal.NO_CREDENTIAL, None
        wait = policy.throttle.retry_after(client)
        if wait is not None:
            return Refusal.THROTTLED, max(1, math.ceil(wait))
        if token_matches(presented, policy.token):
            policy.throttle.success(client)
            return None, None
        policy.throttle.failure(client)
        if policy.on_auth_failure is not None:
            policy.on_auth_failure()
        return Refusal.BAD_CREDENTIAL, None

    async def _refuse(
        self,
        refusal: Refusal,
        wait: int | None,
        scope: Scope,
        receive: Receive,
        send: Send,
        detail: str = "",
    ) -> None:
        response = refusal_response(refusal, wait, detail)
        # the rest of the body is never read: close instead of keeping the connection
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


def _declared_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    try:
        return max(0, int(value))
    except ValueError:
        return None


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The whole body, refused as soon as it passes `limit` bytes (chunked or not)."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then the real channel (so
    the app still hears a client disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay

"""Stream a request to the service and its response back, without buffering bodies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping

import httpx
from starlette.requests import ClientDisconnect, Request
from starlette.responses import StreamingResponse

# RFC 9110 §7.6.1 connection-specific headers, plus what the proxy itself must set
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Method overrides are dropped: the gateway decided on the request's own method, and the
# service must see that method only (https://www.rfc-editor.org/rfc/rfc9110#section-9.1)
DROP_REQUEST = HOP_BY_HOP | {
    "host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-forwarded-for",
    "x-forwarded-proto",
}
# uvicorn adds its own
DROP_RESPONSE = HOP_BY_HOP | {"server", "date"}


log = logging.getLogger("text2img.gateway")

# the final event of an event stream the service broke off (OpenAI's error event shape)
STREAM_BROKEN = (
    "event: error\ndata: "
    + json.dumps(
        {
            "type": "error",
            "error": {
                "message": "the service on the GPU VM stopped answering in the middle of "
                "this stream (it may have stopped or restarted); try again",
                "type": "server_error",
                "param": None,
                "code": "upstream_failed",
            },
        }
    )
    + "\n\n"
).encode()


class UpstreamDown(Exception):
    """The service did not accept the connection (the VM stopped or is booting)."""


class UpstreamFailed(Exception):
    """The service accepted the connection but gave no answer (timeout, broken connection)."""

    def __init__(self, message: str, *, timeout: bool) -> None:
        super().__init__(message)
        self.timeout = timeout


class ClientGone(Exception):
    """The client disconnected before the service answered."""


def _filtered(headers: list[tuple[str, str]], drop: frozenset[str]) -> list[tuple[str, str]]:
    named_in_connection = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [
        (name, value)
        for name, value in headers
        if name.lower() not in drop and name.lower() not in named_in_connection
    ]


async def _send_unless_client_leaves(
    client: httpx.AsyncClient, req: httpx.Request, request: Request, body_sent: asyncio.Event
) -> httpx.Response:
    """Wait for the service's response headers; if the client disconnects meanwhile, drop
    the upstream connection too, so the service cancels the job instead of finishing it
    for nobody (a generation can take minutes)."""
    send = asyncio.ensure_future(client.send(req, stream=True))
    watch = asyncio.ensure_future(_client_disconnect(request, body_sent))
    try:
        await asyncio.wait({send, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (send, watch):
            if not task.done():
                task.cancel()
    if not send.done() or send.cancelled():
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await send
        raise ClientGone
    try:
        return send.result()
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise UpstreamDown(str(exc)) from exc
    except ClientDisconnect as exc:  # the client left while its body was being forwarded
        raise ClientGone from exc
    except httpx.TimeoutException as exc:
        raise UpstreamFailed(type(exc).__name__, timeout=True) from exc
    except httpx.HTTPError as exc:
        raise UpstreamFailed(f"{type(exc).__name__}: {exc}", timeout=False) from exc


async def _client_disconnect(request: Request, body_sent: asyncio.Event) -> None:
    """Returns when the client disconnects (only listens once the body was forwarded)."""
    await body_sent.wait()
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def timeouts(connect_s: float, read_s: float) -> httpx.Timeout:
    """Connect fast (a sleeping VM must not hold the request), read long (generation)."""
    return httpx.Timeout(connect=connect_s, read=read_s, write=60.0, pool=10.0)


def upstream_url(base_url: str, raw_path: bytes, query: bytes) -> httpx.URL:
    """`base_url` with exactly this raw path and query: nothing re-normalises the path
    (dot segments and encoded separators never get here: `text2img.front_door`)."""
    target = raw_path + (b"?" + query if query else b"")
    return httpx.URL(base_url).copy_with(raw_path=target)


async def forward(
    request: Request,
    base_url: str,
    client: httpx.AsyncClient,
    client_ip: str,
    *,
    extra_headers: Mapping[str, str] | None = None,
) -> StreamingResponse:
    """Send `request` to `base_url` (at the raw path the guard checked) and stream the
    answer back; `extra_headers` are the backend's own (e.g. an ID token).

    Raises UpstreamDown when the connection cannot be made (nothing was sent yet, so the
    caller may answer "waking" instead).
    """
    scope = request.scope
    url = upstream_url(
        base_url, scope.get("raw_path") or scope["path"].encode(), scope["query_string"]
    )
    headers = _filtered(
        [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
        DROP_REQUEST,
    )
    headers.extend((extra_headers or {}).items())
    headers.append(("x-forwarded-for", client_ip))
    headers.append(("x-forwarded-proto", request.headers.get("x-forwarded-proto", "https")))
    has_body = request.method not in ("GET", "HEAD", "OPTIONS", "DELETE") or (
        "content-length" in request.headers or "transfer-encoding" in request.headers
    )
    body_sent = asyncio.Event()

    async def request_body() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            yield chunk
        body_sent.set()

    if not has_body:
        body_sent.set()
    upstream_req = client.build_request(
        request.method,
        url,
        headers=headers,
        content=request_body() if has_body else None,
    )
    resp = await _send_unless_client_leaves(client, upstream_req, request, body_sent)

    events = resp.headers.get("content-type", "").startswith("text/event-stream")

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            # the service died mid-answer: the status is sent already, so say it in the
            # stream (a final error event) and log one line, not a traceback
            log.warning("the service broke off %s %s: %r", request.method, url.path, exc)
            if events:
                yield STREAM_BROKEN
        finally:
            await resp.aclose()

    response = StreamingResponse(body(), status_code=resp.status_code)
    # replace Starlette's defaults by the upstream's headers (repeated ones kept)
    response.raw_headers = [
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, v in _filtered(list(resp.headers.multi_items()), DROP_RESPONSE)
    ]
    return response

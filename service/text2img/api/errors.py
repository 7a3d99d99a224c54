"""OpenAI-style JSON errors everywhere: `{"error": {"message", "type", "param", "code"}}`.

Validation errors name the field; unexpected exceptions are logged with an id and the
client gets that id, never a stack trace.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from text2img import front_door
from text2img.api.failures import JobError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error response with an OpenAI-style body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    @classmethod
    def from_job(cls, error: JobError, **kwargs: Any) -> ApiError:
        return cls(
            error.status,
            error.message,
            type=error.type,
            code=error.code,
            param=error.param,
            **kwargs,
        )


# a stopping service is usually back (restarted container or re-woken VM) within this
SHUTDOWN_RETRY_AFTER_S = 10


def error_response(exc: ApiError) -> JSONResponse:
    headers = dict(exc.headers)
    if exc.code == "shutting_down":
        headers.setdefault("Retry-After", str(SHUTDOWN_RETRY_AFTER_S))
    return front_door.error_response(
        exc.status,
        exc.code,
        exc.message,
        type_=exc.type,
        param=exc.param,
        headers=headers,
        extra=exc.extra,
    )


def _field_name(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None, str]:
    errors = exc.errors()
    if not errors:
        return "the request is invalid", None, "invalid_request"
    first = errors[0]
    field = _field_name(tuple(first.get("loc", ())))
    kind = str(first.get("type", ""))
    if kind == "json_invalid":
        return "the request body is not valid JSON", None, "invalid_json"
    if kind == "missing" and field is None:
        return "the request needs a JSON body", None, "missing_body"
    msg = str(first.get("msg", "is invalid"))
    if kind == "extra_forbidden":
        msg = "is not a field this endpoint accepts (check the spelling)"
    elif kind == "missing":
        msg = "is required"
    elif kind == "model_attributes_type" or kind == "dict_type":
        return "the request body must be a JSON object", None, "invalid_body"
    text = f"{field}: {msg}" if field else msg
    more = len(errors) - 1
    if more:
        others = ", ".join(
            sorted({f for e in errors[1:] if (f := _field_name(tuple(e.get("loc", ()))))})
        )
        text += f" (and {more} more problem(s){': ' + others if others else ''})"
    return text, field, "invalid_value" if kind != "missing" else "missing_field"


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, field, code = _validation_message(exc)
    return error_response(ApiError(400, message, param=field, code=code))


_HTTP_TYPES = {401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error"}


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 404:
        message = f"no such endpoint or resource: {request.method} {request.url.path}"
    elif status == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    else:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    kind = _HTTP_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    code = None
    if status == 400:  # FastAPI could not parse the body (cause: the decoder's exception)
        message, code = _body_parse_error(exc.__cause__)
    return error_response(ApiError(status, message, type=kind, code=code, headers=exc.headers))


def _body_parse_error(cause: BaseException | None) -> tuple[str, str]:
    """A 400 for a body FastAPI could not decode, saying what was wrong with it."""
    if isinstance(cause, UnicodeDecodeError):
        return "the request body is not UTF-8 text; send JSON encoded as UTF-8", "invalid_encoding"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return (
            "the request body is not usable JSON: a number in it has too many digits",
            "invalid_json",
        )
    return "the request body is not valid JSON", "invalid_json"


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    incident = secrets.token_hex(4)
    log.error(
        "unexpected error %s on %s %s", incident, request.method, request.url.path, exc_info=exc
    )
    return error_response(
        ApiError(
            500,
            f"internal error (incident {incident}); see the service log",
            type="server_error",
            code="internal_error",
        )
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(Exception, _on_unexpected)

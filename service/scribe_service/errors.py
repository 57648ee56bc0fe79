"""Errors at the HTTP boundary: every failure leaves as one `ErrorResponse` shape.

Handlers raise; `install_error_handlers` translates once. Request validation errors become
422 with `param` naming the offending field (`messages[2].tool_call_id`); unknown exceptions
become 500 without leaking internals (they are logged with their traceback instead).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from scribe_client.protocol import ErrorDetail, ErrorResponse

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    422: "invalid_request",
    429: "overloaded",
    503: "unavailable",
}


class ServiceError(Exception):
    """An error with a status and a type, raised by handlers and translated once."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.type = type or _TYPES.get(status_code, "error")
        self.param = param
        self.headers = headers


class OverloadedError(ServiceError):
    """Too many trajectories already waiting for the judge: come back later (HTTP 429)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(429, message, headers={"Retry-After": str(retry_after)})


class UnavailableError(ServiceError):
    """The judge cannot be reached, so nothing can be scored now (HTTP 503)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(503, message, headers={"Retry-After": str(retry_after)})


class LibraryVersionError(ServiceError):
    """The request pins a library version other than the one serving (HTTP 409)."""

    def __init__(self, param: str, pinned: str, serving: str) -> None:
        super().__init__(
            409,
            f"{param}: the request is pinned to library version {pinned!r}, but version "
            f"{serving!r} is serving",
            type="library_version_mismatch",
            param=param,
        )
        self.serving = serving


class InvalidLibraryError(ServiceError):
    """A library reload was refused: the new directory does not load (HTTP 422). The message
    names the file and the field; the library already serving stays."""

    def __init__(self, message: str) -> None:
        super().__init__(422, message, type="invalid_library", param="prototypes_dir")


class InputLimitError(ServiceError):
    """A request within the schema but beyond a configured limit."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(422, f"{param}: {message}", param=param)


def error_response(
    status_code: int,
    message: str,
    *,
    type: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(
        error=ErrorDetail(
            type=type or _TYPES.get(status_code, "error"), message=message, param=param
        )
    )
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)


def field_path(loc: Sequence[Any]) -> str:
    """('body', 'messages', 2, 'assistant', 'content') -> 'messages[2].content'."""
    path = ""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    for i, part in enumerate(parts):
        if isinstance(part, int):
            path += f"[{part}]"
        elif i > 0 and isinstance(parts[i - 1], int) and part in _MESSAGE_TAGS:
            continue  # the discriminated union's tag adds nothing for the reader
        elif part.startswith(("function-after[", "function-before[")):
            continue
        else:
            path += f".{part}" if path else str(part)
    return path


_MESSAGE_TAGS = {"system", "developer", "user", "assistant", "tool"}


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = field_path(first.get("loc", ())) or None
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return error_response(422, message, param=param)


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return error_response(
        exc.status_code, str(exc), type=exc.type, param=exc.param, headers=exc.headers
    )


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail), headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error; see the service log", type="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)

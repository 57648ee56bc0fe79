"""The errors the clients raise, as one tree:

* RewardServiceError
  * ServiceConnectionError - the service could not be reached: connection refused, DNS
    failure, connect timeout, or the connection dropped mid-request.
  * ServiceTimeoutError - connected, but the response did not arrive within `timeout`.
  * ProtocolError - the service answered 2xx, but the body is not the expected model.
  * StatusError - the service answered with an error status.
    * InvalidRequestError - 400, 422: fix the request; `param` names the field at fault.
    * AuthenticationError - 401: missing or wrong API key.
    * NotFoundError - 404: e.g. an unknown prototype id.
    * LibraryVersionError - 409: `options.library_version` pins a library the service no
      longer (or not yet) serves; the message names the serving version.
    * PayloadTooLargeError - 413: split the batch or shorten the trajectory.
    * OverloadedError - 429: the service is at capacity.
    * ServiceUnavailableError - 503: the service is starting or a dependency is down.

Transient failures (connection refused, connect timeout, 429, 502, 503, 504) are retried
before one of these is raised, so catching `OverloadedError` means retries ran out.
Every error is raised ``from`` the exception that caused it, when there is one.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from .protocol import ErrorResponse

__all__ = [
    "AuthenticationError",
    "InvalidRequestError",
    "LibraryVersionError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "ProtocolError",
    "RewardServiceError",
    "ServiceConnectionError",
    "ServiceTimeoutError",
    "ServiceUnavailableError",
    "StatusError",
]

_MAX_BODY_IN_MESSAGE = 500


class RewardServiceError(Exception):
    """Base class of every error raised by `RewardClient` and `AsyncRewardClient`."""


class ServiceConnectionError(RewardServiceError):
    """The service could not be reached, or the connection failed mid-request."""


class ServiceTimeoutError(RewardServiceError):
    """The service accepted the connection but did not answer within the timeout."""


class ProtocolError(RewardServiceError):
    """The service answered, but the body does not parse as the expected response model."""


class StatusError(RewardServiceError):
    """The service answered with an HTTP error status.

    **Attributes:**

    * **status_code** - the HTTP status.
    * **error** - the parsed `ErrorResponse`, or None when the body was not one (e.g. a
      proxy's HTML page); **body** keeps the raw text either way.
    * **request_id** - the ``X-Request-ID`` response header, to quote in a bug report.
    * **message** and **param** - the server's explanation and the request field at fault.
    """

    def __init__(
        self,
        status_code: int,
        error: ErrorResponse | None = None,
        request_id: str | None = None,
        body: str = "",
        endpoint: str = "",
    ) -> None:
        self.status_code = status_code
        self.error = error
        self.request_id = request_id
        self.body = body
        self.endpoint = endpoint
        super().__init__(self._describe())

    @property
    def message(self) -> str:
        """The server's error message, or the start of the raw body when it sent none."""
        if self.error is not None:
            return self.error.error.message
        return self.body.strip()[:_MAX_BODY_IN_MESSAGE] or "(empty body)"

    @property
    def param(self) -> str | None:
        """The request field the server blamed, e.g. ``messages[2].tool_call_id``."""
        return None if self.error is None else self.error.error.param

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickling replays self.args, which holds only the message; trainers move
        # errors between processes (Ray, multiprocessing), so rebuild from the fields.
        fields = (self.status_code, self.error, self.request_id, self.body, self.endpoint)
        return (type(self), fields)

    def _describe(self) -> str:
        text = f"{self.status_code} {_reason(self.status_code)}"
        if self.endpoint:
            text += f" from {self.endpoint}"
        text += f": {self.message}"
        if self.param is not None:
            text += f" (param: {self.param})"
        if self.request_id is not None:
            text += f" [request id: {self.request_id}]"
        return text


class InvalidRequestError(StatusError):
    """400 or 422: the service rejected the request; `param` names the offending field."""


class AuthenticationError(StatusError):
    """401: the API key is missing or wrong (argument ``api_key`` or ``SCRIBE_API_KEY``)."""


class NotFoundError(StatusError):
    """404: no such route or resource, e.g. an unknown prototype id."""


class LibraryVersionError(StatusError):
    """409: the request pinned `options.library_version` and the service serves another one.

    Not retried: the same request is refused until the pin or the service's library changes."""


class PayloadTooLargeError(StatusError):
    """413: the request body exceeds the service's limit; send smaller batches."""


class OverloadedError(StatusError):
    """429: the service is at capacity and retries ran out."""


class ServiceUnavailableError(StatusError):
    """503: the service is not ready (still loading, or its judge is down) and retries ran out."""


def _reason(status_code: int) -> str:
    try:
        return HTTPStatus(status_code).phrase
    except ValueError:
        return "Error"

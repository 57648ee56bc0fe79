"""What both clients decide, without doing any I/O.

`RewardClient` and `AsyncRewardClient` differ only in how they send a request and how they
sleep between attempts. Configuration, request building, the retry policy and response
parsing all live here, so the twins cannot drift apart.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from ._constants import (
    DEFAULT_BASE_URL,
    ENV_API_KEY,
    ENV_BASE_URL,
    INITIAL_RETRY_DELAY,
    MAX_RETRY_AFTER_DELAY,
    MAX_RETRY_DELAY,
    REQUEST_ID_HEADER,
    RETRY_STATUS_CODES,
    USER_AGENT,
)
from .errors import (
    AuthenticationError,
    InvalidRequestError,
    LibraryVersionError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    ProtocolError,
    RewardServiceError,
    ServiceConnectionError,
    ServiceTimeoutError,
    ServiceUnavailableError,
    StatusError,
)
from .protocol import (
    BatchScoreRequest,
    BatchScoreResponse,
    ErrorResponse,
    ScoreRequest,
    ScoreResponse,
)

ModelT = TypeVar("ModelT", bound=BaseModel)

Outcome = httpx.Response | httpx.TransportError

logger = logging.getLogger("scribe_client")

_STATUS_ERRORS: dict[int, type[StatusError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    409: LibraryVersionError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    429: OverloadedError,
    503: ServiceUnavailableError,
}

NO_STATUSES: frozenset[int] = frozenset()


def resolve_base_url(base_url: str | None) -> str:
    url = base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
    return url.rstrip("/")


def resolve_api_key(api_key: str | None) -> str | None:
    return api_key or os.environ.get(ENV_API_KEY) or None


def coerce(model: type[ModelT], value: ModelT | Mapping[str, Any]) -> ModelT:
    """Validate a mapping into `model`; pydantic's ValidationError propagates unchanged."""
    if isinstance(value, model):
        return value
    return model.model_validate(value)


def batch_body(
    requests: BatchScoreRequest | Sequence[ScoreRequest | Mapping[str, Any]],
) -> BatchScoreRequest:
    if isinstance(requests, BatchScoreRequest):
        return requests
    return BatchScoreRequest(requests=[coerce(ScoreRequest, item) for item in requests])


def batch_results(body: BatchScoreRequest, response: BatchScoreResponse) -> list[ScoreResponse]:
    # Callers zip results with what they sent, so a short list must fail loudly here.
    if len(response.results) != len(body.requests):
        raise ProtocolError(
            f"POST /v1/score/batch sent {len(body.requests)} requests "
            f"but got {len(response.results)} results"
        )
    return response.results


def prototype_path(prototype_id: str) -> str:
    if not prototype_id:
        raise ValueError("prototype_id is empty")
    # An id is one path segment even if it contains "/".
    return f"/v1/prototypes/{quote(prototype_id, safe='')}"


def parse_retry_after(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), or None."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def backoff_delay(
    retry: int,
    *,
    base: float = INITIAL_RETRY_DELAY,
    cap: float = MAX_RETRY_DELAY,
    retry_after: float | None = None,
    retry_after_cap: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number `retry` (0 for the first retry).

    Full jitter over an exponential ceiling, ``min(cap, base * 2**retry)``: it spreads the
    retries of many callers (trainer workers, concurrent judge calls) instead of syncing them.
    A server that said when to come back (`retry_after`, from `parse_retry_after`) is taken at
    its word, up to `retry_after_cap` (`cap` unless given). The service's judge retries use
    this function too, so both sides of the wire back off alike.
    """
    if retry_after is not None:
        return min(retry_after, cap if retry_after_cap is None else retry_after_cap)
    return rng() * min(cap, base * 2.0**retry)


def is_transient(outcome: Outcome) -> bool:
    if isinstance(outcome, httpx.Response):
        return outcome.status_code in RETRY_STATUS_CODES
    # A failed connect means the server never saw the request, so retrying cannot double
    # the work. After a read timeout it may still be judging; a retry would only add load.
    return isinstance(outcome, httpx.ConnectError | httpx.ConnectTimeout)


def parse_model(response: httpx.Response, model: type[ModelT]) -> ModelT:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise ProtocolError(
            f"{_endpoint(response.request)} answered {response.status_code} with a body that "
            f"is not a valid {model.__name__}: {_summarise(exc)}"
        ) from exc


def parse_error(response: httpx.Response) -> ErrorResponse | None:
    try:
        return ErrorResponse.model_validate_json(response.content)
    except ValidationError:
        return None


def make_status_error(response: httpx.Response) -> StatusError:
    error_cls = _STATUS_ERRORS.get(response.status_code, StatusError)
    return error_cls(
        response.status_code,
        parse_error(response),
        response.headers.get(REQUEST_ID_HEADER),
        body=response.text,
        endpoint=_endpoint(response.request),
    )


def make_transport_error(
    request: httpx.Request, attempts: int, exc: httpx.TransportError
) -> RewardServiceError:
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return ServiceTimeoutError(
            f"{_endpoint(request)} timed out{tries} ({cause}); judging long trajectories is "
            "slow, so consider a larger `timeout`"
        )
    hint = ""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        hint = f"; is the service running there? (set `base_url` or {ENV_BASE_URL})"
    return ServiceConnectionError(f"{_endpoint(request)} failed{tries}: {cause}{hint}")


def _endpoint(request: httpx.Request) -> str:
    return f"{request.method} {request.url}"


def _summarise(exc: ValidationError, limit: int = 3) -> str:
    problems = [
        f"{'.'.join(str(part) for part in error['loc']) or '<body>'}: {error['msg']}"
        for error in exc.errors()[:limit]
    ]
    more = exc.error_count() - limit
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


class BaseRewardClient:
    """Configuration and decisions shared by `RewardClient` and `AsyncRewardClient`."""

    def __init__(
        self,
        base_url: str | None,
        *,
        api_key: str | None,
        timeout: float | httpx.Timeout,
        max_retries: int,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = resolve_base_url(base_url)
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.max_retries = max_retries
        self._api_key = resolve_api_key(api_key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def _build_request(
        self,
        http: httpx.Client | httpx.AsyncClient,
        method: str,
        path: str,
        body: BaseModel | None = None,
    ) -> httpx.Request:
        # build_request does no I/O; going through the injected client keeps its default
        # headers and cookies while the URL, auth and timeout are ours.
        return http.build_request(
            method,
            self.base_url + path,
            json=None if body is None else body.model_dump(mode="json", exclude_none=True),
            headers=self._headers(),
            timeout=self.timeout,
        )

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _retry_delay(
        self, request: httpx.Request, attempt: int, outcome: Outcome, answers: frozenset[int]
    ) -> float | None:
        """Seconds to wait before retrying, or None when `outcome` is final.

        `attempt` counts from 0; `answers` are statuses that are this route's answer
        rather than a failure (a 503 from /readyz is "not ready yet", not "retry").
        """
        if isinstance(outcome, httpx.Response) and (
            outcome.is_success or outcome.status_code in answers
        ):
            return None
        if attempt >= self.max_retries or not is_transient(outcome):
            return None
        delay = backoff_delay(attempt)
        if isinstance(outcome, httpx.Response):
            retry_after = parse_retry_after(outcome.headers)
            if retry_after is not None:
                delay = min(retry_after, MAX_RETRY_AFTER_DELAY)
        logger.info(
            "Retrying %s in %.2f s (retry %d of %d) after %s",
            _endpoint(request),
            delay,
            attempt + 1,
            self.max_retries,
            _outcome_name(outcome),
        )
        return delay

    def _parse(
        self, response: httpx.Response, model: type[ModelT], answers: frozenset[int]
    ) -> ModelT:
        if response.is_success:
            return parse_model(response, model)
        if response.status_code in answers:
            # The route's own body on this status, unless something in between (a proxy)
            # answered instead, which is a plain status error.
            try:
                return model.model_validate_json(response.content)
            except ValidationError:
                pass
        raise make_status_error(response)


def _outcome_name(outcome: Outcome) -> str:
    if isinstance(outcome, httpx.Response):
        return f"HTTP {outcome.status_code}"
    return type(outcome).__name__

"""`RewardClient` and `AsyncRewardClient`: the same methods, one blocking, one async.

They are written out side by side on purpose, as httpx does: each method is a line or two
over `BaseRewardClient`, so a change to one twin is easy to mirror in the other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import httpx
from pydantic import BaseModel

from ._base import (
    NO_STATUSES,
    BaseRewardClient,
    ModelT,
    batch_body,
    batch_results,
    coerce,
    make_transport_error,
    prototype_path,
)
from ._constants import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from .protocol import (
    BatchScoreRequest,
    BatchScoreResponse,
    HealthResponse,
    PrototypeDetail,
    PrototypeList,
    ReadyResponse,
    RouteRequest,
    RouteResponse,
    ScoreRequest,
    ScoreResponse,
)

__all__ = ["AsyncRewardClient", "RewardClient"]

BatchInput = BatchScoreRequest | Sequence[ScoreRequest | Mapping[str, Any]]

# /readyz answers 503 with a ReadyResponse while the service is loading.
_NOT_READY = frozenset({503})


class RewardClient(BaseRewardClient):
    """A blocking client for the scribe-reward service.

    ```python
    with RewardClient() as client:
        result = client.score({"prompt": "2 + 2?", "completion": "2 + 2 = 4."})
    ```

    **Parameters:**

    * **base_url** - the service root, e.g. ``http://scribe:8000``. Falls back to the
      ``SCRIBE_URL`` environment variable, then ``http://127.0.0.1:8000``.
    * **api_key** - sent as ``Authorization: Bearer <key>``. Falls back to
      ``SCRIBE_API_KEY``; without either, no Authorization header is sent.
    * **timeout** - seconds, or an ``httpx.Timeout``. The default waits 300 s for a response,
      because judging a long trajectory is slow, and 5 s for a connection.
    * **max_retries** - retries of a transient failure (connection refused, connect timeout,
      HTTP 429, 502, 503, 504), honouring ``Retry-After``. Anything else raises at once.
    * **http_client** - an ``httpx.Client`` to send with (proxies, TLS, tests). Its
      ``base_url`` and timeout are not used, and ``close()`` leaves it open: it is yours.

    Environment variables are read once, when the client is built. Every method raises a
    `RewardServiceError` subclass on failure (see `scribe_client.errors`); a dict request
    that does not validate raises pydantic's ``ValidationError`` before anything is sent.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)
        self._owns_http = http_client is None
        self._http = httpx.Client() if http_client is None else http_client
        self._sleep: Callable[[float], None] = time.sleep

    def score(self, request: ScoreRequest | Mapping[str, Any]) -> ScoreResponse:
        """Score one trajectory."""
        body = coerce(ScoreRequest, request)
        return self._call("POST", "/v1/score", ScoreResponse, body)

    def score_batch(self, requests: BatchInput) -> list[ScoreResponse]:
        """Score several trajectories in one call; results come back in request order."""
        body = batch_body(requests)
        response = self._call("POST", "/v1/score/batch", BatchScoreResponse, body)
        return batch_results(body, response)

    def route(self, request: RouteRequest | Mapping[str, Any]) -> RouteResponse:
        """Segment a trajectory and route each step to a skill prototype, without judging."""
        body = coerce(RouteRequest, request)
        return self._call("POST", "/v1/route", RouteResponse, body)

    def prototypes(self) -> PrototypeList:
        """List the skill prototypes the service routes to."""
        return self._call("GET", "/v1/prototypes", PrototypeList)

    def prototype(self, prototype_id: str) -> PrototypeDetail:
        """Fetch one prototype with its rubric levels, failure modes and exemplars."""
        return self._call("GET", prototype_path(prototype_id), PrototypeDetail)

    def health(self) -> HealthResponse:
        """Check that the process is up (GET /healthz)."""
        return self._call("GET", "/healthz", HealthResponse)

    def ready(self) -> ReadyResponse:
        """Check readiness (GET /readyz); a not-ready service returns ``ready=False``."""
        return self._call("GET", "/readyz", ReadyResponse, answers=_NOT_READY)

    def close(self) -> None:
        """Close the connection pool, unless it belongs to an injected ``http_client``."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(
        self,
        method: str,
        path: str,
        model: type[ModelT],
        body: BaseModel | None = None,
        *,
        answers: frozenset[int] = NO_STATUSES,
    ) -> ModelT:
        request = self._build_request(self._http, method, path, body)
        return self._parse(self._send(request, answers), model, answers)

    def _send(self, request: httpx.Request, answers: frozenset[int]) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                delay = self._retry_delay(request, attempt, exc, answers)
                if delay is None:
                    raise make_transport_error(request, attempt + 1, exc) from exc
            else:
                delay = self._retry_delay(request, attempt, response, answers)
                if delay is None:
                    return response
                response.close()
            self._sleep(delay)
            attempt += 1


class AsyncRewardClient(BaseRewardClient):
    """An asyncio client for the scribe-reward service, the twin of `RewardClient`.

    ```python
    async with AsyncRewardClient() as client:
        results = await client.score_batch(group)
    ```

    It takes the same parameters as `RewardClient`, except that **http_client** is an
    ``httpx.AsyncClient``, and ``aclose()`` (not ``close()``) releases the connections.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)
        self._owns_http = http_client is None
        self._http = httpx.AsyncClient() if http_client is None else http_client
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def score(self, request: ScoreRequest | Mapping[str, Any]) -> ScoreResponse:
        """Score one trajectory."""
        body = coerce(ScoreRequest, request)
        return await self._call("POST", "/v1/score", ScoreResponse, body)

    async def score_batch(self, requests: BatchInput) -> list[ScoreResponse]:
        """Score several trajectories in one call; results come back in request order."""
        body = batch_body(requests)
        response = await self._call("POST", "/v1/score/batch", BatchScoreResponse, body)
        return batch_results(body, response)

    async def route(self, request: RouteRequest | Mapping[str, Any]) -> RouteResponse:
        """Segment a trajectory and route each step to a skill prototype, without judging."""
        body = coerce(RouteRequest, request)
        return await self._call("POST", "/v1/route", RouteResponse, body)

    async def prototypes(self) -> PrototypeList:
        """List the skill prototypes the service routes to."""
        return await self._call("GET", "/v1/prototypes", PrototypeList)

    async def prototype(self, prototype_id: str) -> PrototypeDetail:
        """Fetch one prototype with its rubric levels, failure modes and exemplars."""
        return await self._call("GET", prototype_path(prototype_id), PrototypeDetail)

    async def health(self) -> HealthResponse:
        """Check that the process is up (GET /healthz)."""
        return await self._call("GET", "/healthz", HealthResponse)

    async def ready(self) -> ReadyResponse:
        """Check readiness (GET /readyz); a not-ready service returns ``ready=False``."""
        return await self._call("GET", "/readyz", ReadyResponse, answers=_NOT_READY)

    async def aclose(self) -> None:
        """Close the connection pool, unless it belongs to an injected ``http_client``."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        model: type[ModelT],
        body: BaseModel | None = None,
        *,
        answers: frozenset[int] = NO_STATUSES,
    ) -> ModelT:
        request = self._build_request(self._http, method, path, body)
        return self._parse(await self._send(request, answers), model, answers)

    async def _send(self, request: httpx.Request, answers: frozenset[int]) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.send(request)
            except httpx.TransportError as exc:
                delay = self._retry_delay(request, attempt, exc, answers)
                if delay is None:
                    raise make_transport_error(request, attempt + 1, exc) from exc
            else:
                delay = self._retry_delay(request, attempt, response, answers)
                if delay is None:
                    return response
                await response.aclose()
            await self._sleep(delay)
            attempt += 1

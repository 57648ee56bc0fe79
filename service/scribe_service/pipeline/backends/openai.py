"""A judge behind an OpenAI-compatible `/chat/completions` endpoint: vLLM first, llama.cpp's
servers too. Transport failures and error statuses become the `JudgeError` tree; a 4xx that
says the prompt does not fit the model's context becomes `JudgeContextExceeded`."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Literal

import httpx

from scribe_client._base import parse_retry_after
from scribe_service.pipeline.backends.base import (
    Completion,
    Messages,
    Sampling,
    output_tokens,
    reply_text,
)
from scribe_service.pipeline.judge_errors import (
    JudgeConnectionLost,
    JudgeContextExceeded,
    JudgeHTTPError,
    JudgeInvalidOutput,
    JudgeTimeout,
    JudgeUnavailable,
    is_context_exceeded,
)
from scribe_service.pipeline.logprob import TOP_LOGPROBS

log = logging.getLogger(__name__)

Dialect = Literal["auto", "json_schema", "json_object"]

SHARD_CONNECTIONS = 2
"""Connections per pool: calls are spread over many small pools, never one large one.
httpcore walks its whole pool on every request and every response, once per idle connection
(quadratic in the pool's size): with 64 calls in flight in one pool that walk was most of the
service's CPU per step. bench/judge_client.py: about 2.9 ms of CPU per call in one pool of
64, 1.2 ms in pools of 8, 0.8 ms in pools of 2 (1 is no cheaper)."""


def _response_format(dialect: str, schema: dict[str, Any]) -> dict[str, Any]:
    if dialect == "json_object":
        # llama.cpp's server: json_schema is rejected, a schema beside json_object is enforced.
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}}


def detect_dialect(model_entry: dict[str, Any]) -> Literal["json_schema", "json_object"]:
    """The structured-output dialect of the server that listed `model_entry` in `/models`.

    llama.cpp's servers name themselves in `owned_by` (llama-cpp-python says "me", llama.cpp's
    own server "llamacpp") and take a schema beside `json_object`; everything else (vLLM says
    "vllm", OpenAI its organisation) gets the standard `json_schema`.
    """
    return "json_object" if model_entry.get("owned_by") in ("me", "llamacpp") else "json_schema"


def _api_base(url: str) -> str:
    url = url.rstrip("/")
    return url if httpx.URL(url).path not in ("", "/") else f"{url}/v1"


def _sampling_fields(sampling: Sampling) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
    }
    if sampling.seed is not None:
        fields["seed"] = sampling.seed
    return fields


def _status_error(response: httpx.Response) -> JudgeHTTPError | JudgeContextExceeded:
    text = response.text
    # 4xx only: a 5xx that mentions the context is the server's problem, worth a retry.
    if 400 <= response.status_code < 500 and is_context_exceeded(text):
        return JudgeContextExceeded(
            f"the prompt does not fit the judge's context (HTTP {response.status_code}): "
            f"{text[:300]}"
        )
    return JudgeHTTPError(
        response.status_code, text[:300], retry_after=parse_retry_after(response.headers)
    )


class OpenAIJudge:
    """A judge behind an OpenAI-compatible `/chat/completions` endpoint.

    With `dialect="auto"` the structured-output dialect is read from the server's `/models`
    on the first check or call (`detect_dialect`). Up to `max_connections` calls are sent at
    once, each over a kept-alive connection of the least busy of its pools
    (`SHARD_CONNECTIONS`); a given `transport` is used as the one pool.
    """

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        dialect: Dialect = "auto",
        timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = _api_base(url)
        # Parsed once: a path would be parsed and joined to the base URL again on every call.
        self._chat_url = httpx.URL(f"{self.url}/chat/completions")
        pools = 1 if transport is not None else -(-max_connections // SHARD_CONNECTIONS)
        per_pool = -(-max_connections // pools)
        # One TLS context for all pools: each client would load the CA bundle again (~15 ms).
        verify = httpx.create_ssl_context() if transport is None else True
        self._clients = [
            httpx.AsyncClient(
                base_url=self.url,
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
                transport=transport,
                verify=verify,
                # One connection per call in flight, all kept alive: httpx's default pool (100,
                # 20 kept) would queue calls past 100 inside the client, where the judge's batch
                # cannot see them, and reconnect for most calls above 20.
                limits=httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool),
            )
            for _ in range(pools)
        ]
        self._busy = [0] * pools
        """Calls in flight per pool: a call goes to the least busy, so while fewer than
        `max_connections` are in flight it never waits inside a full pool."""
        self._model = model
        self._dialect: str | None = None if dialect == "auto" else dialect

    @property
    def model(self) -> str:
        return self._model or "(not resolved)"

    @property
    def dialect(self) -> str:
        return self._dialect or "auto"

    async def _request(self, method: str, path: str | httpx.URL, **kwargs: Any) -> dict[str, Any]:
        pool = self._busy.index(min(self._busy))
        self._busy[pool] += 1
        try:
            response = await self._clients[pool].request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise JudgeTimeout(f"judge did not answer in time ({type(exc).__name__})") from exc
        except (httpx.ConnectError, httpx.UnsupportedProtocol) as exc:
            raise JudgeUnavailable(f"cannot reach the judge: {type(exc).__name__}: {exc}") from exc
        except httpx.TransportError as exc:
            raise JudgeConnectionLost(
                f"connection to the judge failed mid-call: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            self._busy[pool] -= 1
        if response.status_code != 200:
            raise _status_error(response)
        try:
            body = response.json()
        except ValueError as exc:
            raise JudgeInvalidOutput(f"judge reply is not JSON: {response.text[:200]!r}") from exc
        if not isinstance(body, dict):
            raise JudgeInvalidOutput(f"judge reply is not an object: {body!r:.200}")
        return body

    async def check(self) -> None:
        body = await self._request("GET", "/models")
        models = [m for m in body.get("data") or [] if isinstance(m, dict) and "id" in m]
        if self._model is None:
            if not models:
                raise JudgeUnavailable("the judge server lists no model")
            self._model = str(models[0]["id"])
        if self._dialect is None:
            entry = next((m for m in models if m["id"] == self._model), models[0] if models else {})
            self._dialect = detect_dialect(entry)
            log.info(
                "judge %s at %s: structured output as %s", self._model, self.url, self._dialect
            )

    async def _chat(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await self._request("POST", self._chat_url, json={"model": self.model, **payload})

    async def complete(
        self, messages: Messages, schema: dict[str, Any], sampling: Sampling
    ) -> Completion:
        if self._model is None or self._dialect is None:
            await self.check()
        body = await self._chat(
            {
                "messages": messages,
                **_sampling_fields(sampling),
                "response_format": _response_format(self.dialect, schema),
            }
        )
        return Completion(reply_text(body), output_tokens(body), served_by=self.url)

    async def score_token(self, messages: Messages, sampling: Sampling) -> Completion:
        # No grammar here: the score is read from the alternatives, never from the token
        # sampled, and a constraint would only hide a judge that does not answer with a digit.
        payload = {
            "messages": messages,
            **_sampling_fields(replace(sampling, max_tokens=1)),
            "logprobs": True,
            "top_logprobs": TOP_LOGPROBS,
        }
        if self._model is None:
            await self.check()
        body = await self._chat(payload)
        return Completion(
            reply_text(body, allow_length=True),
            output_tokens(body),
            top_logprobs=_first_top_logprobs(body),
            served_by=self.url,
        )

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


def _first_top_logprobs(body: dict[str, Any]) -> tuple[tuple[str, float], ...] | None:
    """The first output token's alternatives, from the chat `logprobs.content[0]`."""
    try:
        first = body["choices"][0]["logprobs"]["content"][0]
        top = first["top_logprobs"]
        return tuple((str(t["token"]), float(t["logprob"])) for t in top)
    except (KeyError, IndexError, TypeError, ValueError):
        return None

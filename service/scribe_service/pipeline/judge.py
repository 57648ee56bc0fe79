"""Stage 4: ask an LLM judge for a verdict on one step, and validate it.

Two backends implement `JudgeBackend`: `OpenAIJudge` talks to any OpenAI-compatible server
(vLLM first, llama.cpp's server too) and `EmbeddedJudge` runs llama.cpp in-process on the
bundled GGUF. `Judge` wraps a backend with the one global bound on calls in flight, a
per-call timeout and bounded retries.

A verdict is trusted only after validation: an integer score 0-3 and failure modes from the
prototype's own list. Neither engine enforces every schema constraint, so validation is not
optional. When the judge cannot give a valid verdict the step fails with a `JudgeError`
whose `type` says why; it never turns into a score.

Error tree (`type` in parentheses, as reported per step):

    JudgeError
    ├── JudgeUnavailable (judge_unavailable)        cannot connect / model not loaded
    ├── JudgeConnectionLost (judge_connection_lost) connected, then dropped before replying
    ├── JudgeTimeout (judge_timeout)                no reply within the timeout
    ├── JudgeHTTPError (judge_http)                 the server answered an error status
    └── JudgeInvalidOutput (judge_invalid_output)   a reply that is not a valid verdict
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import httpx

from scribe_service.library import Prototype
from scribe_service.metrics import Metrics
from scribe_service.resilience import JudgeHealth, RetryBudget, backoff_delay

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
MAX_FAILURE_MODES = 2


class JudgeError(Exception):
    type = "judge_error"
    transient = False


class JudgeUnavailable(JudgeError):
    type = "judge_unavailable"
    transient = True


class JudgeConnectionLost(JudgeError):
    """Reached the judge, but the connection broke before a full reply."""

    type = "judge_connection_lost"
    transient = True


class JudgeTimeout(JudgeError):
    type = "judge_timeout"
    transient = True


class JudgeHTTPError(JudgeError):
    type = "judge_http"

    def __init__(self, status_code: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"judge answered HTTP {status_code}: {message}")
        self.status_code = status_code
        self.transient = status_code == 429 or status_code >= 500
        self.retry_after = retry_after
        """Seconds the judge asked us to wait (its `Retry-After`), if it said."""


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):  # absent, or the HTTP-date form nobody's judge sends
        return None


class JudgeInvalidOutput(JudgeError):
    type = "judge_invalid_output"
    transient = True  # sampling again may well produce a valid verdict


@dataclass(frozen=True)
class Verdict:
    score: int
    failure_modes: tuple[str, ...]
    rationale: str


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    max_tokens: int = 200
    seed: int | None = 0


class JudgeBackend(Protocol):
    @property
    def model(self) -> str:
        """The judge model's name, reported with every score."""
        ...

    async def complete(self, messages: Messages, schema: dict[str, Any], sampling: Sampling) -> str:
        """The judge's raw reply text, or a `JudgeError`."""
        ...

    async def check(self) -> None:
        """Return if the judge can answer now, else raise a `JudgeError`."""
        ...

    async def aclose(self) -> None: ...


# --- verdict validation --------------------------------------------------------------------

_FENCED_JSON = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.DOTALL)
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def verdict_schema(prototype: Prototype) -> dict[str, Any]:
    """The JSON schema a reply must satisfy; engines may enforce it only in part."""
    return {
        "type": "object",
        # Reason first, then verdict: the order the grammar makes the model write them in.
        "properties": {
            "rationale": {"type": "string", "maxLength": 240},
            "failure_modes": {
                "type": "array",
                "items": {"type": "string", "enum": list(prototype.failure_mode_ids())},
                # Small judges otherwise enumerate every mode on the menu.
                "maxItems": min(MAX_FAILURE_MODES, len(prototype.failure_modes)),
            },
            "score": {"type": "integer", "enum": [0, 1, 2, 3]},
        },
        "required": ["rationale", "failure_modes", "score"],
        "additionalProperties": False,
    }


def _first_object(text: str) -> dict[str, Any]:
    text = _THINK_BLOCK.sub("", text).strip()
    fenced = _FENCED_JSON.search(text)
    if fenced:
        text = fenced.group(1)
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and "score" in value:
            return value
    raise JudgeInvalidOutput(f"no JSON verdict in the judge's reply: {text[:200]!r}")


def parse_verdict(raw: str, prototype: Prototype) -> Verdict:
    """Validate a reply against `prototype`; the score is capped by the failure modes found."""
    data = _first_object(raw)
    score = data.get("score")
    if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 3:
        raise JudgeInvalidOutput(f"score must be an integer 0-3, got {score!r}")
    modes = data.get("failure_modes", [])
    if not isinstance(modes, list) or not all(isinstance(m, str) for m in modes):
        raise JudgeInvalidOutput(f"failure_modes must be a list of ids, got {modes!r}")
    caps = {mode.id: mode.max_score for mode in prototype.failure_modes}
    unknown = sorted(set(modes) - caps.keys())
    if unknown:
        raise JudgeInvalidOutput(f"failure modes not in prototype {prototype.id!r}: {unknown}")
    rationale = data.get("rationale", "")
    if not isinstance(rationale, str):
        raise JudgeInvalidOutput(f"rationale must be a string, got {rationale!r}")
    found = tuple(dict.fromkeys(modes))
    return Verdict(
        score=min([score, *(caps[m] for m in found)]),
        failure_modes=found,
        rationale=rationale.strip(),
    )


# --- backends ------------------------------------------------------------------------------


def _response_format(dialect: str, schema: dict[str, Any]) -> dict[str, Any]:
    if dialect == "json_object":
        # llama.cpp's server: json_schema is rejected, a schema beside json_object is enforced.
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}}


def _api_base(url: str) -> str:
    url = url.rstrip("/")
    return url if httpx.URL(url).path not in ("", "/") else f"{url}/v1"


class OpenAIJudge:
    """A judge behind an OpenAI-compatible `/chat/completions` endpoint."""

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        dialect: str = "json_schema",
        timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=_api_base(url),
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            transport=transport,
        )
        self._model = model
        self.dialect = dialect

    @property
    def model(self) -> str:
        return self._model or "(not resolved)"

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise JudgeTimeout(f"judge did not answer in time ({type(exc).__name__})") from exc
        except (httpx.ConnectError, httpx.UnsupportedProtocol) as exc:
            raise JudgeUnavailable(f"cannot reach the judge: {type(exc).__name__}: {exc}") from exc
        except httpx.TransportError as exc:
            raise JudgeConnectionLost(
                f"connection to the judge failed mid-call: {type(exc).__name__}: {exc}"
            ) from exc
        if response.status_code != 200:
            raise JudgeHTTPError(
                response.status_code, response.text[:300], retry_after=_retry_after(response)
            )
        try:
            body = response.json()
        except ValueError as exc:
            raise JudgeInvalidOutput(f"judge reply is not JSON: {response.text[:200]!r}") from exc
        if not isinstance(body, dict):
            raise JudgeInvalidOutput(f"judge reply is not an object: {body!r:.200}")
        return body

    async def check(self) -> None:
        body = await self._request("GET", "/models")
        if self._model is None:
            models = body.get("data") or []
            if not models or not isinstance(models[0], dict) or "id" not in models[0]:
                raise JudgeUnavailable("the judge server lists no model")
            self._model = str(models[0]["id"])

    async def complete(self, messages: Messages, schema: dict[str, Any], sampling: Sampling) -> str:
        if self._model is None:
            await self.check()
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": sampling.temperature,
            "max_tokens": sampling.max_tokens,
            "response_format": _response_format(self.dialect, schema),
        }
        if sampling.seed is not None:
            payload["seed"] = sampling.seed
        body = await self._request("POST", "/chat/completions", json=payload)
        return _reply_text(body)

    async def aclose(self) -> None:
        await self._client.aclose()


def _reply_text(body: dict[str, Any]) -> str:
    try:
        choice = body["choices"][0]
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise JudgeInvalidOutput(f"judge reply has no message content: {body!r:.200}") from exc
    if choice.get("finish_reason") == "length":
        raise JudgeInvalidOutput("judge reply was cut off at max_tokens")
    if not isinstance(content, str):
        raise JudgeInvalidOutput(f"judge message content is not text: {content!r:.200}")
    return content


class EmbeddedJudge:
    """llama.cpp in-process on a GGUF model: the default when no judge server is configured.

    One model instance cannot run two completions at once, so calls are serialised; the
    blocking work runs in a thread so the event loop stays free for other requests. A RAM
    cache of model states, keyed by token prefix, lets a prompt that starts like an earlier
    one (same system prompt and rubric) skip evaluating that prefix again: on a CPU, prompt
    evaluation is most of a verdict's cost.
    """

    STATE_CACHE_BYTES = 1 << 30

    def __init__(
        self, model_path: Path, *, model: str, n_ctx: int = 4096, n_threads: int | None = None
    ) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_cache import LlamaRAMCache

        self.model = model
        self._llama = Llama(
            model_path=str(model_path),
            n_ctx=n_ctx,
            # llama.cpp's own default is half the cores; the judge is the bottleneck, use them all.
            n_threads=n_threads or os.cpu_count(),
            verbose=False,
        )
        self._llama.set_cache(LlamaRAMCache(capacity_bytes=self.STATE_CACHE_BYTES))
        self._lock = asyncio.Lock()

    async def check(self) -> None:
        return None

    def tokenize(self, text: str) -> list[int]:
        return list(self._llama.tokenize(text.encode()))

    async def complete(self, messages: Messages, schema: dict[str, Any], sampling: Sampling) -> str:
        def run() -> dict[str, Any]:
            result = self._llama.create_chat_completion(
                messages=cast(Any, messages),
                response_format={"type": "json_object", "schema": schema},
                temperature=sampling.temperature,
                max_tokens=sampling.max_tokens,
                seed=sampling.seed,
            )
            return cast(dict[str, Any], result)

        async with self._lock:
            try:
                body = await asyncio.to_thread(run)
            except ValueError as exc:  # llama.cpp raises ValueError when the prompt overflows
                raise JudgeInvalidOutput(f"embedded judge rejected the prompt: {exc}") from exc
        return _reply_text(body)

    async def aclose(self) -> None:
        self._llama.close()


# --- the retrying, bounded judge -----------------------------------------------------------


class Judge:
    """Bounded, retrying access to a backend: `verdict()` returns a Verdict or raises.

    Transient failures (cannot connect, timeouts, 429 and 5xx, invalid output) are retried
    up to `max_attempts` with jittered exponential backoff, while the retry budget allows and
    the judge is not known to be down; anything else fails the step at once.
    """

    def __init__(
        self,
        backend: JudgeBackend,
        *,
        concurrency: int,
        timeout: float,
        max_attempts: int,
        sampling: Sampling,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
        retry_budget: RetryBudget | None = None,
        health: JudgeHealth | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.backend = backend
        self.health = health or JudgeHealth()
        self._metrics = metrics or Metrics()
        self._slots = asyncio.Semaphore(concurrency)
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._sampling = sampling
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._budget = retry_budget or RetryBudget(ratio=0.2)

    async def _call(self, messages: Messages, prototype: Prototype, sampling: Sampling) -> Verdict:
        outcome = "ok"
        try:
            async with self._slots:
                with self._metrics.judge_in_flight.track_inprogress():
                    raw = await self._complete(messages, prototype, sampling)
            return parse_verdict(raw, prototype)
        except JudgeError as exc:
            outcome = exc.type
            raise
        finally:
            self._metrics.judge_calls.labels(outcome).inc()

    async def _complete(self, messages: Messages, prototype: Prototype, sampling: Sampling) -> str:
        try:
            raw = await asyncio.wait_for(
                self.backend.complete(messages, verdict_schema(prototype), sampling), self._timeout
            )
        except TimeoutError as exc:
            raise JudgeTimeout(f"no verdict within {self._timeout:g}s") from exc
        except JudgeUnavailable as exc:
            self.health.record_unreachable(str(exc))
            raise
        except JudgeError:
            self.health.record_answer()  # a bad answer is still an answer: the judge is there
            raise
        self.health.record_answer()
        return raw

    def _no_retry_reason(self, exc: JudgeError, attempt: int) -> str | None:
        if not exc.transient or attempt == self._max_attempts:
            return "" if attempt == 1 else f"after {attempt} attempts"
        if isinstance(exc, JudgeUnavailable) and not self.health.available:
            return "not retried: the judge is marked unavailable"
        if not self._budget.try_spend():
            self._metrics.judge_retries_denied.inc()
            return "not retried: the retry budget is spent"
        return None

    async def verdict(self, messages: Messages, prototype: Prototype) -> Verdict:
        sampling = self._sampling
        self._budget.record_attempt()
        for attempt in range(1, self._max_attempts + 1):
            try:
                return await self._call(messages, prototype, sampling)
            except JudgeError as exc:
                reason = self._no_retry_reason(exc, attempt)
                if reason is not None:
                    if reason:
                        exc.args = (f"{exc} ({reason})",)
                    raise
                log.warning("judge attempt %d failed (%s): %s", attempt, exc.type, exc)
                self._metrics.judge_retries.inc()
                if isinstance(exc, JudgeInvalidOutput):
                    # A greedy retry would repeat the same reply; sample a little instead.
                    sampling = Sampling(
                        temperature=max(sampling.temperature, 0.5),
                        max_tokens=sampling.max_tokens,
                        seed=None if sampling.seed is None else sampling.seed + attempt,
                    )
                    continue
                retry_after = exc.retry_after if isinstance(exc, JudgeHTTPError) else None
                await asyncio.sleep(
                    backoff_delay(
                        attempt, base=self._backoff, cap=self._backoff_max, retry_after=retry_after
                    )
                )
        raise AssertionError("unreachable")  # the loop returns or raises

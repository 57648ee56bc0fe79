"""Stage 4: ask an LLM judge for a verdict on one step, and validate it.

Two backends implement `JudgeBackend`: `OpenAIJudge` talks to any OpenAI-compatible server
(vLLM first, llama.cpp's server too) and `EmbeddedJudge` runs llama.cpp in-process on the
bundled GGUF; `replicas.ReplicaPool` spreads calls over several servers. `Judge` wraps a
backend with the one global bound on calls in flight, a per-call timeout and bounded retries.

Two modes. `verdict` (the default) asks for a JSON verdict (short rationale, failure modes,
score) under an enforced schema. `logprob` asks for the score digit alone, one output token,
and reads the judge's probabilities for 0-3 from `top_logprobs` (see `logprob.py`): an
expected score that is continuous and deterministic, for one output token per step.
Sampling (temperature, top_p, seed, max_tokens) is sent on every call, never left to the
server's defaults (vLLM would apply the model's generation_config).

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
    ├── JudgeInvalidOutput (judge_invalid_output)   a reply that is not a valid verdict
    └── JudgeLowScoreMass (judge_low_score_mass)    logprob mode: too little probability on 0-3
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import httpx

from scribe_service.library import Prototype
from scribe_service.metrics import Metrics
from scribe_service.pipeline.logprob import TOP_LOGPROBS, score_distribution
from scribe_service.resilience import JudgeHealth, RetryBudget, backoff_delay

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
JudgeMode = Literal["verdict", "logprob"]
Dialect = Literal["auto", "json_schema", "json_object"]
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


class JudgeLowScoreMass(JudgeError):
    """Logprob mode: the judge put too little probability on the score tokens to trust."""

    type = "judge_low_score_mass"
    # Not transient: the same prompt gives the same distribution.


@dataclass(frozen=True)
class Verdict:
    score: int
    failure_modes: tuple[str, ...] = ()
    rationale: str | None = None
    expected_score: float | None = None
    """Logprob mode: Σ s·p(s) over the scores 0-3."""
    score_mass: float | None = None
    """Logprob mode: the probability that fell on the four score tokens."""
    served_by: str | None = None
    """The judge server that answered (its base URL), when the judge is a server."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    max_tokens: int = 200
    seed: int | None = 0
    top_p: float = 1.0


@dataclass(frozen=True)
class Completion:
    """What a backend got back for one call."""

    text: str
    output_tokens: int | None = None
    """Tokens generated, from the server's `usage` (None when it did not say)."""
    top_logprobs: tuple[tuple[str, float], ...] | None = None
    """The first output token's most likely alternatives, (token, logprob), when asked for."""
    served_by: str | None = None


class JudgeBackend(Protocol):
    @property
    def model(self) -> str:
        """The judge model's name, reported with every score."""
        ...

    async def complete(
        self, messages: Messages, schema: dict[str, Any], sampling: Sampling
    ) -> Completion:
        """The judge's reply under `schema`, or a `JudgeError`."""
        ...

    async def score_token(self, messages: Messages, sampling: Sampling) -> Completion:
        """One output token with its `TOP_LOGPROBS` alternatives (logprob mode)."""
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


def logprob_verdict(completion: Completion, min_score_mass: float) -> Verdict:
    """A verdict from one score token's alternatives; refused when they say too little."""
    if not completion.top_logprobs:
        raise JudgeInvalidOutput("the judge returned no logprobs for its score token")
    distribution = score_distribution(completion.top_logprobs)
    if distribution.mass < min_score_mass:
        raise JudgeLowScoreMass(
            f"only {distribution.mass:.3f} of the judge's probability fell on the score tokens "
            f"0-3 (minimum {min_score_mass:g}); it would have answered {completion.text!r:.40}"
        )
    return Verdict(
        score=distribution.argmax,
        expected_score=distribution.expected,
        score_mass=round(distribution.mass, 4),
    )


# --- backends ------------------------------------------------------------------------------


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


class OpenAIJudge:
    """A judge behind an OpenAI-compatible `/chat/completions` endpoint.

    With `dialect="auto"` the structured-output dialect is read from the server's `/models`
    on the first check or call (`detect_dialect`).
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
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = _api_base(url)
        self._client = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            transport=transport,
        )
        self._model = model
        self._dialect: str | None = None if dialect == "auto" else dialect

    @property
    def model(self) -> str:
        return self._model or "(not resolved)"

    @property
    def dialect(self) -> str:
        return self._dialect or "auto"

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
        return await self._request(
            "POST", "/chat/completions", json={"model": self.model, **payload}
        )

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
        return Completion(_reply_text(body), _output_tokens(body), served_by=self.url)

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
            _reply_text(body, allow_length=True),
            _output_tokens(body),
            top_logprobs=_first_top_logprobs(body),
            served_by=self.url,
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def _reply_text(body: dict[str, Any], allow_length: bool = False) -> str:
    try:
        choice = body["choices"][0]
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise JudgeInvalidOutput(f"judge reply has no message content: {body!r:.200}") from exc
    if choice.get("finish_reason") == "length" and not allow_length:
        raise JudgeInvalidOutput("judge reply was cut off at max_tokens")
    if content is None and allow_length:
        content = ""
    if not isinstance(content, str):
        raise JudgeInvalidOutput(f"judge message content is not text: {content!r:.200}")
    return content


def _output_tokens(body: dict[str, Any]) -> int | None:
    usage = body.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) else None


def _first_top_logprobs(body: dict[str, Any]) -> tuple[tuple[str, float], ...] | None:
    """The first output token's alternatives, from the chat `logprobs.content[0]`."""
    try:
        first = body["choices"][0]["logprobs"]["content"][0]
        top = first["top_logprobs"]
        return tuple((str(t["token"]), float(t["logprob"])) for t in top)
    except (KeyError, IndexError, TypeError, ValueError):
        return None


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

    async def _run(self, messages: Messages, sampling: Sampling, **kwargs: Any) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            result = self._llama.create_chat_completion(
                messages=cast(Any, messages),
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                seed=sampling.seed,
                **kwargs,
            )
            return cast(dict[str, Any], result)

        async with self._lock:
            try:
                return await asyncio.to_thread(run)
            except ValueError as exc:  # llama.cpp raises ValueError when the prompt overflows
                raise JudgeInvalidOutput(f"embedded judge rejected the prompt: {exc}") from exc

    async def complete(
        self, messages: Messages, schema: dict[str, Any], sampling: Sampling
    ) -> Completion:
        body = await self._run(
            messages, sampling, response_format={"type": "json_object", "schema": schema}
        )
        return Completion(_reply_text(body), _output_tokens(body))

    async def score_token(self, messages: Messages, sampling: Sampling) -> Completion:
        # llama-cpp-python returns logprobs only from a model loaded with logits_all, which
        # keeps n_ctx x n_vocab floats (GBs for the bundled judge). The first sampler of the
        # chain sees the full next-token logits in token-id order, so a logits processor
        # reads them there instead, for free.
        from llama_cpp import Llama, LogitsProcessorList

        seen: list[Any] = []

        def capture(_input_ids: Any, logits: Any) -> Any:
            if not seen:
                seen.append(logits.copy())
            return logits

        body = await self._run(
            messages,
            replace(sampling, max_tokens=1),
            logits_processor=LogitsProcessorList([capture]),
        )
        if not seen:
            raise JudgeInvalidOutput("the embedded judge produced no logits")
        logprobs = Llama.logits_to_logprobs(seen[0])
        top = logprobs.argsort()[::-1][:TOP_LOGPROBS]
        alternatives = tuple(
            (self._llama.detokenize([int(token)]).decode(errors="replace"), float(logprobs[token]))
            for token in top
        )
        return Completion(
            _reply_text(body, allow_length=True), _output_tokens(body), top_logprobs=alternatives
        )

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
        mode: JudgeMode = "verdict",
        min_score_mass: float = 0.5,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
        retry_budget: RetryBudget | None = None,
        health: JudgeHealth | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.backend = backend
        self.health = health or JudgeHealth()
        self.mode: JudgeMode = mode
        """The mode used when a request does not choose one."""
        self.min_score_mass = min_score_mass
        self._metrics = metrics or Metrics()
        self._slots = asyncio.Semaphore(concurrency)
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._sampling = sampling
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._budget = retry_budget or RetryBudget(ratio=0.2)

    def sampling(self, mode: JudgeMode) -> Sampling:
        """What every first call in `mode` sends: logprob mode needs one output token."""
        return self._sampling if mode == "verdict" else replace(self._sampling, max_tokens=1)

    async def _call(
        self, messages: Messages, prototype: Prototype, sampling: Sampling, mode: JudgeMode
    ) -> Verdict:
        outcome = "ok"
        try:
            async with self._slots:
                with self._metrics.judge_in_flight.track_inprogress():
                    completion = await self._complete(messages, prototype, sampling, mode)
            if completion.output_tokens is not None:
                self._metrics.judge_output_tokens.labels(mode).inc(completion.output_tokens)
            if mode == "logprob":
                verdict = logprob_verdict(completion, self.min_score_mass)
            else:
                verdict = parse_verdict(completion.text, prototype)
            return replace(verdict, served_by=completion.served_by)
        except JudgeError as exc:
            outcome = exc.type
            raise
        finally:
            self._metrics.judge_calls.labels(outcome).inc()

    async def _complete(
        self, messages: Messages, prototype: Prototype, sampling: Sampling, mode: JudgeMode
    ) -> Completion:
        if mode == "logprob":
            call = self.backend.score_token(messages, sampling)
        else:
            call = self.backend.complete(messages, verdict_schema(prototype), sampling)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation
            # of a request deadline that lands as the call finishes.
            async with asyncio.timeout(self._timeout):
                completion = await call
        except TimeoutError as exc:
            raise JudgeTimeout(f"no verdict within {self._timeout:g}s") from exc
        except JudgeUnavailable as exc:
            self.health.record_unreachable(str(exc))
            raise
        except JudgeError:
            self.health.record_answer()  # a bad answer is still an answer: the judge is there
            raise
        self.health.record_answer()
        return completion

    def _no_retry_reason(self, exc: JudgeError, attempt: int) -> str | None:
        if not exc.transient or attempt == self._max_attempts:
            return "" if attempt == 1 else f"after {attempt} attempts"
        if isinstance(exc, JudgeUnavailable) and not self.health.available:
            return "not retried: the judge is marked unavailable"
        if not self._budget.try_spend():
            self._metrics.judge_retries_denied.inc()
            return "not retried: the retry budget is spent"
        return None

    async def verdict(
        self, messages: Messages, prototype: Prototype, mode: JudgeMode | None = None
    ) -> Verdict:
        mode = mode or self.mode
        sampling = self.sampling(mode)
        self._budget.record_attempt()
        for attempt in range(1, self._max_attempts + 1):
            try:
                return await self._call(messages, prototype, sampling, mode)
            except JudgeError as exc:
                reason = self._no_retry_reason(exc, attempt)
                if reason is not None:
                    if reason:
                        exc.args = (f"{exc} ({reason})",)
                    raise
                log.warning("judge attempt %d failed (%s): %s", attempt, exc.type, exc)
                self._metrics.judge_retries.inc()
                if isinstance(exc, JudgeInvalidOutput):
                    if mode == "verdict":
                        # A greedy retry would repeat the same reply; sample a little instead.
                        sampling = replace(
                            sampling,
                            temperature=max(sampling.temperature, 0.5),
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

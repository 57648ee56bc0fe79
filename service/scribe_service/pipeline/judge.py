"""Stage 5: ask an LLM judge for a verdict on one step, bounded and retried.

`Judge` wraps a backend (`backends.openai.OpenAIJudge` for a judge server, vLLM first;
`backends.embedded.EmbeddedJudge` for llama.cpp in-process; `replicas.ReplicaPool` for several
servers) with the one global bound on calls in flight, a per-call timeout and bounded
retries (tenacity), and validates what came back (`verdict.py`). When the judge cannot give
a valid verdict the step fails with a `JudgeError` whose `type` says why (`judge_errors.py`);
it never turns into a score.

Two modes. `verdict` (the default) asks for a JSON verdict (short rationale, failure modes,
score) under an enforced schema. `logprob` asks for the score digit alone, one output token,
and reads the judge's probabilities for 0-3 from `top_logprobs` (see `logprob.py`): an
expected score that is continuous and deterministic, for one output token per step.

This module also re-exports the names callers have always imported from it.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Literal

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from scribe_service.library import Prototype
from scribe_service.metrics import Metrics
from scribe_service.pipeline.backends.base import Completion, JudgeBackend, Messages, Sampling
from scribe_service.pipeline.backends.embedded import EmbeddedJudge
from scribe_service.pipeline.backends.openai import (
    Dialect,
    OpenAIJudge,
    _api_base,
    detect_dialect,
)
from scribe_service.pipeline.judge_errors import (
    JudgeConnectionLost,
    JudgeContextExceeded,
    JudgeError,
    JudgeHTTPError,
    JudgeInvalidOutput,
    JudgeLowScoreMass,
    JudgeNoLogprobs,
    JudgeTimeout,
    JudgeUnavailable,
    is_context_exceeded,
)
from scribe_service.pipeline.verdict import (
    MAX_FAILURE_MODES,
    Verdict,
    logprob_verdict,
    parse_verdict,
    verdict_schema,
)
from scribe_service.resilience import JudgeHealth, RetryBudget, backoff_delay

__all__ = [
    "MAX_FAILURE_MODES",
    "Completion",
    "Dialect",
    "EmbeddedJudge",
    "Judge",
    "JudgeBackend",
    "JudgeConnectionLost",
    "JudgeContextExceeded",
    "JudgeError",
    "JudgeHTTPError",
    "JudgeInvalidOutput",
    "JudgeLowScoreMass",
    "JudgeMode",
    "JudgeNoLogprobs",
    "JudgeTimeout",
    "JudgeUnavailable",
    "Messages",
    "OpenAIJudge",
    "Sampling",
    "Verdict",
    "_api_base",
    "detect_dialect",
    "is_context_exceeded",
    "logprob_verdict",
    "parse_verdict",
    "verdict_schema",
]

log = logging.getLogger(__name__)

JudgeMode = Literal["verdict", "logprob"]


def resample(sampling: Sampling, attempt: int) -> Sampling:
    """The sampling for the retry after invalid output on `attempt` (1-based): a greedy retry
    would repeat the same reply, so sample a little, with a seed of its own."""
    return replace(
        sampling,
        temperature=max(sampling.temperature, 0.5),
        seed=None if sampling.seed is None else sampling.seed + attempt,
    )


class Judge:
    """Bounded, retrying access to a backend: `verdict()` returns a Verdict or raises.

    Transient failures (cannot connect, timeouts, 429 and 5xx, invalid output) are retried
    up to `max_attempts` with jittered exponential backoff (a judge's Retry-After taken at its
    word, up to `backoff_max`), while the retry budget allows and the judge is not known to be
    down; anything else (a 4xx, a prompt longer than the judge's context, too little score
    mass) fails the step at once. Invalid output is retried at once, with sampling
    (`resample`).
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
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.backend = backend
        self.health = health or JudgeHealth()
        self.mode: JudgeMode = mode
        """The mode used when a request does not choose one."""
        self.min_score_mass = min_score_mass
        self._metrics = metrics or Metrics()
        self.concurrency = concurrency
        """Calls in flight at most, this judge and its `with_sampling` twins together."""
        self._slots = asyncio.Semaphore(concurrency)
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._sampling = sampling
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._budget = retry_budget or RetryBudget(ratio=0.2)
        self._sleep = sleep

    def with_sampling(self, sampling: Sampling) -> Judge:
        """This judge sending `sampling` instead: the same backend, mode, calls in flight,
        retry budget, health and metrics, so its calls count against this judge's bounds."""
        other = copy.copy(self)
        other._sampling = sampling
        return other

    def sampling(self, mode: JudgeMode) -> Sampling:
        """What every first call in `mode` sends: logprob mode needs one output token."""
        return self._sampling if mode == "verdict" else replace(self._sampling, max_tokens=1)

    async def _call(
        self, messages: Messages, prototype: Prototype, sampling: Sampling, mode: JudgeMode
    ) -> Verdict:
        outcome = "ok"
        try:
            completion = await self._slotted(
                lambda: self._request(messages, prototype, sampling, mode)
            )
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

    async def complete(
        self, messages: Messages, schema: dict[str, Any], sampling: Sampling
    ) -> Completion:
        """One structured call outside the verdict protocol (an instance rubric), bounded as
        a verdict's call is: in one of this judge's slots, within its timeout, its answer or
        silence recorded in its health. No retry and no parsing: those are the caller's."""
        return await self._slotted(lambda: self.backend.complete(messages, schema, sampling))

    def _request(
        self, messages: Messages, prototype: Prototype, sampling: Sampling, mode: JudgeMode
    ) -> Awaitable[Completion]:
        if mode == "logprob":
            return self.backend.score_token(messages, sampling)
        return self.backend.complete(messages, verdict_schema(prototype), sampling)

    async def _slotted(self, request: Callable[[], Awaitable[Completion]]) -> Completion:
        """`request()` in one of the slots, within the timeout, its outcome told to health."""
        async with self._slots:
            with self._metrics.judge_in_flight.track_inprogress():
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the
                    # cancellation of a request deadline that lands as the call finishes.
                    async with asyncio.timeout(self._timeout):
                        completion = await request()
                except TimeoutError as exc:
                    raise JudgeTimeout(f"no answer within {self._timeout:g}s") from exc
                except JudgeUnavailable as exc:
                    self.health.record_unreachable(str(exc))
                    raise
                except JudgeError:
                    self.health.record_answer()  # a bad answer is still an answer: it is there
                    raise
        self.health.record_answer()
        return completion

    # --- the retry policy, as tenacity's hooks ---------------------------------------------

    @staticmethod
    def _error(state: RetryCallState) -> JudgeError:
        # Only called after a failed attempt that `retry_if_exception_type` let through.
        assert state.outcome is not None
        exc = state.outcome.exception()
        assert isinstance(exc, JudgeError)
        return exc

    def _give_up(self, state: RetryCallState) -> bool:
        """Stop after this failed attempt? If so, say why in the error's message."""
        exc, attempt = self._error(state), state.attempt_number
        reason: str | None = None
        if not exc.transient or attempt >= self._max_attempts:
            reason = "" if attempt == 1 else f"after {attempt} attempts"
        elif isinstance(exc, JudgeUnavailable) and not self.health.available:
            reason = "not retried: the judge is marked unavailable"
        elif not self._budget.try_spend():  # spent last: only on a retry that will happen
            self._metrics.judge_retries_denied.inc()
            reason = "not retried: the retry budget is spent"
        if reason:
            exc.args = (f"{exc} ({reason})",)
        return reason is not None

    def _wait(self, state: RetryCallState) -> float:
        exc = self._error(state)
        if isinstance(exc, JudgeInvalidOutput):
            return 0.0  # the judge answered promptly, just badly: nothing to wait for
        return backoff_delay(
            state.attempt_number - 1,
            base=self._backoff,
            cap=self._backoff_max,
            retry_after=exc.retry_after if isinstance(exc, JudgeHTTPError) else None,
        )

    def _before_retry(self, state: RetryCallState) -> None:
        exc = self._error(state)
        log.warning("judge attempt %d failed (%s): %s", state.attempt_number, exc.type, exc)
        self._metrics.judge_retries.inc()

    def _retrying(self) -> AsyncRetrying:
        # One per call: an AsyncRetrying iterated with `async for` holds that call's state.
        return AsyncRetrying(
            retry=retry_if_exception_type(JudgeError),  # anything else is a bug: raise it
            stop=self._give_up,
            wait=self._wait,
            before_sleep=self._before_retry,
            sleep=self._sleep,
            reraise=True,
        )

    async def verdict(
        self, messages: Messages, prototype: Prototype, mode: JudgeMode | None = None
    ) -> Verdict:
        mode = mode or self.mode
        sampling = self.sampling(mode)
        self._budget.record_attempt()
        async for attempt in self._retrying():
            with attempt:
                return await self._call(messages, prototype, sampling, mode)
            # The attempt failed; tenacity decides on the next iteration whether to retry.
            failed = attempt.retry_state.outcome
            if mode == "verdict" and failed and isinstance(failed.exception(), JudgeInvalidOutput):
                sampling = resample(sampling, attempt.retry_state.attempt_number)
        raise AssertionError("unreachable")  # tenacity returns the verdict or raises

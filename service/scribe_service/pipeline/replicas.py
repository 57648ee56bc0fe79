"""Several judge servers behind one `JudgeBackend`: least-loaded routing and failover.

Each call goes to the replica with the fewest calls in flight among those marked up (ties to
the first listed). Every replica has its own `JudgeHealth`: calls that cannot connect, break
mid-reply, time out or get a 5xx count against it, any answer resets it, and after
`threshold` failures in a row it is taken out of the rotation; the periodic `check()` probes
every replica and lets one back in with its first successful probe. A call that could not
connect, lost its connection or got a 5xx moves on to the next replica at once (scoring is
idempotent, so a step cut off on a dying server is simply judged elsewhere); only when every
replica failed does the call fail, with `JudgeUnavailable` when none could be reached, which
is what marks the whole judge down for `Judge.health` (and /v1/score's 503). When no replica
is marked up, calls try them all anyway, so the pool never locks itself out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from scribe_service.pipeline.backends.base import Completion, Messages, Sampling
from scribe_service.pipeline.backends.openai import OpenAIJudge
from scribe_service.pipeline.judge_errors import (
    JudgeConnectionLost,
    JudgeError,
    JudgeHTTPError,
    JudgeTimeout,
    JudgeUnavailable,
)
from scribe_service.resilience import JudgeHealth, probe

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Replica:
    backend: OpenAIJudge
    health: JudgeHealth
    in_flight: int = 0

    @property
    def url(self) -> str:
        return self.backend.url


def _replica_failed(exc: JudgeError) -> bool:
    """Errors that say something about the server rather than about the request (a prompt
    too long for the context, a 4xx, an invalid verdict would be the same on any replica)."""
    if isinstance(exc, JudgeHTTPError):
        return exc.status_code >= 500
    return isinstance(exc, JudgeUnavailable | JudgeConnectionLost | JudgeTimeout)


class ReplicaPool:
    def __init__(
        self, backends: Sequence[OpenAIJudge], *, threshold: int = 3, check_timeout: float = 5.0
    ) -> None:
        if not backends:
            raise ValueError("a replica pool needs at least one judge server")
        self.replicas = [Replica(b, JudgeHealth(threshold=threshold)) for b in backends]
        self._check_timeout = check_timeout

    @property
    def model(self) -> str:
        return ",".join(dict.fromkeys(r.backend.model for r in self.replicas))

    def _order(self) -> list[Replica]:
        up = [r for r in self.replicas if r.health.available] or self.replicas
        return sorted(up, key=lambda r: r.in_flight)  # stable: ties keep the listed order

    @contextlib.contextmanager
    def _track(self, replica: Replica) -> Iterator[None]:
        replica.in_flight += 1
        try:
            yield
        finally:
            replica.in_flight -= 1

    async def _dispatch(self, call: Callable[[OpenAIJudge], Awaitable[Completion]]) -> Completion:
        failures: list[str] = []
        reachable = False
        last: JudgeError = JudgeUnavailable("the pool has no replica")
        for replica in self._order():
            try:
                with self._track(replica):
                    completion = await call(replica.backend)
            except JudgeError as exc:
                if not _replica_failed(exc):
                    replica.health.record_answer()
                    raise
                replica.health.record_unreachable(f"{replica.url}: {exc}")
                failures.append(f"{replica.url}: {exc}")
                reachable = reachable or not isinstance(exc, JudgeUnavailable)
                if isinstance(exc, JudgeTimeout):
                    raise  # the call's time is spent: no second server within it
                log.warning("judge replica %s failed (%s); trying the next", replica.url, exc.type)
                last = exc
                continue
            replica.health.record_answer()
            return completion
        if not reachable:
            raise JudgeUnavailable("no judge replica could be reached: " + "; ".join(failures))
        raise last

    async def complete(
        self, messages: Messages, schema: dict[str, Any], sampling: Sampling
    ) -> Completion:
        return await self._dispatch(lambda b: b.complete(messages, schema, sampling))

    async def score_token(self, messages: Messages, sampling: Sampling) -> Completion:
        return await self._dispatch(lambda b: b.score_token(messages, sampling))

    async def check(self) -> None:
        """Probe every replica and record what each said; fail only when none answered."""
        results = await asyncio.gather(
            *(probe(r.backend.check, self._check_timeout) for r in self.replicas)
        )
        for replica, result in zip(self.replicas, results, strict=True):
            # A busy single-slot server may not answer a probe mid-generation (see JudgeHealth).
            replica.health.record_probe(result, busy=replica.in_flight > 0)
        if all(result.error is not None for result in results):
            reasons = "; ".join(
                f"{r.url}: {result.error}" for r, result in zip(self.replicas, results, strict=True)
            )
            if any(result.timed_out for result in results):
                # Let the caller's probe see a timeout, which a busy judge is excused.
                raise TimeoutError(f"no judge replica answered in time: {reasons}")
            raise JudgeUnavailable(f"no judge replica answered: {reasons}")

    async def aclose(self) -> None:
        for replica in self.replicas:
            await replica.backend.aclose()

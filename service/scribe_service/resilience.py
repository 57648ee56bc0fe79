"""How the service treats a judge that fails: when to retry, how long to wait, how many retries
it may add overall, and whether the judge is reachable at all.

A training run sends rewards requests for days. When the judge stumbles, naive retries
multiply the load exactly when it can least take it, and a dead judge turns every request into
a slow failure. So: retries wait with jittered exponential backoff (and honour a judge's own
`Retry-After`), a budget caps retries to a fraction of first attempts, and `JudgeHealth`
marks the judge down after repeated connection failures or a failed probe. While it is down
the service answers 503 at once; a background probe lets requests back in when it returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

# One backoff policy and one Retry-After parser on both sides of the wire: the client's.
from scribe_client._base import backoff_delay, parse_retry_after

__all__ = [
    "JudgeHealth",
    "ProbeResult",
    "RetryBudget",
    "backoff_delay",
    "parse_retry_after",
    "probe",
]

log = logging.getLogger(__name__)


class RetryBudget:
    """Retries may add at most `ratio` extra calls per first attempt, over time.

    A token bucket: every first attempt deposits `ratio` tokens (up to `capacity`, which is
    also the starting reserve, so a quiet service can still retry a few isolated failures);
    every retry spends one. When the judge fails everything, retries dry up after the
    reserve instead of tripling the load.
    """

    def __init__(self, ratio: float, capacity: float = 10.0) -> None:
        self.ratio = ratio
        self.capacity = capacity
        self.tokens = capacity

    def record_attempt(self) -> None:
        self.tokens = min(self.capacity, self.tokens + self.ratio)

    def try_spend(self) -> bool:
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class JudgeHealth:
    """Whether the judge can be reached, from call outcomes and periodic probes.

    Down after `threshold` consecutive failures to reach it (calls that could not connect,
    probes that failed or got no answer in time); up again after any answer, to a call or a
    probe. One slow probe is not an outage: a single-slot server such as llama.cpp's may not
    answer `/models` while it generates, but then its verdicts keep resetting the count.
    Only reachability counts here: a judge that answers badly is a per-step failure.
    """

    def __init__(self, threshold: int = 3) -> None:
        self.threshold = threshold
        self.available = True
        self.reason: str | None = None
        self.changed_at = time.monotonic()
        self._unreachable = 0

    def record_answer(self) -> None:
        self._unreachable = 0
        if not self.available:
            self._set(True, None)

    def record_probe(self, result: ProbeResult, *, busy: bool = False) -> None:
        """Count a probe. A probe that timed out while our own calls are waiting on the judge
        proves nothing: a single-slot server (llama.cpp's) answers no probe mid-generation."""
        if result.error is None:
            self.record_answer()
        elif not (result.timed_out and busy):
            self.record_unreachable(result.error)

    def record_unreachable(self, reason: str) -> None:
        self._unreachable += 1
        if not self.available:
            self.reason = reason
        elif self._unreachable >= self.threshold:
            self._set(False, reason)

    def _set(self, available: bool, reason: str | None) -> None:
        self.available, self.reason, self.changed_at = available, reason, time.monotonic()
        if available:
            log.warning("judge is reachable again")
        else:
            log.error("judge marked unavailable: %s", reason)

    async def probe_forever(
        self,
        check: Callable[[], Awaitable[None]],
        *,
        interval: float,
        timeout: float,
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        """Probe every `interval` seconds until cancelled (run it as a task for the lifespan);
        `busy()` says whether the service has calls of its own waiting on the judge."""
        while True:
            self.record_probe(await probe(check, timeout), busy=busy())
            await asyncio.sleep(interval)


@dataclass(frozen=True)
class ProbeResult:
    error: str | None = None
    """None when the judge answered the check, else why not."""
    timed_out: bool = False


async def probe(check: Callable[[], Awaitable[None]], timeout: float) -> ProbeResult:
    """Run a judge check, bounded by `timeout`."""
    try:
        # Not asyncio.wait_for: on 3.11 it can swallow a cancellation that lands as the check
        # finishes, and the lifespan would then wait forever for the probe task to end.
        async with asyncio.timeout(timeout):
            await check()
    except TimeoutError:
        return ProbeResult(f"no answer within {timeout:g}s", timed_out=True)
    except Exception as exc:  # any failure of the check means "not reachable now"
        return ProbeResult(str(exc) or type(exc).__name__)
    return ProbeResult()

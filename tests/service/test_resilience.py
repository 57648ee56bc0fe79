from __future__ import annotations

import asyncio

import pytest

from scribe_service.pipeline.judge import JudgeUnavailable
from scribe_service.resilience import (
    JudgeHealth,
    ProbeResult,
    RetryBudget,
    backoff_delay,
    parse_retry_after,
    probe,
)


def test_backoff_is_jittered_exponential_under_a_cap() -> None:
    assert [backoff_delay(n, base=0.5, cap=3, rng=lambda: 1.0) for n in (0, 1, 2, 3)] == [
        0.5,
        1.0,
        2.0,
        3.0,
    ]
    assert backoff_delay(2, base=0.5, cap=3, rng=lambda: 0.25) == 0.5


def test_retry_after_is_the_wait_under_the_cap() -> None:
    # Taken at its word even when the jitter would have waited longer or shorter.
    assert backoff_delay(0, base=0.5, cap=10, retry_after=4, rng=lambda: 0.0) == 4
    assert backoff_delay(5, base=0.5, cap=10, retry_after=0.25, rng=lambda: 1.0) == 0.25
    assert backoff_delay(0, base=0.5, cap=10, retry_after=60, rng=lambda: 0.0) == 10
    assert backoff_delay(0, cap=10, retry_after=60, retry_after_cap=30) == 30


def test_the_service_and_the_client_share_one_backoff_and_one_parser() -> None:
    from scribe_client import _base

    assert backoff_delay is _base.backoff_delay
    assert parse_retry_after is _base.parse_retry_after


def test_retry_budget_refills_with_first_attempts() -> None:
    budget = RetryBudget(ratio=0.5, capacity=1.0)
    assert budget.try_spend() and not budget.try_spend()
    budget.record_attempt()
    assert not budget.try_spend()  # half a token
    budget.record_attempt()
    assert budget.try_spend()
    for _ in range(10):
        budget.record_attempt()
    assert budget.tokens == 1.0  # never more than the capacity


def test_health_trips_after_consecutive_unreachable_calls_only() -> None:
    health = JudgeHealth(threshold=3)
    health.record_unreachable("refused")
    health.record_unreachable("refused")
    health.record_answer()
    health.record_unreachable("refused")
    health.record_unreachable("refused")
    assert health.available
    health.record_unreachable("refused")
    assert not health.available and health.reason == "refused"
    health.record_answer()
    assert health.available and health.reason is None


def test_probes_count_like_calls() -> None:
    health = JudgeHealth(threshold=2)
    health.record_probe(ProbeResult("no answer within 5s", timed_out=True))
    assert health.available  # one slow probe: still up
    health.record_unreachable("connection refused")
    assert not health.available and health.reason == "connection refused"
    health.record_probe(ProbeResult("still refused"))
    assert health.reason == "still refused"
    health.record_probe(ProbeResult())
    assert health.available


def test_a_probe_timing_out_while_our_calls_wait_proves_nothing() -> None:
    health = JudgeHealth(threshold=1)
    health.record_probe(ProbeResult("no answer within 5s", timed_out=True), busy=True)
    assert health.available
    health.record_probe(ProbeResult("connection refused"), busy=True)  # refused is refused
    assert not health.available


@pytest.mark.anyio
async def test_probe_reports_errors_and_timeouts() -> None:
    async def ok() -> None:
        return None

    async def down() -> None:
        raise JudgeUnavailable("cannot reach the judge")

    async def hang() -> None:
        await asyncio.sleep(10)

    assert await probe(ok, 1) == ProbeResult()
    assert await probe(down, 1) == ProbeResult("cannot reach the judge")
    assert await probe(hang, 0.05) == ProbeResult("no answer within 0.05s", timed_out=True)

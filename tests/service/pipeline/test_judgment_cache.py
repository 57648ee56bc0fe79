from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from scribe_service.pipeline.judge import JudgeInvalidOutput, Sampling, Verdict
from scribe_service.pipeline.judgment_cache import (
    JudgmentCache,
    deterministic,
    entry_bytes,
    judgment_key,
)

pytestmark = pytest.mark.anyio

VERDICT = Verdict(score=2, rationale="fine", served_by="http://judge-a/v1")


class GatedJudge:
    """A judge call that waits for `gate`, counts its calls and answers `outcome`."""

    def __init__(self, outcome: Verdict | Exception = VERDICT) -> None:
        self.gate = asyncio.Event()
        self.outcome = outcome
        self.calls = 0
        self.cancelled = 0

    async def __call__(self) -> Verdict:
        self.calls += 1
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


async def _settle() -> None:
    """Let every task started so far run up to its next real wait."""
    for _ in range(5):
        await asyncio.sleep(0)


def _cache(entries: int = 100, max_bytes: int = 2**20) -> JudgmentCache:
    return JudgmentCache(max_entries=entries, max_bytes=max_bytes)


KEY_FIELDS: dict[str, Any] = {
    "judge_model": "m",
    "prototype_id": "p",
    "library_version": "v1",
    "mode": "verdict",
    "sampling": Sampling(),
    "min_score_mass": 0.5,
    "messages": [{"role": "user", "content": "grade this"}],
}


def test_the_key_is_stable_and_covers_everything_a_verdict_depends_on() -> None:
    key = judgment_key(**KEY_FIELDS)
    assert key == judgment_key(**dict(reversed(KEY_FIELDS.items())))
    assert len(key) == 64
    changed = {
        "judge_model": "other",
        "prototype_id": "q",
        "library_version": "v2",
        "mode": "logprob",
        "sampling": Sampling(max_tokens=1),
        "min_score_mass": 0.4,
        "messages": [{"role": "user", "content": "grade that"}],
    }
    keys = {judgment_key(**(KEY_FIELDS | {name: value})) for name, value in changed.items()}
    assert len(keys) == len(changed) and key not in keys


@pytest.mark.parametrize(
    ("mode", "temperature", "cacheable"),
    [
        ("verdict", 0.0, True),
        ("verdict", 0.7, False),
        ("logprob", 0.0, True),
        ("logprob", 1.0, True),
    ],
)
def test_only_deterministic_calls_are_cacheable(
    mode: str, temperature: float, cacheable: bool
) -> None:
    assert deterministic(mode, Sampling(temperature=temperature)) is cacheable


async def test_an_identical_call_is_judged_once() -> None:
    cache, judge = _cache(), GatedJudge()
    judge.gate.set()
    assert await cache.get_or_judge("k", judge) == (VERDICT, "miss")
    assert await cache.get_or_judge("k", judge) == (VERDICT, "hit")
    assert await cache.get_or_judge("other", judge) == (VERDICT, "miss")
    assert judge.calls == 2 and len(cache) == 2


async def test_concurrent_identical_calls_share_one_judge_call() -> None:
    cache, judge = _cache(), GatedJudge()
    waiting = [asyncio.create_task(cache.get_or_judge("k", judge)) for _ in range(8)]
    await _settle()  # every caller is now waiting on the one call
    assert judge.calls == 1 and len(cache) == 0
    judge.gate.set()
    results = await asyncio.gather(*waiting)
    assert judge.calls == 1
    assert [verdict for verdict, _ in results] == [VERDICT] * 8
    assert sorted(how for _, how in results) == ["coalesced"] * 7 + ["miss"]
    assert await cache.get_or_judge("k", judge) == (VERDICT, "hit")


async def test_a_failure_reaches_every_waiter_and_is_never_stored() -> None:
    cache, judge = _cache(), GatedJudge(JudgeInvalidOutput("no JSON"))
    waiting = [asyncio.create_task(cache.get_or_judge("k", judge)) for _ in range(3)]
    await _settle()
    judge.gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, JudgeInvalidOutput) for r in results)
    assert judge.calls == 1 and len(cache) == 0

    judge.outcome = VERDICT  # the judge recovers: the next identical call asks it again
    assert await cache.get_or_judge("k", judge) == (VERDICT, "miss")
    assert judge.calls == 2


async def test_a_caller_that_gives_up_leaves_the_call_to_the_others() -> None:
    cache, judge = _cache(), GatedJudge()
    first = asyncio.create_task(cache.get_or_judge("k", judge))
    second = asyncio.create_task(cache.get_or_judge("k", judge))
    await _settle()
    assert judge.calls == 1
    first.cancel()  # e.g. its request's deadline passed
    with pytest.raises(asyncio.CancelledError):
        await first
    judge.gate.set()
    assert await second == (VERDICT, "coalesced")
    assert judge.calls == 1 and judge.cancelled == 0


async def test_when_every_caller_gives_up_the_call_is_cancelled() -> None:
    cache, judge = _cache(), GatedJudge()
    only = asyncio.create_task(cache.get_or_judge("k", judge))
    await _settle()
    assert judge.calls == 1
    only.cancel()
    with pytest.raises(asyncio.CancelledError):
        await only
    await _settle()  # let the cancelled call unwind
    assert judge.cancelled == 1 and len(cache) == 0
    judge.gate.set()
    assert await cache.get_or_judge("k", judge) == (VERDICT, "miss")  # a fresh call
    assert judge.calls == 2


def test_least_recently_used_entries_leave_first() -> None:
    cache = _cache(entries=2)
    cache.put("a", VERDICT)
    cache.put("b", VERDICT)
    assert cache.get("a") == VERDICT  # now "b" is the least recently used
    cache.put("c", VERDICT)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (VERDICT, None, VERDICT)
    assert len(cache) == 2


def test_the_byte_bound_evicts_and_an_oversized_verdict_is_not_stored() -> None:
    big = replace(VERDICT, rationale="x" * 1000)
    size = entry_bytes("a", big)
    cache = _cache(max_bytes=2 * size + size // 2)
    for key in "abc":
        cache.put(key, big)
    assert (cache.get("a"), len(cache), cache.bytes) == (None, 2, 2 * size)

    huge = replace(VERDICT, rationale="x" * 10 * size)
    cache.put("d", huge)
    assert cache.get("d") is None and len(cache) == 2  # nothing else was evicted for it


def test_storing_a_key_again_replaces_its_charge() -> None:
    cache = _cache()
    cache.put("a", replace(VERDICT, rationale="x" * 500))
    cache.put("a", VERDICT)
    assert len(cache) == 1 and cache.bytes == entry_bytes("a", VERDICT)

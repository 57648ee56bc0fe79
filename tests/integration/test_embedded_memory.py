"""The embedded judge's memory stays bounded: its state cache, on the real llama.cpp engine
with SmolLM2-135M, holds no more than its capacity however many distinct prompts it judges,
a state restored from it (one row of logits kept) gives the prompt's own answer, and an
engine failure leaves nothing behind for the next call to trip on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from scribe_service.app import make_judge_backend
from scribe_service.pipeline.backends.base import Messages, Sampling
from scribe_service.pipeline.backends.embedded import EmbeddedJudge
from scribe_service.pipeline.judge_errors import JudgeUnavailable
from scribe_service.pipeline.state_cache import StateCache
from scribe_service.settings import Settings
from support import smollm2_gguf

pytestmark = [pytest.mark.real, pytest.mark.anyio]

CAPACITY = 24 << 20
"""About three states of these ~300-token prompts (SmolLM2: ~23 KB of KV cache per token)."""
PROMPTS = 10
SYSTEM = "You grade one step of a solution. Answer with a single digit from 0 to 3. " * 3


def prompt(number: int, terms: int = 40) -> Messages:
    numbers = " ".join(str(number * 7919 + k) for k in range(terms))
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Step {number}: add up {numbers}."},
    ]


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture
async def judge() -> AsyncIterator[EmbeddedJudge]:
    judge = EmbeddedJudge(smollm2_gguf(), model="smollm2", n_ctx=2048, cache_bytes=CAPACITY)
    try:
        yield judge
    finally:
        await judge.aclose()


def state_cache(judge: EmbeddedJudge) -> StateCache:
    cache = judge._llama.cache
    assert isinstance(cache, StateCache)
    return cache


async def test_the_state_cache_holds_no_more_than_its_capacity(judge: EmbeddedJudge) -> None:
    cache = state_cache(judge)
    # Restoring a state writes the model's own logits buffer (n_batch x vocabulary floats,
    # fixed): a prompt longer than n_batch (512), restored once, makes all of it resident.
    for number in (1000, 1001, 1000):
        await judge.score_token(prompt(number, terms=100), Sampling())
    before = resident_mb()
    for number in range(PROMPTS):
        await judge.score_token(prompt(number), Sampling())
        assert cache.cache_size <= CAPACITY
    grown = resident_mb() - before
    held = [entry.state for entry in cache._entries.values()]
    # What the real states hold, counted from their own arrays, not from the cache's books.
    real = sum(len(s.llama_state) + s.scores.nbytes + s.input_ids.nbytes for s in held)
    assert 0 < real <= CAPACITY
    assert 1 <= cache.entries < PROMPTS  # it evicted
    assert all(s.scores.shape[0] == 1 for s in held)
    # llama-cpp-python's LlamaRAMCache kept each prompt's logits rows besides (SmolLM2: ~200 KB
    # per token, ~600 MB over these prompts, uncounted); bounded, growth stays near CAPACITY.
    assert grown < CAPACITY / 2**20 + 48, f"resident memory grew {grown:.0f} MB"


async def test_a_restored_state_gives_the_prompts_own_answer(judge: EmbeddedJudge) -> None:
    restored: list[Any] = []
    load_state = judge._llama.load_state

    def spy(state: Any) -> None:
        restored.append(state)
        load_state(state)

    judge._llama.load_state = spy  # type: ignore[method-assign]
    cold = await judge.score_token(prompt(1), Sampling())
    await judge.score_token(prompt(2), Sampling())  # the live context now holds another prompt
    restored.clear()
    again = await judge.score_token(prompt(1), Sampling())
    assert restored, "prompt 1 was not restored from the state cache"
    assert restored[-1].scores.shape[0] == 1
    first, second = dict(cold.top_logprobs or ()), dict(again.top_logprobs or ())
    assert cold.text == again.text
    shared = first.keys() & second.keys()
    assert len(shared) >= 15
    # Not bit-identical: the restored prompt's last token is evaluated alone, and quantised
    # kernels round differently for another batch split.
    assert all(abs(first[t] - second[t]) < 0.05 for t in shared)


async def test_an_engine_failure_resets_the_context_and_the_next_call_runs_clean(
    judge: EmbeddedJudge,
) -> None:
    clean = await judge.score_token(prompt(2), Sampling())
    state_cache(judge).clear()  # or the failing call would restore prompt 2 whole from it
    await judge.score_token(prompt(1), Sampling())
    # Memory shorter than the tokens llama-cpp-python believes it holds: what a failed decode
    # leaves. The next prompt sharing the system prompt reuses that prefix and llama_decode
    # refuses the batch; unhandled, the call after it aborted the process in a GGML_ASSERT.
    judge._llama._ctx.kv_cache_seq_rm(-1, 5, -1)
    with pytest.raises(JudgeUnavailable, match="llama_decode") as failure:
        await judge.score_token(prompt(2), Sampling())
    assert failure.value.transient
    assert state_cache(judge).entries == 0
    retried = await judge.score_token(prompt(2), Sampling())
    assert retried.text == clean.text
    assert dict(retried.top_logprobs or ()).keys() == dict(clean.top_logprobs or ()).keys()


async def test_a_call_its_caller_gave_up_on_keeps_the_engine_until_it_returns(
    judge: EmbeddedJudge,
) -> None:
    """A judge timeout cancels the await, not llama.cpp: the abandoned completion runs on in
    its thread, and the next call must not start beside it on the same context (that aborted
    the 1.5B eval job in a GGML_ASSERT after a timeout)."""
    llama: Any = judge._llama
    inner = llama.create_chat_completion
    running = overlaps = calls = 0

    def tracked(*args: Any, **kwargs: Any) -> Any:
        nonlocal running, overlaps, calls
        running += 1
        calls += 1
        overlaps += running > 1
        try:
            return inner(*args, **kwargs)
        finally:
            running -= 1

    llama.create_chat_completion = tracked
    long = Sampling(max_tokens=200, temperature=0.0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await judge.complete(prompt(3), {"type": "object"}, long)
    assert running == 1  # abandoned, still running in its thread
    after = await judge.score_token(prompt(4), Sampling())
    assert after.top_logprobs
    assert calls == 2 and overlaps == 0


@pytest.mark.parametrize(("megabytes", "capacity"), [(3, 3 * 2**20), (0, None)])
def test_the_cache_bound_comes_from_the_setting(
    tmp_path: Path, megabytes: int, capacity: int | None
) -> None:
    settings = Settings(
        cache_dir=tmp_path, judge_model_path=smollm2_gguf(), embedded_cache_mb=megabytes
    )
    backend = make_judge_backend(settings)
    assert isinstance(backend, EmbeddedJudge)
    try:
        assert (None if backend.cache is None else backend.cache.capacity_bytes) == capacity
        assert backend._llama.cache is backend.cache
    finally:
        backend._llama.close()

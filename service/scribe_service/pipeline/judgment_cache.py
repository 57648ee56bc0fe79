"""The judgment cache: an identical deterministic judge call is judged once.

The rollouts of a GRPO group share their first steps (the same first search, the same final
answer), so the service renders the very same judge prompt many times. Under deterministic
sampling (temperature 0, or logprob mode, where the verdict is read from the judge's
probabilities rather than from a sampled token) the same prompt to the same judge gives the
same verdict, so it is asked for once. The key is a sha256 over a canonical JSON of everything
the verdict depends on: the judge model, the prototype (its id and the library version, since
the prototype's failure modes cap the score), the mode, the sampling, the minimum score mass
and the rendered messages.

Concurrent identical calls wait on one call in flight (single flight). Only verdicts are
stored: a failure reaches every caller waiting on it and leaves nothing behind, so the next
identical call asks the judge again. A verdict reached through a resampled retry after invalid
output is stored like any other: that retry's seed follows from the call's, so asking again
would take the same path on a judge that honours seeds. Bounded by entries and by approximate
bytes, the least recently used entry leaves first. Lives in the service's pipeline only:
`scribe eval` repeats calls on purpose (sampled repeats, the judge's spread in logprob mode)
and must never hit it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Literal

from scribe_service.pipeline.backends.base import Messages, Sampling
from scribe_service.pipeline.verdict import Verdict

CacheResult = Literal["hit", "miss", "coalesced"]
"""hit: stored; miss: this caller asked the judge; coalesced: shared a call in flight."""

# What an entry costs beyond its strings: the Verdict object, its tuple, the OrderedDict node.
_ENTRY_OVERHEAD = 400


def deterministic(mode: str, sampling: Sampling) -> bool:
    """Whether an identical call must give the same verdict, and so may be cached."""
    return mode == "logprob" or sampling.temperature == 0


def judgment_key(
    *,
    judge_model: str,
    prototype_id: str,
    library_version: str,
    mode: str,
    sampling: Sampling,
    min_score_mass: float,
    messages: Messages,
) -> str:
    """sha256 of the canonical JSON of everything a verdict depends on."""
    payload = {
        "judge_model": judge_model,
        "prototype_id": prototype_id,
        "library_version": library_version,
        "mode": mode,
        "sampling": asdict(sampling),
        "min_score_mass": min_score_mass,
        "messages": messages,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def entry_bytes(key: str, verdict: Verdict) -> int:
    """About what an entry keeps alive: its key, the verdict's strings and fixed overhead."""
    texts = (key, verdict.rationale or "", verdict.served_by or "", *verdict.failure_modes)
    return _ENTRY_OVERHEAD + sum(sys.getsizeof(text) for text in texts)


@dataclass
class _Flight:
    task: asyncio.Task[Verdict]
    waiters: int = 0


class JudgmentCache:
    """LRU of verdicts by `judgment_key`, with single flight; one event loop only."""

    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError(f"bounds must be positive, got {max_entries} entries, {max_bytes} B")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[Verdict, int]] = OrderedDict()
        self._bytes = 0
        self._flights: dict[str, _Flight] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        """Bytes charged to the entries held."""
        return self._bytes

    def get(self, key: str) -> Verdict | None:
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: str, verdict: Verdict) -> None:
        size = entry_bytes(key, verdict)
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        if size > self.max_bytes:
            return  # it would evict everything, itself included
        self._entries[key] = (verdict, size)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._bytes -= evicted

    async def get_or_judge(
        self, key: str, judge: Callable[[], Awaitable[Verdict]]
    ) -> tuple[Verdict, CacheResult]:
        """The stored verdict, the one of an identical call in flight, or `judge()`'s."""
        verdict = self.get(key)
        if verdict is not None:
            return verdict, "hit"
        result: CacheResult = "coalesced"
        flight = self._flights.get(key)
        if flight is None:
            # A task of its own, so that a caller whose deadline passes does not cancel the
            # call for the others still waiting on it.
            flight = _Flight(asyncio.create_task(self._judge_and_store(key, judge)))
            self._flights[key] = flight
            result = "miss"
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task), result
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                # Nobody wants this verdict any more: give the judge's slot back. A new caller
                # must not join a call being cancelled, so it is forgotten now.
                self._forget(key, flight.task)
                flight.task.cancel()

    async def _judge_and_store(self, key: str, judge: Callable[[], Awaitable[Verdict]]) -> Verdict:
        try:
            verdict = await judge()
            self.put(key, verdict)
            return verdict
        finally:
            # Before the task completes: a caller arriving later finds the verdict stored, or,
            # after a failure, no flight and so asks the judge again.
            self._forget(key, asyncio.current_task())

    def _forget(self, key: str, task: object) -> None:
        flight = self._flights.get(key)
        if flight is not None and flight.task is task:
            del self._flights[key]

"""One structured call to the judge, checked by its caller, retried until the reply passes.

The distiller (a prototype per cluster) and the subgoal writer (a subgoal per step) both ask
for a JSON object that their own checks must accept. A refused reply is shown back to the
model with what was wrong, and the next attempt samples with another seed, so a
deterministic judge does not repeat itself; a judge error that a retry cannot cure (the
prompt does not fit, a 4xx) ends the question at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from scribe_service.pipeline.backends.base import JudgeBackend, Messages, Sampling
from scribe_service.pipeline.judge import resample
from scribe_service.pipeline.judge_errors import JudgeError

T = TypeVar("T")


class ReplyInvalid(ValueError):
    """A reply its checker refuses; the message says what is wrong, for the model to fix."""


@dataclass(frozen=True)
class Asked(Generic[T]):
    value: T | None
    """The checked reply, or None when no attempt gave one."""
    calls: int
    errors: tuple[str, ...]
    """Why each failed attempt failed, in order."""


def retry_messages(messages: Messages, reply: str, correction: str, *, keep: int) -> Messages:
    """The conversation again, with the refused reply (its first `keep` characters) and what
    to correct."""
    return [
        *messages,
        {"role": "assistant", "content": reply[:keep]},
        {"role": "user", "content": correction},
    ]


async def ask_until_valid(
    backend: JudgeBackend,
    messages: Messages,
    schema: dict[str, Any],
    sampling: Sampling,
    *,
    check: Callable[[str], T],
    correction: Callable[[str], str],
    max_attempts: int,
    timeout: float | None = None,
    keep_reply: int = 4000,
) -> Asked[T]:
    """Ask until `check` accepts a reply (it raises `ReplyInvalid` otherwise), at most
    `max_attempts` calls; `correction(problem)` is the user turn that asks again."""
    asked, errors = messages, []
    for attempt in range(1, max_attempts + 1):
        try:
            async with asyncio.timeout(timeout):
                completion = await backend.complete(asked, schema, sampling)
        except TimeoutError:
            errors.append(f"attempt {attempt}: no reply within {timeout:g}s")
            continue
        except JudgeError as exc:
            errors.append(f"attempt {attempt}: {exc.type}: {exc}")
            if not exc.transient:
                break
            sampling = resample(sampling, attempt)
            continue
        try:
            return Asked(check(completion.text), attempt, tuple(errors))
        except ReplyInvalid as exc:
            errors.append(f"attempt {attempt}: {exc}")
            asked = retry_messages(messages, completion.text, correction(str(exc)), keep=keep_reply)
            sampling = resample(sampling, attempt)
    return Asked(None, len(errors), tuple(errors))

"""Resumable builds: every reply the judge gives a build, kept in a journal beside its output.

A build on a CPU judge makes hundreds of calls (a subgoal per step with `--llm-subgoals`, a
prototype per cluster, and the retries) over hours, and a killed build used to start again
from nothing. Each call is fully determined by its prompt, schema and sampling (temperature 0
and a fixed seed unless told otherwise) and the model, so `JournaledBackend` keys every reply
by a digest of exactly those and appends it to a JSONL file as it arrives. A rerun with the
same inputs asks the same calls in the same order and reads each answered one back; any call
that differs (other data, options, model) is a miss and is asked. A reply is journaled as the
judge gave it, valid or not, so a rerun replays the same retries; a failed call (a timeout, an
HTTP error) is not, and is asked again. The CLI removes the journal once the library is
published.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from scribe_service.pipeline.backends.base import Completion, JudgeBackend, Messages, Sampling

SUFFIX = ".journal.jsonl"


def journal_path(out: Path) -> Path:
    """Where a build writing `out` keeps its journal: beside it, as `out` must not exist."""
    return out.with_name(out.name + SUFFIX)


def call_key(model: str, messages: Messages, schema: dict[str, Any], sampling: Sampling) -> str:
    call = {"model": model, "messages": messages, "schema": schema, "sampling": asdict(sampling)}
    return hashlib.sha256(json.dumps(call, sort_keys=True).encode()).hexdigest()


def read_journal(path: Path) -> dict[str, str]:
    """Replies by call key; a torn or foreign line (a killed run's last) is skipped."""
    replies: dict[str, str] = {}
    if not path.is_file():
        return replies
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
            key, text = entry["key"], entry["text"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(key, str) and isinstance(text, str):
            replies[key] = text
    return replies


class JournaledBackend:
    """A `JudgeBackend` that answers a call from the journal at `path` when it holds it, and
    otherwise asks `backend` and journals the reply before returning it."""

    def __init__(self, backend: JudgeBackend, path: Path) -> None:
        self.inner = backend
        self.path = path
        self._replies = read_journal(path)
        self.resumed = len(self._replies)
        """Replies the journal held at the start."""
        self.replayed = 0

    @property
    def model(self) -> str:
        return self.inner.model

    async def complete(
        self, messages: Messages, schema: dict[str, Any], sampling: Sampling
    ) -> Completion:
        key = call_key(self.model, messages, schema, sampling)
        if (text := self._replies.get(key)) is not None:
            self.replayed += 1
            return Completion(text)
        completion = await self.inner.complete(messages, schema, sampling)
        self._replies[key] = completion.text
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"key": key, "text": completion.text}) + "\n")
        return completion

    async def score_token(self, messages: Messages, sampling: Sampling) -> Completion:
        return await self.inner.score_token(messages, sampling)

    async def check(self) -> None:
        await self.inner.check()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def discard(self) -> None:
        """The library is published: nothing left to resume."""
        self.path.unlink(missing_ok=True)

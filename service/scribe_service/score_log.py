"""The score log (`SCRIBE_SCORE_LOG`): one JSON line per scored step, for training curves.

Every scoring route (`/v1/score`, `/v1/score/batch`, `/get_reward`) hands its responses to
`ScoreLog.record`; `scribe eval curves` reads the file back (docs/score-log.md). A line holds
the request's `metadata` verbatim, so a trainer that sends `{"global_step": 120}` can plot
what its policy learned step by step.

Lines are queued and written by `jsonl_log.JsonLinesLog` (a writer thread, size rotation,
bounded queue, counted and never raised write errors; its docstring says why), under the
counter `scribe_score_log_lines{outcome}`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry

from scribe_client.protocol import ScoreResponse
from scribe_service.jsonl_log import DEFAULT_QUEUE_SIZE, JsonLinesLog, Line
from scribe_service.library import Library

log = logging.getLogger(__name__)


def step_lines(response: ScoreResponse, *, at: str, domains: Mapping[str, str]) -> list[Line]:
    """The log lines of one scored trajectory, one per step, judged or failed."""
    shared = {
        "time": at,
        "request_id": response.request_id,
        "metadata": response.metadata,
        "library_version": response.library_version,
        "judge_model": response.judge_model,
        "judge_mode": response.judge.mode if response.judge is not None else None,
    }
    return [
        {
            **shared,
            "step": step.index,
            "message_index": step.message_index,
            "prototype_id": step.prototype_id,
            "domain": domains.get(step.prototype_id),
            "fallback": step.fallback,
            "similarity": step.similarity,
            "score": step.score,
            "expected_score": step.expected_score,
            "reward": step.reward,
            "status": step.status,
            "error": step.error.type if step.error is not None else None,
        }
        for step in response.steps
    ]


class ScoreLog(JsonLinesLog):
    """Appends one JSON line per scored step to a size-rotated file (or, disabled, nothing)."""

    what = "score log"
    metric = "scribe_score_log_lines"
    logger = log

    def __init__(
        self,
        path: Path | None,
        *,
        library: Library | None = None,
        max_bytes: int = 100 * 2**20,
        backups: int = 5,
        registry: CollectorRegistry | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        super().__init__(
            path,
            max_bytes=max_bytes,
            backups=backups,
            registry=registry,
            queue_size=queue_size,
        )
        self._domains: dict[str, str] = {}
        if library is not None:
            self.use_library(library)

    def use_library(self, library: Library) -> None:
        """Name the domains of `library`'s prototypes too (called on a library reload).

        Merged, not replaced: a response scored on the previous version may still be recorded
        after the swap, and its prototypes keep their domains."""
        self._domains = {**self._domains, **{p.id: p.domain for p in library.prototypes.values()}}

    def record(self, responses: Iterable[ScoreResponse]) -> None:
        """Queue the lines of each response; returns at once and never raises for I/O."""
        if not self.enabled:
            return
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        for response in responses:
            self.write(step_lines(response, at=at, domains=self._domains))


def get_score_log(request: Request) -> ScoreLog:
    score_log: ScoreLog = request.app.state.score_log
    return score_log


ScoreLogDep = Annotated[ScoreLog, Depends(get_score_log)]

"""The miss log (`SCRIBE_MISS_LOG`): one JSON line per scored step the library did not cover.

A step routed to the generic fallback rubric is a step the library has no skill for. During
training those subgoals are the material for new prototypes: `scribe library refresh --misses
LOG` clusters and distils them, and the service swaps the result in (`reload.py`). A line
carries what that needs and no more: the subgoal and an excerpt of the step, how close the
nearest prototype came, the library version that missed it and the request's `metadata`
(docs/reload.md lists the fields).

Every scoring route logs through the pipeline (`Pipeline.score_batch`); `/v1/route` judges
nothing and logs nothing. Writing, rotation and failure counting are `jsonl_log.JsonLinesLog`'s,
as for the score log, under the counter `scribe_miss_log_lines{outcome}`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from scribe_client.protocol import ScoreResponse
from scribe_service.jsonl_log import JsonLinesLog, Line
from scribe_service.pipeline.retrieve import Route
from scribe_service.pipeline.segment import Step

log = logging.getLogger(__name__)

MAX_CONTENT_CHARS = 1000
"""Step text kept per line: enough to show a distiller what the step did, while a line stays
about a kilobyte however long the step."""


def miss_lines(
    response: ScoreResponse,
    steps: Sequence[Step],
    routes: Sequence[Route],
    *,
    threshold: float,
    at: str,
) -> list[Line]:
    """One line per step of `response` that was routed to the fallback rubric."""
    shared = {
        "time": at,
        "request_id": response.request_id,
        "metadata": response.metadata,
        "library_version": response.library_version,
    }
    lines = []
    for step, route, result in zip(steps, routes, response.steps, strict=True):
        if not route.fallback:
            continue
        # The nearest routable prototype; none when no prototype's `requires` admitted the step.
        nearest = None if route.nearest.fallback else route.nearest.id
        lines.append(
            {
                **shared,
                "step": step.index,
                "message_index": step.message_index,
                "subgoal": step.subgoal,
                "subgoal_source": step.subgoal_source,
                "content": step.content[:MAX_CONTENT_CHARS],
                "content_chars": len(step.content),
                "similarity": route.similarity,
                "threshold": threshold,
                "nearest_prototype_id": nearest,
                "fallback_prototype_id": route.prototype.id,
                "score": result.score,
                "status": result.status,
            }
        )
    return lines


class MissLog(JsonLinesLog):
    """Appends one JSON line per fallback-routed step to a size-rotated file (or nothing)."""

    what = "miss log"
    metric = "scribe_miss_log_lines"
    logger = log

    def record(
        self,
        response: ScoreResponse,
        steps: Sequence[Step],
        routes: Sequence[Route],
        threshold: float,
    ) -> None:
        """Queue the lines of one scored trajectory's fallback steps; never raises for I/O."""
        if not self.enabled or not any(route.fallback for route in routes):
            return
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        self.write(miss_lines(response, steps, routes, threshold=threshold, at=at))

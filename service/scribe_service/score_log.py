"""The score log (`SCRIBE_SCORE_LOG`): one JSON line per scored step, for training curves.

Every scoring route (`/v1/score`, `/v1/score/batch`, `/get_reward`) hands its responses to
`ScoreLog.record`; `scribe eval curves` reads the file back (docs/score-log.md). A line holds
the request's `metadata` verbatim, so a trainer that sends `{"global_step": 120}` can plot
what its policy learned step by step.

Design, and why:

* `record` only stamps the time, builds the small per-step dicts and queues them. Encoding
  and file I/O run on one writer thread (a `QueueListener` driving a `RotatingFileHandler`),
  so a slow disk or a rotation never stalls the event loop.
* The queue is bounded: behind a stalled disk, lines are dropped and counted instead of
  holding memory without limit.
* A failed write never reaches the request. It is counted in
  `scribe_score_log_lines{outcome="failed"}` (`dropped` for a full queue) and logged once,
  not once per line, until a write succeeds again.
* `close` drains the queue and flushes; the app's lifespan calls it on shutdown.
* The handler hangs on no `logging` logger: nothing propagates to the service's own log, and
  two apps in one process (tests) never write to each other's files.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from logging.handlers import QueueListener, RotatingFileHandler
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry, Counter

from scribe_client.protocol import ScoreResponse
from scribe_service.library import Library

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 10_000
"""Trajectories waiting for the writer thread before new ones are dropped."""

Line = dict[str, Any]


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


class _Lines:
    """A trajectory's lines, encoded only when the writer thread formats the record."""

    __slots__ = ("lines", "text")

    def __init__(self, lines: list[Line]) -> None:
        self.lines = lines
        self.text: str | None = None

    def __str__(self) -> str:
        # Formatted twice per write (the size check for rotation, then the write): encode once.
        if self.text is None:
            self.text = "\n".join(json.dumps(line, ensure_ascii=False) for line in self.lines)
        return self.text


class _Problems:
    """Counts lost lines and logs the first loss of each spell, not every line."""

    def __init__(self, path: Path, counter: Counter) -> None:
        self._path = path
        self._counter = counter
        self._failing = False
        self._lock = threading.Lock()

    def lost(self, outcome: str, lines: int, reason: str) -> None:
        self._counter.labels(outcome).inc(lines)
        with self._lock:
            first, self._failing = not self._failing, True
        if first:
            log.warning(
                "score log %s: %s; lines are dropped (counted in scribe_score_log_lines) "
                "until a write succeeds",
                self._path,
                reason,
            )

    def written(self, lines: int) -> None:
        self._counter.labels("written").inc(lines)
        with self._lock:
            recovered, self._failing = self._failing, False
        if recovered:
            log.warning("score log %s: writing again", self._path)


class _Writer(RotatingFileHandler):
    """Appends records, rotating by size; a write error is counted, never raised."""

    def __init__(self, path: Path, *, max_bytes: int, backups: int, problems: _Problems) -> None:
        # delay: the file opens on the first write, so a bad path is a counted write error
        # (and a path that becomes good again starts working) rather than a failed start.
        super().__init__(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True
        )
        self._problems = problems
        self._error: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self._error = None
        super().emit(record)  # calls handleError instead of raising
        lines: int = getattr(record, "lines", 0)
        if self._error is None:
            self._problems.written(lines)
        else:
            reason = f"cannot write ({type(self._error).__name__}: {self._error})"
            self._problems.lost("failed", lines, reason)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: ARG002 (an override)
        self._error = sys.exc_info()[1] or RuntimeError("unknown write error")
        # A half-open stream (disk full, file replaced) is reopened on the next write.
        if self.stream is not None:
            try:
                self.stream.close()
            except OSError:
                pass
            self.stream = None


class _Listener(QueueListener):
    def __init__(self, pending: queue.Queue[logging.LogRecord | None], writer: _Writer) -> None:
        super().__init__(pending, writer)
        self._pending = pending

    def enqueue_sentinel(self) -> None:
        # The stock put_nowait would raise on a full queue; wait for the writer instead.
        self._pending.put(getattr(self, "_sentinel", None))


class ScoreLog:
    """Appends one JSON line per scored step to a size-rotated file (or, disabled, nothing)."""

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
        self.path = path
        self._domains: dict[str, str] = (
            {} if library is None else {p.id: p.domain for p in library.prototypes.values()}
        )
        self._queue: queue.Queue[logging.LogRecord | None] | None = None
        self._listener: _Listener | None = None
        self._writer: _Writer | None = None
        if path is None:
            return
        counter = Counter(
            "scribe_score_log_lines",
            "Score log lines by outcome: written, failed (a write error), dropped (the "
            "writer fell behind)",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("written", "failed", "dropped"):
            counter.labels(outcome)  # exported at 0 from the start
        self._registry, self._counter = registry, counter
        self._problems = _Problems(path, counter)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # the first write fails, and is counted and logged
        self._writer = _Writer(path, max_bytes=max_bytes, backups=backups, problems=self._problems)
        self._queue = queue.Queue(maxsize=queue_size)
        self._listener = _Listener(self._queue, self._writer)
        self._listener.start()

    def record(self, responses: Iterable[ScoreResponse]) -> None:
        """Queue the lines of each response; returns at once and never raises for I/O."""
        pending = self._queue  # close() may clear it from another thread
        if pending is None:
            return
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        for response in responses:
            lines = step_lines(response, at=at, domains=self._domains)
            if not lines:
                continue
            entry = logging.makeLogRecord({"msg": _Lines(lines), "lines": len(lines)})
            try:
                pending.put_nowait(entry)
            except queue.Full:
                self._problems.lost("dropped", len(lines), "the writer is behind (queue full)")

    def close(self) -> None:
        """Write what is queued, flush and close the file. Blocking: run it off the loop."""
        if self._listener is None or self._writer is None:
            return
        self._queue = None  # later records are ignored, not queued behind a stopped writer
        self._listener.stop()
        self._writer.close()
        self._listener = None
        if self._registry is not None:
            # The app's registry outlives this lifespan; a restarted one registers anew.
            self._registry.unregister(self._counter)


def get_score_log(request: Request) -> ScoreLog:
    score_log: ScoreLog = request.app.state.score_log
    return score_log


ScoreLogDep = Annotated[ScoreLog, Depends(get_score_log)]

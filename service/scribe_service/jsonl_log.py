"""An append-only JSON Lines file, written off the event loop and rotated by size.

The score log (`score_log.py`) and the miss log (`miss_log.py`) are both one of these; each
decides what its lines hold, this module only how they reach the disk. Design, and why:

* `write` only queues a group of lines (one trajectory's). Encoding and file I/O run on one
  writer thread (a `QueueListener` driving a `RotatingFileHandler`), so a slow disk or a
  rotation never stalls the event loop. A group is written together, never split by rotation.
* The queue is bounded: behind a stalled disk, lines are dropped and counted instead of
  holding memory without limit.
* A failed write never reaches the request. It is counted in the log's counter
  (`outcome="failed"`, `dropped` for a full queue) and logged once, not once per line, until
  a write succeeds again.
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
from logging.handlers import QueueListener, RotatingFileHandler
from pathlib import Path
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry, Counter

DEFAULT_QUEUE_SIZE = 10_000
"""Groups of lines waiting for the writer thread before new ones are dropped."""

Line = dict[str, Any]


class _Lines:
    """A group's lines, encoded only when the writer thread formats the record."""

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

    def __init__(self, what: str, counter: Counter, metric: str, logger: logging.Logger) -> None:
        self._what = what
        self._counter = counter
        self._metric = metric
        self._log = logger
        self._failing = False
        self._lock = threading.Lock()

    def lost(self, outcome: str, lines: int, reason: str) -> None:
        self._counter.labels(outcome).inc(lines)
        with self._lock:
            first, self._failing = not self._failing, True
        if first:
            self._log.warning(
                "%s: %s; lines are dropped (counted in %s) until a write succeeds",
                self._what,
                reason,
                self._metric,
            )

    def written(self, lines: int) -> None:
        self._counter.labels("written").inc(lines)
        with self._lock:
            recovered, self._failing = self._failing, False
        if recovered:
            self._log.warning("%s: writing again", self._what)


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


class JsonLinesLog:
    """Appends groups of JSON lines to a size-rotated file (or, with no path, nothing).

    A subclass names itself: `metric` is the Prometheus counter of its lines by outcome
    (written, failed, dropped); problems are reported on `logger` as "`what` PATH: …"."""

    what: ClassVar[str]
    metric: ClassVar[str]
    logger: ClassVar[logging.Logger]

    def __init__(
        self,
        path: Path | None,
        *,
        max_bytes: int = 100 * 2**20,
        backups: int = 5,
        registry: CollectorRegistry | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        self.path = path
        self._queue: queue.Queue[logging.LogRecord | None] | None = None
        self._listener: _Listener | None = None
        self._writer: _Writer | None = None
        if path is None:
            return
        what, metric = self.what, self.metric
        counter = Counter(
            metric,
            f"{what.capitalize()} lines by outcome: written, failed (a write error), dropped "
            "(the writer fell behind)",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("written", "failed", "dropped"):
            counter.labels(outcome)  # exported at 0 from the start
        self._registry, self._counter = registry, counter
        self._problems = _Problems(f"{what} {path}", counter, metric, self.logger)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # the first write fails, and is counted and logged
        self._writer = _Writer(path, max_bytes=max_bytes, backups=backups, problems=self._problems)
        self._queue = queue.Queue(maxsize=queue_size)
        self._listener = _Listener(self._queue, self._writer)
        self._listener.start()

    @property
    def enabled(self) -> bool:
        return self._queue is not None

    def write(self, lines: list[Line]) -> None:
        """Queue one group of lines; returns at once and never raises for I/O."""
        pending = self._queue  # close() may clear it from another thread
        if pending is None or not lines:
            return
        entry = logging.makeLogRecord({"msg": _Lines(lines), "lines": len(lines)})
        try:
            pending.put_nowait(entry)
        except queue.Full:
            self._problems.lost("dropped", len(lines), "the writer is behind (queue full)")

    def close(self) -> None:
        """Write what is queued, flush and close the file. Blocking: run it off the loop."""
        if self._listener is None or self._writer is None:
            return
        self._queue = None  # later writes are ignored, not queued behind a stopped writer
        self._listener.stop()
        self._writer.close()
        self._listener = None
        if self._registry is not None:
            # The app's registry outlives this lifespan; a restarted one registers anew.
            self._registry.unregister(self._counter)

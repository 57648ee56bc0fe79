"""Coalescing: the subgoals of concurrent requests go to the model in one encode call.

One encode of 64 texts costs far less than 64 encodes of one (the model's per-call overhead
dominates a short subgoal), and under a trainer's load many requests arrive together. The
pipeline calls `encode` from worker threads (`asyncio.to_thread`), so the batcher works on
threads, never on the event loop: the first caller to find no open batch leads one, waits
`window` seconds (less once `max_batch` texts have joined), closes it and runs the one encode;
the callers that joined meanwhile wait for it and take their own rows. A failed encode raises
its exception in every caller of that batch. It sits under the embedding cache, so only the
cache's misses are coalesced; a text two callers miss at once is encoded once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from scribe_service.pipeline.embed import Embedder, Vectors


class _Batch:
    def __init__(self) -> None:
        self.texts: dict[str, int] = {}  # each distinct text → its row in the encoded batch
        self.full = threading.Event()
        self.done = threading.Event()
        self.vectors: Vectors | None = None
        self.error: BaseException | None = None


class CoalescingEmbedder:
    """An `Embedder` that merges the calls made within `window` seconds of each other, up to
    `max_batch` distinct texts, into one call of `embedder.encode`."""

    def __init__(
        self,
        embedder: Embedder,
        *,
        window: float,
        max_batch: int,
    ) -> None:
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be positive, got {max_batch}")
        self.inner = embedder
        self.name = embedder.name
        self.dim = embedder.dim
        self.window = window
        self.max_batch = max_batch
        self._open: _Batch | None = None
        self._lock = threading.Lock()

    def _join(self, texts: Sequence[str]) -> tuple[_Batch, bool]:
        """The batch these texts go into, and whether this caller leads it."""
        with self._lock:
            batch = self._open
            new = [t for t in dict.fromkeys(texts) if batch is None or t not in batch.texts]
            leads = batch is None or len(batch.texts) + len(new) > self.max_batch
            if leads:
                if batch is not None:
                    batch.full.set()  # it cannot take these texts: let its leader start now
                batch = self._open = _Batch()
                new = list(dict.fromkeys(texts))
            assert batch is not None
            for text in new:
                batch.texts[text] = len(batch.texts)
            if len(batch.texts) >= self.max_batch:
                # Full: nobody else joins, and its leader need not wait out the window.
                self._open = None
                batch.full.set()
            return batch, leads

    def _lead(self, batch: _Batch) -> None:
        batch.full.wait(self.window)
        with self._lock:
            if self._open is batch:
                self._open = None
        try:
            batch.vectors = self.inner.encode(list(batch.texts))
        except BaseException as exc:  # every waiter must hear of it, whatever it is
            batch.error = exc
        finally:
            batch.done.set()

    def encode(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch, leads = self._join(texts)
        if leads:
            self._lead(batch)
        else:
            batch.done.wait()
        if batch.error is not None:
            raise batch.error
        assert batch.vectors is not None
        return batch.vectors[[batch.texts[t] for t in texts]]

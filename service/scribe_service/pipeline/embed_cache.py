"""An LRU of subgoal embeddings in front of the pipeline's embedder.

Subgoals repeat: the rollouts of a GRPO group share their first steps, and a trainer sends
the same groups again. Embedding is most of the routing cost on a CPU, so a subgoal already
seen is not encoded again; the misses of one call (each distinct text once) go to the model
in one batched encode. `encode` runs in worker threads (`asyncio.to_thread`), so the table is
guarded by a lock; the model call itself is made outside it, and two threads missing the same
text at once both encode it, which costs time, never correctness.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from scribe_service.pipeline.embed import Embedder, Vectors


class CachedEmbedder:
    """An `Embedder` that remembers up to `max_entries` texts' vectors, least recently used
    first out. `on_lookup(hits, misses)` is told, for every call, how many texts the model
    did not have to encode and how many (distinct) it did."""

    def __init__(
        self,
        embedder: Embedder,
        max_entries: int,
        *,
        on_lookup: Callable[[int, int], None] | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be positive, got {max_entries}")
        self.inner = embedder
        self.name = embedder.name
        self.dim = embedder.dim
        self.max_entries = max_entries
        self._on_lookup = on_lookup
        self._vectors: OrderedDict[str, Vectors] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._vectors)

    def encode(self, texts: Sequence[str]) -> Vectors:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}  # each distinct missing text → its rows
        with self._lock:
            for row, text in enumerate(texts):
                vector = self._vectors.get(text)
                if vector is None:
                    missing.setdefault(text, []).append(row)
                else:
                    self._vectors.move_to_end(text)
                    out[row] = vector
        if self._on_lookup is not None:
            self._on_lookup(len(texts) - len(missing), len(missing))
        if not missing:
            return out
        encoded = self.inner.encode(list(missing))
        with self._lock:
            for vector, (text, rows) in zip(encoded, missing.items(), strict=True):
                out[rows] = vector
                # A copy: a view would keep the whole batch's array alive.
                self._vectors[text] = vector.copy()
                self._vectors.move_to_end(text)
            while len(self._vectors) > self.max_entries:
                self._vectors.popitem(last=False)
        return out

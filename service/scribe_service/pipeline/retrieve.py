"""Stage 2b: route each subgoal to its nearest skill prototype with FAISS.

Every exemplar of every routable prototype is one row of an inner-product index over unit
vectors (so scores are cosine similarities). A subgoal goes to the prototype that owns its one
nearest exemplar, and that similarity is reported: a single nearest neighbour, so there is no k
to tune. Below the threshold the library's generic fallback rubric is used instead and the step
is flagged, because a wrong rubric gives systematically wrong rewards while a generic one is
only vague.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from scribe_service.library import Library, Prototype
from scribe_service.pipeline.embed import Embedder, Vectors


@dataclass(frozen=True)
class Route:
    prototype: Prototype
    similarity: float
    fallback: bool
    nearest: Prototype
    """The best-matching routable prototype, even when the fallback was used."""


class PrototypeIndex:
    def __init__(self, library: Library, embedder: Embedder) -> None:
        owners: list[Prototype] = []
        phrasings: list[str] = []
        for prototype in library.routable():
            owners.extend([prototype] * len(prototype.exemplars))
            phrasings.extend(prototype.exemplars)
        vectors = embedder.encode(phrasings)
        self._index = faiss.IndexFlatIP(embedder.dim)
        self._index.add(vectors)
        self._owners = owners
        self._fallback = library.fallback
        self.size = len(owners)

    def route(self, vectors: Vectors, min_similarity: float) -> list[Route]:
        if len(vectors) == 0:
            return []
        scores, rows = self._index.search(np.ascontiguousarray(vectors), 1)
        routes = []
        for [similarity], [row] in zip(scores.tolist(), rows.tolist(), strict=True):
            nearest = self._owners[row]
            fallback = similarity < min_similarity
            routes.append(
                Route(
                    prototype=self._fallback if fallback else nearest,
                    similarity=round(similarity, 4),
                    fallback=fallback,
                    nearest=nearest,
                )
            )
        return routes

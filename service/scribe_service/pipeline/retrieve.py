"""Stage 2b: route each subgoal to its nearest skill prototype with FAISS.

Every exemplar of every routable prototype is one row of an inner-product index over unit
vectors (so scores are cosine similarities). A subgoal goes to the prototype that owns its one
nearest exemplar, and that similarity is reported: a single nearest neighbour, so there is no k
to tune. Below the threshold the library's generic fallback rubric is used instead and the step
is flagged, because a wrong rubric gives systematically wrong rewards while a generic one is
only vague.

A prototype may require signals of the step itself (`requires`, see `step_signals`); such a
prototype is skipped for a step that lacks them, and the nearest exemplar of an eligible one
wins. Subgoals are short, and "3*4 = 7." reads close to "State the final answer: the number":
without the gate about half of the ProcessBench steps routed to the final-answer rubric state
no answer at all, and that rubric's level 0 is "no answer is given".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from scribe_service.library import Library, Prototype, Signal
from scribe_service.pipeline.checks import final_answer_span
from scribe_service.pipeline.embed import Embedder, Vectors
from scribe_service.pipeline.segment import Step


@dataclass(frozen=True)
class Route:
    prototype: Prototype
    similarity: float
    fallback: bool
    nearest: Prototype
    """The best-matching routable prototype, even when the fallback was used."""


def step_signals(step: Step) -> frozenset[Signal]:
    """What the step shows, for prototypes that require it: a final answer (`<answer>`,
    `\\boxed{}`, "the answer is"), tool calls."""
    signals: set[Signal] = set()
    if final_answer_span(step.prose) is not None:
        signals.add("final_answer")
    if step.tool_calls:
        signals.add("tool_call")
    return frozenset(signals)


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
        self._gated = any(p.requires for p in owners)
        self.size = len(owners)

    def route(
        self, vectors: Vectors, min_similarity: float, steps: Sequence[Step] | None
    ) -> list[Route]:
        """One route per vector. `steps`, in the same order, are what `requires` is checked
        on; None routes bare subgoals, with every prototype eligible."""
        if len(vectors) == 0:
            return []
        if steps is not None and len(steps) != len(vectors):
            raise ValueError(f"{len(steps)} steps for {len(vectors)} vectors")
        # A flat index over a few hundred exemplars: ranking all of them costs microseconds.
        k = self.size if self._gated and steps is not None else 1
        scores, rows = self._index.search(np.ascontiguousarray(vectors), k)
        routes = []
        for position, (ranked_scores, ranked_rows) in enumerate(
            zip(scores.tolist(), rows.tolist(), strict=True)
        ):
            signals = step_signals(steps[position]) if k > 1 and steps is not None else None
            similarity, nearest = -1.0, self._fallback
            for score, row in zip(ranked_scores, ranked_rows, strict=True):
                owner = self._owners[row]
                if signals is None or signals.issuperset(owner.requires):
                    similarity, nearest = score, owner
                    break
            fallback = nearest is self._fallback or similarity < min_similarity
            routes.append(
                Route(
                    prototype=self._fallback if fallback else nearest,
                    similarity=round(similarity, 4),
                    fallback=fallback,
                    nearest=nearest,
                )
            )
        return routes

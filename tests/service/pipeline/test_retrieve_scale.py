"""Routing at scale: the index type follows the exemplar count, the inverted-list (IVF) index
finds the same nearest exemplar as an exact scan, and exact routing is unchanged below the
threshold.

The libraries here are the bundled prototypes with synthetic exemplars: each gets many
phrasings whose vectors a lookup embedder serves. The vectors lie near a low-dimensional
subspace, as sentence embeddings do; uniform random vectors in many dimensions have no
neighbourhoods at all, and no approximate index is built for them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import faiss
import numpy as np
import numpy.typing as npt
import pytest

from scribe_service.library import Library
from scribe_service.pipeline.retrieve import FLAT_MAX_ROWS, PrototypeIndex, build_index
from scribe_service.pipeline.segment import Step

DIM = 64
Floats = npt.NDArray[np.float32]


def unit(rows: npt.NDArray[np.float64]) -> Floats:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def clustered(rng: np.random.Generator, count: int, dim: int = DIM) -> Floats:
    basis = rng.standard_normal((12, dim))
    return unit(rng.standard_normal((count, 12)) @ basis + 0.05 * rng.standard_normal((count, dim)))


class LookupEmbedder:
    """Serves fixed vectors for known texts (the synthetic exemplars)."""

    name = "lookup"
    dim = DIM

    def __init__(self, table: dict[str, Floats]) -> None:
        self.table = table

    def encode(self, texts: Sequence[str]) -> Floats:
        return np.stack([self.table[t] for t in texts]) if texts else np.zeros((0, DIM), "f4")


def synthetic(library: Library, per_prototype: int, seed: int) -> tuple[Library, LookupEmbedder]:
    """`library` with `per_prototype` synthetic exemplars per routable prototype."""
    rng = np.random.default_rng(seed)
    routable = library.routable()
    vectors = clustered(rng, per_prototype * len(routable))
    table: dict[str, Floats] = {}
    prototypes = dict(library.prototypes)
    for number, prototype in enumerate(routable):
        texts = tuple(f"{prototype.id} #{k}" for k in range(per_prototype))
        rows = vectors[number * per_prototype : (number + 1) * per_prototype]
        table.update(zip(texts, rows, strict=True))
        prototypes[prototype.id] = prototype.model_copy(update={"exemplars": texts})
    return dataclasses.replace(library, prototypes=prototypes), LookupEmbedder(table)


def exemplar_matrix(library: Library, embedder: LookupEmbedder) -> tuple[Floats, list[str]]:
    owners = [p.id for p in library.routable() for _ in p.exemplars]
    return embedder.encode([e for p in library.routable() for e in p.exemplars]), owners


def queries(rng: np.random.Generator, exemplars: Floats, count: int) -> Floats:
    """Paraphrase-like queries: near an exemplar, never on it."""
    picked = exemplars[rng.integers(0, len(exemplars), count)]
    return unit(picked + 0.15 * rng.standard_normal(picked.shape) / np.sqrt(DIM))


def _step(text: str) -> Step:
    return Step(index=0, content=text, subgoal=text, subgoal_source="derived")


@pytest.mark.parametrize(
    ("rows", "kind"),
    [(FLAT_MAX_ROWS, faiss.IndexFlatIP), (FLAT_MAX_ROWS + 1, faiss.IndexIVFFlat)],
    ids=["at-threshold-flat", "above-threshold-ivf"],
)
def test_the_index_type_follows_the_row_count(rows: int, kind: type) -> None:
    vectors = clustered(np.random.default_rng(0), rows, dim=8)
    index = build_index(vectors)
    assert type(index) is kind
    assert index.ntotal == rows and index.metric_type == faiss.METRIC_INNER_PRODUCT


def test_a_large_library_routes_through_ivf_with_top1_recall_of_flat(library: Library) -> None:
    per_prototype = 30_000 // len(library.routable()) + 1
    big, embedder = synthetic(library, per_prototype, seed=1)
    index = PrototypeIndex(big, embedder)
    assert index.size > FLAT_MAX_ROWS and not index.exact
    exemplars, _ = exemplar_matrix(big, embedder)
    vectors = queries(np.random.default_rng(2), exemplars, 1000)
    best = (vectors @ exemplars.T).max(axis=1)
    routes = index.route(vectors, min_similarity=-1.0, steps=None)
    found = np.array([route.similarity for route in routes])
    recall = float(np.mean(np.abs(found - best) <= 1e-4))
    assert recall >= 0.99, recall


def test_below_the_threshold_routing_is_the_exact_nearest_eligible_exemplar(
    library: Library,
) -> None:
    small, embedder = synthetic(library, 40, seed=3)
    index = PrototypeIndex(small, embedder)
    assert index.exact
    exemplars, owners = exemplar_matrix(small, embedder)
    gated = {p.id for p in small.routable() if "final_answer" in p.requires}
    assert gated, "the bundled library gates a prototype on a final answer"
    rng = np.random.default_rng(4)
    vectors = queries(rng, exemplars, 300)
    # Every other step states an answer: the gated prototypes are eligible for those alone.
    steps = [_step("The answer is 7." if i % 2 else "3*4 = 12.") for i in range(len(vectors))]
    routes = index.route(vectors, min_similarity=0.5, steps=steps)
    similarities = vectors @ exemplars.T
    for i, (route, row) in enumerate(zip(routes, similarities, strict=True)):
        eligible = np.array([i % 2 == 1 or owner not in gated for owner in owners])
        nearest = int(np.argmax(np.where(eligible, row, -np.inf)))
        assert route.nearest.id == owners[nearest]
        assert route.similarity == pytest.approx(float(row[nearest]), abs=1e-4)
        assert route.fallback == (route.similarity < 0.5)
    assert any(r.nearest.id in gated for r in routes), "the gate was never exercised"

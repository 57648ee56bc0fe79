from __future__ import annotations

from scribe_service.library import Library
from scribe_service.pipeline.retrieve import PrototypeIndex
from support import FakeEmbedder


def test_each_exemplar_routes_to_its_own_prototype(library: Library) -> None:
    embedder = FakeEmbedder()
    index = PrototypeIndex(library, embedder, top_k=4)
    prototypes = library.routable()
    assert index.size == sum(len(p.exemplars) for p in prototypes)
    exemplars = [(p.id, e) for p in prototypes for e in p.exemplars]
    routes = index.route(embedder.encode([e for _, e in exemplars]), min_similarity=0.5)
    hits = sum(route.nearest.id == pid for (pid, _), route in zip(exemplars, routes, strict=True))
    # Identical text is similarity 1 unless two prototypes share a bag of words.
    assert hits >= 0.95 * len(exemplars)
    assert all(route.similarity > 0.99 and not route.fallback for route in routes)


def test_below_threshold_uses_the_fallback_and_reports_the_nearest(library: Library) -> None:
    embedder = FakeEmbedder()
    index = PrototypeIndex(library, embedder)
    [route] = index.route(embedder.encode(["zzzz qqqq xxxx"]), min_similarity=0.9)
    assert route.fallback
    assert route.prototype.id == library.fallback.id
    assert route.nearest.id != library.fallback.id
    assert route.similarity < 0.9


def test_empty_input(library: Library) -> None:
    embedder = FakeEmbedder()
    assert PrototypeIndex(library, embedder).route(embedder.encode([]), 0.3) == []

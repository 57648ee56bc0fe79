from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from scribe_service.app import build_pipeline, create_app
from scribe_service.library import Library, LibraryError, load_library
from scribe_service.library_build.router_fit import (
    ROUTER_FORMAT,
    ROUTER_JSON,
    ROUTER_NPZ,
    fit_routers,
    library_pairs,
    save_router,
)
from scribe_service.pipeline.embed import BUNDLED_EMBEDDER, SentenceTransformerEmbedder, Vectors
from scribe_service.pipeline.library_state import index_library
from scribe_service.pipeline.retrieve import PrototypeIndex
from scribe_service.pipeline.segment import Step
from scribe_service.settings import Settings
from support import PROTOTYPES, FakeEmbedder, FakeJudge

VERSION = "hand-made-0001"
E = np.eye(4, dtype=np.float32)


def _unit(*parts: float) -> np.ndarray:
    vector = np.asarray(parts, dtype=np.float32)
    return vector / np.linalg.norm(vector)


class TableEmbedder:
    """Every text has a hand-made vector, so each test can place subgoals where it needs."""

    name = "table"
    dim = 4

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def encode(self, texts: Sequence[str]) -> Vectors:
        return np.stack([self.table[t] for t in texts]) if texts else np.zeros((0, 4), np.float32)


# Two skills: "lookup" exemplars point along e0 except one stray phrasing that points along e2;
# "answer" (gated on a final answer) exemplars lean towards e2 but none as close as the stray.
LOOKUP = [f"lookup {i}" for i in range(5)]
ANSWER = [f"answer {i}" for i in range(5)]
TABLE = {
    **{t: _unit(1, 0.1 * i, 0, 0) for i, t in enumerate(LOOKUP[:4])},
    LOOKUP[4]: _unit(0, 0, 1, 0.05),
    **{t: _unit(0, 1, 0.8, 0.1 * i) for i, t in enumerate(ANSWER)},
    "state the result": _unit(0, 0.2, 1, 0),
    "somewhere between": _unit(1, 0, 1, 0),
}


@pytest.fixture
def small(library: Library) -> Library:
    base = library.routable()
    lookup = base[0].model_copy(update={"exemplars": tuple(LOOKUP), "requires": ()})
    answer = base[1].model_copy(update={"exemplars": tuple(ANSWER), "requires": ("final_answer",)})
    return Library(
        prototypes={p.id: p for p in (lookup, answer, library.fallback)},
        fallback=library.fallback,
        templates=library.templates,
        version=VERSION,
    )


def _save(
    directory: Path,
    small: Library,
    *,
    kind: str = "logistic_regression",
    threshold: float = 0.6,
    weights: dict[str, np.ndarray] | None = None,
    **meta: object,
) -> None:
    lookup, answer = (p.id for p in small.routable())
    if kind == "logistic_regression":
        # The regression learnt that e2 is "answer" (the stray lookup phrasing is noise).
        coef = weights or {lookup: 6 * E[0], answer: 6 * E[2]}
        np.savez(
            directory / ROUTER_NPZ,
            coef=np.stack([coef[lookup], coef[answer]]).astype(np.float64),
            intercept=np.zeros(2),
            classes=np.asarray([lookup, answer], dtype=np.str_),
        )
    fields = {
        "format": ROUTER_FORMAT,
        "kind": kind,
        "threshold": threshold,
        "weights": ROUTER_NPZ if kind == "logistic_regression" else None,
        "library_version": VERSION,
        "embedding_model": "table",
        **meta,
    }
    (directory / ROUTER_JSON).write_text(json.dumps(fields), encoding="utf-8")


def _step(text: str) -> Step:
    return Step(index=0, content=text, subgoal="state the result", subgoal_source="derived")


def test_a_logistic_router_corrects_a_route_the_nearest_rule_gets_wrong(
    tmp_path: Path, small: Library
) -> None:
    embedder = TableEmbedder(TABLE)
    query = embedder.encode(["state the result"])
    [by_rule] = PrototypeIndex(small, embedder).route(query, 0.3, None)
    assert by_rule.nearest.id == small.routable()[0].id  # the stray lookup exemplar is nearest
    _save(tmp_path, small)

    index = index_library(small, embedder, tmp_path).index
    [routed] = index.route(query, index.default_min_similarity(0.3), None)

    answer = small.routable()[1]
    assert (routed.prototype.id, routed.fallback) == (answer.id, False)
    assert routed.confidence is not None and routed.confidence > 0.9
    # The similarity keeps its meaning: the cosine to the chosen prototype's nearest exemplar.
    best = float((embedder.encode(ANSWER) @ query[0]).max())
    assert routed.similarity == round(best, 4) < by_rule.similarity


def test_a_prototype_the_step_is_not_eligible_for_is_masked_out(
    tmp_path: Path, small: Library
) -> None:
    embedder = TableEmbedder(TABLE)
    _save(tmp_path, small, threshold=0.0)
    index = index_library(small, embedder, tmp_path).index
    query = embedder.encode(["state the result"])
    lookup, answer = small.routable()

    [shown] = index.route(query, -1.0, [_step("The answer is 7.")])
    [not_shown] = index.route(query, -1.0, [_step("Let me add them up.")])

    assert shown.prototype.id == answer.id
    # The router's favourite needs a final answer this step does not state: the next class
    # is chosen, with the small probability the router gave it (not renormalised).
    assert not_shown.prototype.id == lookup.id
    assert not_shown.confidence is not None and not_shown.confidence < 0.1


def test_a_low_confidence_route_falls_back(tmp_path: Path, small: Library) -> None:
    embedder = TableEmbedder(TABLE)
    _save(tmp_path, small, threshold=0.6)
    index = index_library(small, embedder, tmp_path).index
    # Equally far along e0 and e2: the regression gives each class about one half.
    [route] = index.route(embedder.encode(["somewhere between"]), -1.0, None)
    assert route.fallback
    assert route.prototype.id == small.fallback.id
    assert route.nearest.id in {p.id for p in small.routable()}
    assert route.confidence == pytest.approx(0.5, abs=0.01)


def test_a_nearest_exemplar_router_replaces_only_the_default_threshold(
    tmp_path: Path, small: Library
) -> None:
    embedder = TableEmbedder(TABLE)
    _save(tmp_path, small, kind="nearest_exemplar", threshold=0.42)
    index = index_library(small, embedder, tmp_path).index
    plain = PrototypeIndex(small, embedder)
    vectors = embedder.encode(list(TABLE))

    assert index.default_min_similarity(0.3) == 0.42
    assert plain.default_min_similarity(0.3) == 0.3
    # The rule itself is unchanged: same routes at the same threshold.
    assert index.route(vectors, 0.42, None) == plain.route(vectors, 0.42, None)


def test_without_a_router_file_routing_is_the_nearest_exemplar_rule(
    tmp_path: Path, small: Library
) -> None:
    embedder = TableEmbedder(TABLE)
    index = index_library(small, embedder, tmp_path).index
    vectors = embedder.encode(list(TABLE))
    assert index.router is None
    assert index.default_min_similarity(0.3) == 0.3
    routes = index.route(vectors, 0.3, None)
    assert routes == PrototypeIndex(small, embedder).route(vectors, 0.3, None)
    assert all(r.confidence is None for r in routes)


@pytest.mark.parametrize(
    ("field", "value"),
    [("library_version", "0123456789abcdef"), ("embedding_model", "another-model")],
)
def test_a_router_fitted_for_something_else_is_refused(
    tmp_path: Path, small: Library, field: str, value: str
) -> None:
    _save(tmp_path, small, **{field: value})
    with pytest.raises(LibraryError, match=rf"{ROUTER_JSON}: {field}: .*{value}"):
        index_library(small, TableEmbedder(TABLE), tmp_path)


def test_weights_that_need_pickle_are_refused(tmp_path: Path, small: Library) -> None:
    _save(tmp_path, small)
    with np.load(tmp_path / ROUTER_NPZ) as saved:
        arrays = dict(saved)
    arrays["classes"] = np.asarray(list(arrays["classes"]), dtype=object)
    np.savez(tmp_path / ROUTER_NPZ, **arrays)
    with pytest.raises(LibraryError, match=ROUTER_NPZ):
        index_library(small, TableEmbedder(TABLE), tmp_path)


def test_weights_for_another_embedding_dimension_are_refused(
    tmp_path: Path, small: Library
) -> None:
    lookup, answer = (p.id for p in small.routable())
    _save(tmp_path, small, weights={lookup: np.ones(8), answer: np.ones(8)})
    with pytest.raises(LibraryError, match=rf"{ROUTER_NPZ}: coef: shape"):
        index_library(small, TableEmbedder(TABLE), tmp_path)


@pytest.mark.real
def test_a_router_fitted_on_the_bundled_library_is_served(tmp_path: Path) -> None:
    directory = tmp_path / "prototypes"
    shutil.copytree(PROTOTYPES, directory)
    library = load_library(directory)
    embedder = SentenceTransformerEmbedder(BUNDLED_EMBEDDER)
    pairs = library_pairs(library)
    fit = fit_routers(library, embedder, pairs, pairs_from="exemplars", min_similarity=0.3)
    save_router(
        directory, fit, library_version=library.version, embedding_model=embedder.name, seed=0
    )

    settings = Settings(prototypes_dir=directory, cache_dir=tmp_path / "cache")
    pipeline = asyncio.run(build_pipeline(settings, embedder=embedder, with_judge=False))
    index = pipeline.index

    assert index.router is not None and index.router.kind == fit.chosen
    assert index.router.threshold == fit.threshold
    subgoals = [p.subgoal for p in pairs]
    routes = index.route(embedder.encode(subgoals), index.default_min_similarity(0.3), None)
    right = sum(r.prototype.id == p.prototype_id for r, p in zip(routes, pairs, strict=True))
    assert right >= 0.9 * len(pairs)  # routed by what was fitted on these very pairs
    if fit.chosen == "logistic_regression":
        assert all(r.confidence is not None for r in routes)


# --- served: build_pipeline, /v1/route and reloads ------------------------------------------

KEY = "router-test-key"
SUBGOAL = "search the web for the capital of france"


def _served_copy(tmp_path: Path) -> tuple[Path, Library]:
    directory = tmp_path / "served"
    shutil.copytree(PROTOTYPES, directory)
    return directory, load_library(directory)


def _biased_router(directory: Path, library: Library, favourite: str, **meta: object) -> None:
    """A regression for FakeEmbedder that sends every subgoal to `favourite` (its intercept)."""
    classes = [p.id for p in library.routable()]
    intercept = np.asarray([10.0 if c == favourite else 0.0 for c in classes])
    np.savez(
        directory / ROUTER_NPZ,
        coef=np.zeros((len(classes), FakeEmbedder.dim)),
        intercept=intercept,
        classes=np.asarray(classes, dtype=np.str_),
    )
    fields = {
        "format": ROUTER_FORMAT,
        "kind": "logistic_regression",
        "threshold": 0.5,
        "weights": ROUTER_NPZ,
        "library_version": library.version,
        "embedding_model": FakeEmbedder.name,
        **meta,
    }
    (directory / ROUTER_JSON).write_text(json.dumps(fields), encoding="utf-8")


def _client(tmp_path: Path, directory: Path) -> TestClient:
    settings = Settings(prototypes_dir=directory, cache_dir=tmp_path / "cache", api_key=KEY)
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=FakeJudge())
    return TestClient(app, headers={"Authorization": f"Bearer {KEY}"})


def _route(client: TestClient, **options: object) -> dict[str, Any]:
    body = {"steps": [{"subgoal": SUBGOAL, "content": "Let me look it up."}], **options}
    answer = client.post("/v1/route", json=body)
    assert answer.status_code == 200, answer.text
    step: dict[str, Any] = answer.json()["steps"][0]
    return step


def _favourite(library: Library) -> str:
    """An ungated prototype the nearest rule does not send SUBGOAL to."""
    plain = PrototypeIndex(library, FakeEmbedder())
    [route] = plain.route(FakeEmbedder().encode([SUBGOAL]), -1.0, None)
    return next(p.id for p in library.routable() if not p.requires and p.id != route.nearest.id)


def test_the_service_routes_with_the_router_beside_its_library(tmp_path: Path) -> None:
    directory, library = _served_copy(tmp_path)
    favourite = _favourite(library)
    _biased_router(directory, library, favourite)
    embedder = FakeEmbedder()
    exemplars = embedder.encode(library.prototypes[favourite].exemplars)
    with _client(tmp_path, directory) as client:
        step = _route(client)
        assert (step["prototype_id"], step["fallback"]) == (favourite, False)
        cosine = float((exemplars @ embedder.encode([SUBGOAL])[0]).max())
        assert step["similarity"] == round(cosine, 4)
        # A request's own cosine floor still applies under the router.
        assert _route(client, min_similarity=0.99)["fallback"] is True


def test_a_nearest_exemplar_router_sets_the_served_threshold(tmp_path: Path) -> None:
    directory, library = _served_copy(tmp_path)
    meta = {"library_version": library.version, "embedding_model": FakeEmbedder.name}
    (directory / ROUTER_JSON).write_text(
        json.dumps({"format": ROUTER_FORMAT, "kind": "nearest_exemplar", "threshold": 0.99,
                    "weights": None, **meta}),
        encoding="utf-8",
    )  # fmt: skip
    with _client(tmp_path, directory) as client:
        assert _route(client)["fallback"] is True  # the configured 0.3 would have routed it
        assert _route(client, min_similarity=0.0)["fallback"] is False  # the request's wins


def test_a_reload_with_a_router_for_another_library_is_refused(tmp_path: Path) -> None:
    directory, library = _served_copy(tmp_path)
    favourite = _favourite(library)
    with _client(tmp_path, directory) as client:
        before = _route(client)
        _biased_router(directory, library, favourite, library_version="0123456789abcdef")
        refused = client.post("/v1/admin/reload")
        assert refused.status_code == 422, refused.text
        assert f"{ROUTER_JSON}: library_version" in refused.text
        assert _route(client) == before

        # Fitted for the served library, the same bare reload picks it up (same version).
        _biased_router(directory, library, favourite)
        answer = client.post("/v1/admin/reload")
        assert answer.status_code == 200, answer.text
        assert answer.json()["library_version"] == library.version
        assert _route(client)["prototype_id"] == favourite

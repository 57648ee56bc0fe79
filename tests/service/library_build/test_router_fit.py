"""`scribe router fit`: the threshold calibration and the split on hand-made numbers, both
routers on hand-made vectors, the saved files, and one real fit (MiniLM, shipped library)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from scribe_service.cli import main
from scribe_service.library import load_library
from scribe_service.library_build.errors import BuildError
from scribe_service.library_build.router_fit import (
    ROUTER_JSON,
    ROUTER_NPZ,
    Fit,
    Pair,
    calibrate,
    evaluate,
    fit_logistic,
    fit_routers,
    library_pairs,
    load_logistic,
    read_labels,
    save_router,
    split,
)
from scribe_service.pipeline.embed import Vectors
from support import PROTOTYPES

FALLBACK = "generic_step"


@pytest.mark.parametrize(
    ("confidence", "predicted", "labels", "threshold"),
    [
        # Right routes above 0.6, wrong below: route exactly the right ones, cut mid-gap.
        pytest.param([0.9, 0.8, 0.6, 0.4], "aaaa", "aabb", 0.7, id="cut-above-wrong"),
        # All right: route everything (the lowest threshold).
        pytest.param([0.9, 0.2], "ab", "ab", 0.2, id="all-right"),
        # A wrong route at the top is outweighed by two right ones below it.
        pytest.param([0.9, 0.8, 0.7], "abb", "bbb", 0.7, id="net-positive"),
        # Fallback-labelled pairs pull the threshold above them.
        pytest.param([0.9, 0.3], "ab", ["a", FALLBACK], 0.6, id="fallback-label"),
        # Equal confidences are never split.
        pytest.param([0.5, 0.5, 0.5], "aab", "aaa", 0.5, id="ties"),
    ],
)
def test_calibrate_maximises_right_minus_wrong_routes(
    confidence: list[float], predicted: Sequence[str], labels: Sequence[str], threshold: float
) -> None:
    got = calibrate(np.asarray(confidence), list(predicted), list(labels), FALLBACK)
    assert got == pytest.approx(threshold)


def test_calibrate_falls_back_on_everything_when_every_route_is_wrong() -> None:
    got = calibrate(np.asarray([0.9, 0.4]), ["a", "a"], ["b", "b"], FALLBACK)
    assert got > 0.9


def test_evaluate_counts_fallbacks_and_wrong_routes() -> None:
    e = evaluate(
        "r",
        np.asarray([0.9, 0.8, 0.1, 0.2]),
        list("abca"),
        ["a", "c", "c", FALLBACK],
        0.5,
        FALLBACK,
    )
    # a right; b wrong; c fell back (wrong); the fallback-labelled one fell back (right).
    assert (e.accuracy, e.fallback_rate, e.routed_accuracy, e.net) == (0.5, 0.5, 0.5, 0.25)


def test_split_is_seeded_and_stratified() -> None:
    pairs = [Pair(f"{label}{i}", label) for label in "ab" for i in range(8)] + [Pair("c0", "c")]
    train, held = split(pairs, 0.25, seed=3)
    assert (train, held) == split(pairs, 0.25, seed=3)
    assert split(pairs, 0.25, seed=4) != (train, held)
    assert sorted(p.prototype_id for p in held) == ["a", "a", "b", "b"]
    assert Pair("c0", "c") in train  # a prototype's last pair is never held out
    assert not {p.subgoal for p in train} & {p.subgoal for p in held}


class TableEmbedder:
    """Hand-made vectors: each text's vector is looked up."""

    name = "table"

    def __init__(self, table: dict[str, Vectors]) -> None:
        self.table = table

    def encode(self, texts: Sequence[str]) -> Vectors:
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


def _unit(v: Vectors) -> Vectors:
    return (v / np.linalg.norm(v)).astype(np.float32)


def _axis_vectors(seed: int) -> dict[str, Vectors]:
    """Each routable shipped prototype's exemplars near its own axis, a little noise apart."""
    routable = load_library(PROTOTYPES).routable()
    rng = np.random.default_rng(seed)
    eye = np.eye(len(routable) + 1)
    return {
        e: _unit(eye[i] + 0.05 * rng.standard_normal(len(eye)))
        for i, p in enumerate(routable)
        for e in p.exemplars
    }


def test_both_routers_on_separable_hand_made_vectors(tmp_path: Path) -> None:
    library = load_library(PROTOTYPES)
    table = _axis_vectors(0)
    # A subgoal on an axis of its own, labelled as one no skill fits.
    unrelated = "Something unrelated to any skill"
    table[unrelated] = _unit(np.eye(len(library.routable()) + 1)[-1])
    two = library.routable()[:2]
    lines = [{"subgoal": e, "prototype_id": p.id} for p in two for e in p.exemplars]
    lines.append({"subgoal": unrelated, "prototype_id": FALLBACK})
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")

    fit = fit_routers(
        library,
        TableEmbedder(table),
        read_labels(labels, library),
        pairs_from="labels",
        min_similarity=0.5,
        seed=0,
    )
    assert [e.router for e in fit.evaluations] == [
        "nearest exemplar, configured threshold",
        "nearest exemplar, calibrated threshold",
        "logistic regression, calibrated confidence",
    ]
    for evaluation in fit.evaluations:
        assert evaluation.accuracy == 1.0 and evaluation.fallback_rate == 0.0
    assert fit.chosen == "nearest_exemplar"  # a tie goes to the service's own rule
    # The fallback-labelled training pair (cosine 0 to every exemplar) is below the threshold.
    assert 0.0 < fit.threshold <= 0.9

    written = save_router(
        tmp_path, fit, library_version=library.version, embedding_model="table", seed=0
    )
    meta = json.loads((tmp_path / ROUTER_JSON).read_text(encoding="utf-8"))
    assert written == [tmp_path / ROUTER_JSON] and not (tmp_path / ROUTER_NPZ).exists()
    assert meta["kind"] == "nearest_exemplar" and meta["library_version"] == library.version
    assert meta["threshold"] == fit.threshold and len(meta["evaluation"]) == 3


def test_a_saved_regression_loads_without_pickle(tmp_path: Path) -> None:
    library = load_library(PROTOTYPES)
    table = _axis_vectors(1)
    pairs = library_pairs(library)
    owners = [p.prototype_id for p in pairs]
    vectors = np.stack([table[p.subgoal] for p in pairs])
    logistic, confidence, predicted = fit_logistic(vectors, owners, 0)
    assert predicted == owners and confidence.min() > 0.5  # cross-validated, and separable
    fit = Fit([], "logistic_regression", 0.5, logistic, train=1, held_out=1, pairs_from="x")
    written = save_router(
        tmp_path, fit, library_version=library.version, embedding_model="table", seed=0
    )
    assert written == [tmp_path / ROUTER_JSON, tmp_path / ROUTER_NPZ]
    loaded = load_logistic(tmp_path / ROUTER_NPZ)  # allow_pickle=False inside
    assert loaded.classes == logistic.classes
    queries = np.stack([table[e] for e in library.routable()[3].exemplars])
    assert loaded.predict(queries)[1] == [library.routable()[3].id] * len(queries)
    meta = json.loads((tmp_path / ROUTER_JSON).read_text(encoding="utf-8"))
    assert meta["kind"] == "logistic_regression" and meta["weights"] == ROUTER_NPZ


@pytest.mark.parametrize(
    ("line", "error"),
    [
        pytest.param('{"subgoal": "x"}', "needs", id="no-id"),
        pytest.param('{"subgoal": "x", "prototype_id": "nope"}', "not in the library", id="id"),
        pytest.param("{", "not JSON", id="json"),
    ],
)
def test_labels_are_checked(tmp_path: Path, line: str, error: str) -> None:
    path = tmp_path / "l.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(BuildError, match=error):
        read_labels(path, load_library(PROTOTYPES))


@pytest.mark.real
def test_cli_fits_on_the_shipped_library_with_minilm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    library_dir = tmp_path / "lib"
    shutil.copytree(PROTOTYPES, library_dir)
    assert main(["router", "fit", "--library", str(library_dir)]) == 0
    out = capsys.readouterr().out
    assert "| nearest exemplar, calibrated threshold |" in out
    assert "| logistic regression, calibrated confidence |" in out
    meta = json.loads((library_dir / ROUTER_JSON).read_text(encoding="utf-8"))
    assert meta["library_version"] == load_library(library_dir).version
    assert meta["embedding_model"] and meta["held_out"] > 0
    # MiniLM separates the shipped skills far better than chance (26 prototypes).
    best = max(e["accuracy"] for e in meta["evaluation"])
    assert best > 0.4
    assert (library_dir / ROUTER_NPZ).exists() == (meta["kind"] == "logistic_regression")

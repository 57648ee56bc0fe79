"""`scribe router fit`: two routers fitted on (subgoal → prototype) pairs, compared on held-out
pairs, the better one saved beside the library.

The pairs are the library's own exemplars (each labelled with its prototype) or a
hand-labelled JSONL file (`{"subgoal": …, "prototype_id": …}`; the fallback's id marks a
subgoal no skill fits). A seeded split, stratified by prototype, holds some out.

(a) The nearest-exemplar rule the service routes with (`pipeline/retrieve.py`): the prototype
    owning the nearest exemplar, the fallback below a similarity threshold. The exemplars are
    the library's minus the held-out subgoals (else a held-out exemplar finds itself).
(b) A multinomial logistic regression (scikit-learn) on the embeddings, trained on the same
    exemplars plus the labelled training pairs; the fallback below a confidence threshold on
    its top class probability.

Each threshold is calibrated on the training pairs, from scores the router gives a pair it was
not fitted on (the nearest *other* exemplar; cross-validated probabilities), by the service's
premise: a wrong rubric gives systematically wrong rewards while the generic one is only
vague. A route counts +1 when right and -1 when wrong, a fallback 0 (+1 when the label is the
fallback), and the threshold with the highest total wins (the lowest on a tie).

Files (none pickled): `router.json` (the kind, the threshold, the library version and
embedding model it was fitted on, the comparison table) and, for the regression,
`router.npz` (`coef`, `intercept`, `classes`). Neither is a `*.toml` file, so neither enters
the library version.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from scribe_service.library import Library
from scribe_service.library_build.errors import BuildError
from scribe_service.pipeline.embed import Embedder, Vectors

ROUTER_JSON = "router.json"
ROUTER_NPZ = "router.npz"
ROUTER_FORMAT = 1
DEFAULT_HOLDOUT = 0.25
Kind = Literal["nearest_exemplar", "logistic_regression"]


@dataclass(frozen=True)
class Pair:
    subgoal: str
    prototype_id: str


def library_pairs(library: Library) -> list[Pair]:
    """Every exemplar of every routable prototype, labelled with its prototype."""
    return [Pair(e, p.id) for p in library.routable() for e in p.exemplars]


def read_labels(path: Path, library: Library) -> list[Pair]:
    """A hand-labelled JSONL file; every id must be one of the library's (the fallback too)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BuildError(f"{path}: cannot read: {exc}") from exc
    pairs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BuildError(f"{where}: not JSON: {exc}") from None
        subgoal = raw.get("subgoal") if isinstance(raw, dict) else None
        ident = raw.get("prototype_id") if isinstance(raw, dict) else None
        if not isinstance(subgoal, str) or not subgoal.strip() or not isinstance(ident, str):
            raise BuildError(f'{where}: needs "subgoal" and "prototype_id" strings')
        if ident not in library.prototypes:
            raise BuildError(f"{where}: prototype_id {ident!r} is not in the library")
        pairs.append(Pair(subgoal.strip(), ident))
    if not pairs:
        raise BuildError(f"{path}: no labelled pairs")
    return pairs


def split(pairs: Sequence[Pair], holdout: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, held out): per prototype, a seeded `holdout` share held out, at least one of
    any prototype with two pairs or more, never its last training pair."""
    if not 0.0 < holdout < 1.0:
        raise BuildError(f"holdout must be between 0 and 1, got {holdout}")
    rng = random.Random(seed)
    by_label: dict[str, list[Pair]] = {}
    for pair in pairs:
        by_label.setdefault(pair.prototype_id, []).append(pair)
    train: list[Pair] = []
    held: list[Pair] = []
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        n = min(len(group) - 1, max(1, round(holdout * len(group)))) if len(group) > 1 else 0
        held += group[:n]
        train += group[n:]
    if not held:
        raise BuildError("too few pairs to hold any out")
    return train, held


def calibrate(
    confidence: npt.NDArray[np.float64],
    predicted: Sequence[str],
    labels: Sequence[str],
    fallback_id: str,
) -> float:
    """The threshold maximising (+1 right route, -1 wrong route, +1 fallback where the label
    is the fallback, 0 other fallbacks), routing the most pairs of equals; set midway in the
    gap it cuts. Routed: confidence >= it."""
    if len(confidence) == 0:
        return 0.0
    gain = np.asarray([1.0 if p == y else -1.0 for p, y in zip(predicted, labels, strict=True)])
    kept = np.asarray([1.0 if y == fallback_id else 0.0 for y in labels])
    order = np.argsort(-confidence, kind="stable")
    # Candidate k: the k most confident pairs are routed, the rest fall back.
    routed = np.concatenate([[0.0], np.cumsum(gain[order])])
    fallen = np.concatenate([np.cumsum(kept[order][::-1])[::-1], [0.0]])
    totals = routed + fallen
    sorted_conf = confidence[order]
    best_k, best = 0, -np.inf
    for k, total in enumerate(totals):
        # Only cut between distinct confidences: a threshold cannot split equal ones.
        if 0 < k < len(sorted_conf) and sorted_conf[k] == sorted_conf[k - 1]:
            continue
        if total >= best:  # >=: of equals, the one routing more (the lowest threshold)
            best_k, best = k, total
    if best_k == 0:
        return float(np.nextafter(sorted_conf[0], np.inf))
    if best_k == len(sorted_conf):
        return float(sorted_conf[-1])
    # Midway between the last routed and the first fallen back: a held-out score a little
    # below the lowest training one is no reason to fall back.
    return float((sorted_conf[best_k - 1] + sorted_conf[best_k]) / 2)


@dataclass(frozen=True)
class Evaluation:
    router: str
    threshold: float
    accuracy: float
    """Share of held-out pairs routed to their label (the fallback counts where labelled so)."""
    fallback_rate: float
    routed_accuracy: float | None
    """Among held-out pairs not sent to the fallback, the share routed right."""
    net: float
    """The calibration objective per held-out pair: (right - wrong routes) / pairs."""


def evaluate(
    name: str,
    confidence: npt.NDArray[np.float64],
    predicted: Sequence[str],
    labels: Sequence[str],
    threshold: float,
    fallback_id: str,
) -> Evaluation:
    routed = confidence >= threshold
    final = [p if r else fallback_id for p, r in zip(predicted, routed.tolist(), strict=True)]
    right = [f == y for f, y in zip(final, labels, strict=True)]
    routed_right = [ok for ok, r in zip(right, routed.tolist(), strict=True) if r]
    wrong = len(routed_right) - sum(routed_right)
    return Evaluation(
        router=name,
        threshold=round(threshold, 4),
        accuracy=round(sum(right) / len(labels), 4),
        fallback_rate=round(1 - float(routed.mean()), 4),
        routed_accuracy=round(sum(routed_right) / len(routed_right), 4) if routed_right else None,
        net=round((sum(right) - wrong) / len(labels), 4),
    )


class NearestExemplar:
    """The service's rule over a set of exemplar vectors (no `requires` gate: bare subgoals)."""

    def __init__(self, vectors: Vectors, owners: Sequence[str], texts: Sequence[str]) -> None:
        self.vectors = vectors
        self.owners = list(owners)
        self.texts = list(texts)

    def predict(
        self, queries: Vectors, exclude: Sequence[str] | None = None
    ) -> tuple[npt.NDArray[np.float64], list[str]]:
        """Per query, the nearest similarity and its owner; `exclude[i]`: a text query i may
        not match (itself, for a score on a pair the rule was not fitted on)."""
        sims = (queries @ self.vectors.T).astype(np.float64)
        if exclude is not None:
            row = {t: i for i, t in enumerate(self.texts)}
            for i, text in enumerate(exclude):
                if text in row:
                    sims[i, row[text]] = -np.inf
        best = sims.argmax(axis=1)
        return sims[np.arange(len(queries)), best], [self.owners[int(b)] for b in best]


@dataclass(frozen=True)
class Logistic:
    coef: npt.NDArray[np.float64]
    intercept: npt.NDArray[np.float64]
    classes: list[str]

    def predict(self, queries: Vectors) -> tuple[npt.NDArray[np.float64], list[str]]:
        logits = queries.astype(np.float64) @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        best = probs.argmax(axis=1)
        return probs[np.arange(len(queries)), best], [self.classes[int(b)] for b in best]


def _sklearn() -> Any:
    try:
        from sklearn import linear_model, model_selection  # type: ignore[import-untyped]
    except ImportError as exc:
        raise BuildError(
            "`scribe router fit` needs scikit-learn: pip install 'scribe-reward[learn]'"
        ) from exc
    return linear_model, model_selection


def fit_logistic(
    vectors: Vectors, labels: Sequence[str], seed: int
) -> tuple[Logistic, npt.NDArray[np.float64], list[str]]:
    """The regression on all rows, and each row's cross-validated (confidence, class): the
    scores calibration needs from a model that did not see the row."""
    linear_model, model_selection = _sklearn()
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise BuildError("the regression needs pairs of at least two prototypes")

    def model() -> Any:
        # C=10: unit-norm MiniLM vectors give small logits; the default C=1 regularises every
        # class probability towards uniform, and then no confidence threshold separates.
        return linear_model.LogisticRegression(C=10.0, max_iter=2000, random_state=seed)

    y = np.asarray(labels)
    folds = min(5, min(int((y == c).sum()) for c in classes))
    if folds >= 2:
        cv = model_selection.StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        probs = model_selection.cross_val_predict(
            model(), vectors, y, cv=cv, method="predict_proba"
        )
        best = probs.argmax(axis=1)
        confidence = probs[np.arange(len(y)), best].astype(np.float64)
        predicted = [classes[int(b)] for b in best]
    else:  # a prototype with a single row: no fold holds it out, so score on the fitted model
        confidence, predicted = np.ones(len(y)), list(labels)
    fitted = model().fit(vectors, y)
    logistic = Logistic(
        coef=np.asarray(fitted.coef_, dtype=np.float64),
        intercept=np.asarray(fitted.intercept_, dtype=np.float64),
        classes=[str(c) for c in fitted.classes_],
    )
    return logistic, confidence, predicted


@dataclass(frozen=True)
class Fit:
    evaluations: list[Evaluation]
    chosen: Kind
    threshold: float
    logistic: Logistic | None
    train: int
    held_out: int
    pairs_from: str


def fit_routers(
    library: Library,
    embedder: Embedder,
    pairs: Sequence[Pair],
    *,
    pairs_from: str,
    min_similarity: float,
    holdout: float = DEFAULT_HOLDOUT,
    seed: int = 0,
) -> Fit:
    """Fit both routers on the training split, evaluate them (and the rule at the configured
    `min_similarity`) on the held-out split, and choose the one with the higher net score
    there, the objective both thresholds were calibrated for (the nearest-exemplar rule on a
    tie: it is what the service does without a fitted router)."""
    fallback = library.fallback.id
    train, held = split(pairs, holdout, seed)
    held_texts = {p.subgoal for p in held}
    exemplars = [(e, p.id) for p in library.routable() for e in p.exemplars if e not in held_texts]
    # The labelled training pairs extend what the regression learns from (hand labels); with
    # the library's own pairs they are these exemplars already.
    seen = {e for e, _ in exemplars}
    rows = exemplars + [
        (p.subgoal, p.prototype_id)
        for p in train
        if p.prototype_id != fallback and p.subgoal not in seen
    ]
    texts = [t for t, _ in rows]
    vectors = embedder.encode(texts + [p.subgoal for p in train] + [p.subgoal for p in held])
    row_vectors = vectors[: len(rows)]
    train_vectors = vectors[len(rows) : len(rows) + len(train)]
    held_vectors = vectors[len(rows) + len(train) :]
    train_labels = [p.prototype_id for p in train]
    held_labels = [p.prototype_id for p in held]

    n = len(exemplars)
    rule = NearestExemplar(row_vectors[:n], [o for _, o in exemplars], texts[:n])
    conf, pred = rule.predict(train_vectors, exclude=[p.subgoal for p in train])
    rule_threshold = calibrate(conf, pred, train_labels, fallback)
    held_conf, held_pred = rule.predict(held_vectors)
    evaluations = [
        evaluate(
            "nearest exemplar, configured threshold",
            held_conf,
            held_pred,
            held_labels,
            min_similarity,
            fallback,
        ),
        evaluate(
            "nearest exemplar, calibrated threshold",
            held_conf,
            held_pred,
            held_labels,
            rule_threshold,
            fallback,
        ),
    ]

    logistic, cv_conf, cv_pred = fit_logistic(row_vectors, [o for _, o in rows], seed)
    # Calibrated on the training pairs' cross-validated scores (fallback-labelled pairs were
    # never a class: they are scored by the fitted model, which did not see them).
    index = {t: i for i, t in enumerate(texts)}
    fit_conf, fit_pred = logistic.predict(train_vectors)
    conf_l = np.asarray(
        [
            cv_conf[index[p.subgoal]] if p.subgoal in index else fit_conf[i]
            for i, p in enumerate(train)
        ]
    )
    pred_l = [
        cv_pred[index[p.subgoal]] if p.subgoal in index else fit_pred[i]
        for i, p in enumerate(train)
    ]
    lr_threshold = calibrate(conf_l, pred_l, train_labels, fallback)
    lr_conf, lr_pred = logistic.predict(held_vectors)
    evaluations.append(
        evaluate(
            "logistic regression, calibrated confidence",
            lr_conf,
            lr_pred,
            held_labels,
            lr_threshold,
            fallback,
        )
    )
    chosen: Kind = (
        "logistic_regression" if evaluations[2].net > evaluations[1].net else "nearest_exemplar"
    )
    return Fit(
        evaluations=evaluations,
        chosen=chosen,
        threshold=lr_threshold if chosen == "logistic_regression" else rule_threshold,
        logistic=logistic if chosen == "logistic_regression" else None,
        train=len(train),
        held_out=len(held),
        pairs_from=pairs_from,
    )


def table(fit: Fit) -> str:
    """The comparison as a Markdown table."""
    lines = [
        f"held-out pairs: {fit.held_out} (trained on {fit.train}; pairs from {fit.pairs_from})",
        "",
        "| router | threshold | accuracy | fallback rate | accuracy when routed | net |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for e in fit.evaluations:
        routed = "-" if e.routed_accuracy is None else f"{100 * e.routed_accuracy:.1f}%"
        lines.append(
            f"| {e.router} | {e.threshold} | {100 * e.accuracy:.1f}% | "
            f"{100 * e.fallback_rate:.1f}% | {routed} | {e.net:+.3f} |"
        )
    return "\n".join(lines) + "\n"


def save_router(
    directory: Path, fit: Fit, *, library_version: str, embedding_model: str, seed: int
) -> list[Path]:
    """Write `router.json` (and `router.npz` for the regression) into the library directory;
    a previous router of the other kind is removed so the two never disagree."""
    weights = directory / ROUTER_NPZ
    written = []
    if fit.logistic is not None:
        np.savez(
            weights,
            coef=fit.logistic.coef,
            intercept=fit.logistic.intercept,
            classes=np.asarray(fit.logistic.classes, dtype=np.str_),
        )
        written.append(weights)
    elif weights.exists():
        weights.unlink()
    meta = {
        "format": ROUTER_FORMAT,
        "kind": fit.chosen,
        "threshold": fit.threshold,
        "weights": ROUTER_NPZ if fit.logistic is not None else None,
        "library_version": library_version,
        "embedding_model": embedding_model,
        "pairs": fit.pairs_from,
        "train": fit.train,
        "held_out": fit.held_out,
        "seed": seed,
        "evaluation": [e.__dict__ for e in fit.evaluations],
    }
    path = directory / ROUTER_JSON
    path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return [path, *written]


def load_logistic(path: Path) -> Logistic:
    """The regression's weights as `save_router` wrote them (no pickle)."""
    with np.load(path, allow_pickle=False) as data:
        return Logistic(
            coef=np.asarray(data["coef"], dtype=np.float64),
            intercept=np.asarray(data["intercept"], dtype=np.float64),
            classes=[str(c) for c in data["classes"]],
        )

"""A fitted router (`scribe router fit`) read from beside a library, for serving.

`router.json` says which rule won on held-out pairs and its calibrated threshold; for the
logistic regression `router.npz` holds its weights. A router is only valid for the library
and the embedding model it was fitted on: its threshold and weights describe those vectors
and those prototypes, and under any other they would route with confidence and no meaning.
So a router whose `library_version` or `embedding_model` differs from what is served is
refused like an invalid library (`LibraryError`, naming the file and the field), never
silently ignored: a refreshed library needs its router refitted, or removed.

Without `router.json` there is no router and routing is the nearest-exemplar rule at the
configured threshold, as before routers existed.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scribe_service.library import Library, LibraryError
from scribe_service.library_build.router_fit import (
    ROUTER_FORMAT,
    ROUTER_JSON,
    Kind,
    Logistic,
    load_logistic,
)

KINDS: tuple[Kind, ...] = ("nearest_exemplar", "logistic_regression")
NO_SIMILARITY_FLOOR = -1.0
"""The cosine floor under a regression router when a request sets none: its confidence
decides the fallback, and no cosine is below -1."""


@dataclass(frozen=True)
class FittedRouter:
    kind: Kind
    threshold: float
    """A cosine similarity (nearest exemplar) or a top-class probability (regression)."""
    logistic: Logistic | None
    source: Path

    def describe(self) -> str:
        return f"{self.kind} router, threshold {self.threshold:.4f} ({self.source})"

    def default_min_similarity(self) -> float:
        """The cosine floor that replaces the configured one where a request sets none."""
        if self.kind == "nearest_exemplar":
            return self.threshold
        return NO_SIMILARITY_FLOOR

    def probabilities(self, vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Softmax over the router's classes of W·x + b, one row per vector."""
        assert self.logistic is not None
        logits = vectors.astype(np.float64) @ self.logistic.coef.T + self.logistic.intercept
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        return probs


def load_router(
    directory: Path, library: Library, *, embedding_model: str, dim: int
) -> FittedRouter | None:
    """The router saved beside the library at `directory`, checked against what is served;
    None when there is none."""
    path = directory / ROUTER_JSON
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LibraryError(f"{path}: not a readable JSON file: {exc}") from exc
    if not isinstance(meta, dict):
        raise LibraryError(f"{path}: (top level): must be a JSON object")
    _expect(path, meta, "format", ROUTER_FORMAT)
    _expect(path, meta, "library_version", library.version, "the library served")
    _expect(path, meta, "embedding_model", embedding_model, "the embedding model served")
    kind = meta.get("kind")
    if kind not in KINDS:
        raise LibraryError(f"{path}: kind: {kind!r} is not one of {', '.join(KINDS)}")
    threshold = meta.get("threshold")
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not math.isfinite(threshold)
    ):
        raise LibraryError(f"{path}: threshold: {threshold!r} is not a finite number")
    logistic = None
    if kind == "logistic_regression":
        logistic = _load_weights(path, meta.get("weights"), library, dim)
    return FittedRouter(kind=kind, threshold=float(threshold), logistic=logistic, source=path)


def _expect(path: Path, meta: dict[str, Any], field: str, wanted: object, what: str = "") -> None:
    found = meta.get(field)
    if found != wanted:
        served = f" ({what})" if what else ""
        raise LibraryError(
            f"{path}: {field}: the router was fitted for {found!r}, not {wanted!r}{served}; "
            "refit it with `scribe router fit` or remove it"
        )


def _load_weights(path: Path, weights: object, library: Library, dim: int) -> Logistic:
    # A bare file name beside router.json: the metadata must not point the service elsewhere.
    if not isinstance(weights, str) or not weights or Path(weights).name != weights:
        raise LibraryError(f"{path}: weights: {weights!r} is not a file name beside it")
    npz = path.parent / weights
    try:
        logistic = load_logistic(npz)  # np.load(allow_pickle=False): an object array is refused
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise LibraryError(f"{npz}: not readable router weights: {exc}") from exc
    classes = len(logistic.classes)
    if logistic.coef.shape != (classes, dim):
        raise LibraryError(
            f"{npz}: coef: shape {logistic.coef.shape}, wanted ({classes}, {dim}) "
            "(classes × embedding dimension)"
        )
    if logistic.intercept.shape != (classes,):
        raise LibraryError(
            f"{npz}: intercept: shape {logistic.intercept.shape}, wanted ({classes},)"
        )
    if not (np.isfinite(logistic.coef).all() and np.isfinite(logistic.intercept).all()):
        raise LibraryError(f"{npz}: coef/intercept: not all finite")
    routable = {p.id for p in library.routable()}
    unknown = sorted(set(logistic.classes) - routable)
    if unknown or len(set(logistic.classes)) != classes:
        raise LibraryError(
            f"{npz}: classes: must be distinct routable prototypes of the library "
            f"(unknown: {', '.join(unknown) or 'none'})"
        )
    return logistic

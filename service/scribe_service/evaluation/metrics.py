"""Reward-quality metrics: pure functions of scores and human labels, plus a bootstrap.

Conventions every function keeps: a number that cannot be computed (one class present, fewer
than two points, a constant input) is `None`, never 0 or 0.5; inputs hold judged steps only,
because a step the judge failed on has no score, and scoring it 0 would make a broken judge
look like a strict one (callers count failures separately). Ties are handled exactly: AUROC
counts a tied positive/negative pair as half a win (the Mann-Whitney form), and Spearman
ranks ties by their mean rank.

The bootstrap resamples *units* (trajectories), not steps: the steps of one trajectory share a
task, a policy model and often a propagated error label, so resampling steps would give
intervals that are too narrow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

Unit = TypeVar("Unit")


@dataclass(frozen=True)
class Estimate:
    """A metric's value with its bootstrap 95 % interval (None where not computable)."""

    value: float | None
    lo: float | None = None
    hi: float | None = None
    n: int = 0
    """How many items (steps, trajectories or pairs) the value was computed on."""

    def as_dict(self) -> dict[str, float | int | None]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "n": self.n}


def mid_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of the ranks they span."""
    data = np.asarray(values, dtype=float)
    order = np.argsort(data, kind="mergesort")
    ranks = np.empty(len(data), dtype=float)
    sorted_values = data[order]
    start = 0
    while start < len(data):
        end = start
        while end + 1 < len(data) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """P(score of a random positive > score of a random negative), ties counting one half."""
    if len(scores) != len(positive):
        raise ValueError("scores and labels differ in length")
    flags = np.asarray(positive, dtype=bool)
    n_pos = int(flags.sum())
    n_neg = len(flags) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = mid_ranks(scores)
    u = float(ranks[flags].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho: Pearson's correlation of the mid-ranks; None for a constant input."""
    if len(x) != len(y):
        raise ValueError("x and y differ in length")
    if len(x) < 2:
        return None
    rx, ry = mid_ranks(x), mid_ranks(y)
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    if denominator == 0:
        return None
    return float((dx * dy).sum()) / denominator


def agreement(predicted: Sequence[int], gold: Sequence[int]) -> float | None:
    """Share of exact matches."""
    if len(predicted) != len(gold):
        raise ValueError("predicted and gold differ in length")
    if not gold:
        return None
    return sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold)


# --- mapping a 0-3 score to the -1 / 0 / +1 labels ---------------------------------------------


@dataclass(frozen=True)
class CutPoints:
    """score < low → -1; low ≤ score < high → 0; score ≥ high → +1."""

    low: float
    high: float

    def label(self, score: float) -> int:
        return -1 if score < self.low else 0 if score < self.high else 1


def _candidates(scores: Sequence[float]) -> list[float]:
    # Thresholds between observed values are all a "score >= t" rule can distinguish; -inf
    # and +inf let a class be empty.
    return [-math.inf, *sorted(set(scores)), math.inf]


def fit_cut_points(scores: Sequence[float], labels: Sequence[int]) -> CutPoints | None:
    """The cut points that maximise three-class agreement on (scores, labels).

    Among equally good cut points the first in (low, high) ascending order wins, so the fit
    is deterministic. None when there is nothing to fit on.
    """
    if not scores:
        return None
    best: tuple[float, CutPoints] | None = None
    candidates = _candidates(scores)
    for i, low in enumerate(candidates):
        for high in candidates[i:]:
            cuts = CutPoints(low, high)
            value = agreement([cuts.label(s) for s in scores], labels)
            assert value is not None
            if best is None or value > best[0]:
                best = (value, cuts)
    return None if best is None else best[1]


# --- ProcessBench: the first erroneous step ---------------------------------------------------


def predicted_first_error(rewards: Sequence[float], threshold: float) -> int | None:
    """Position of the first step whose reward is below `threshold`; None if there is none."""
    return next((i for i, r in enumerate(rewards) if r < threshold), None)


def first_error_f1(
    predicted: Sequence[int | None], truth: Sequence[int | None]
) -> tuple[float | None, float | None, float | None]:
    """ProcessBench's score: (accuracy on erroneous solutions, on correct ones, their harmonic
    mean). `truth[i]` is the position of the first wrong step, None for a correct solution; an
    erroneous solution counts only when the predicted position is exactly right."""
    if len(predicted) != len(truth):
        raise ValueError("predicted and truth differ in length")
    erroneous = [p == t for p, t in zip(predicted, truth, strict=True) if t is not None]
    correct = [p is None for p, t in zip(predicted, truth, strict=True) if t is None]
    acc_err = sum(erroneous) / len(erroneous) if erroneous else None
    acc_ok = sum(correct) / len(correct) if correct else None
    if acc_err is None or acc_ok is None:
        return acc_err, acc_ok, None
    f1 = 0.0 if acc_err + acc_ok == 0 else 2 * acc_err * acc_ok / (acc_err + acc_ok)
    return acc_err, acc_ok, f1


def fit_first_error_threshold(
    rewards: Sequence[Sequence[float]], truth: Sequence[int | None]
) -> float | None:
    """The reward threshold that maximises first-error F1 on (rewards, truth)."""
    values = [r for trajectory in rewards for r in trajectory]
    if not values:
        return None
    best: tuple[float, float] | None = None
    for threshold in _candidates(values):
        predicted = [predicted_first_error(r, threshold) for r in rewards]
        f1 = first_error_f1(predicted, truth)[2]
        if f1 is not None and (best is None or f1 > best[0]):
            best = (f1, threshold)
    return None if best is None else best[1]


# --- consistency ---------------------------------------------------------------------------


def modal_agreement(scores: Sequence[int]) -> float | None:
    """Share of repeated scores equal to the most frequent one."""
    if not scores:
        return None
    counts = np.bincount(np.asarray(scores, dtype=int))
    return float(counts.max()) / len(scores)


def modal_score(scores: Sequence[int]) -> int | None:
    """The most frequent score; the lowest on a tie (a judge that cannot decide never pays)."""
    if not scores:
        return None
    return int(np.argmax(np.bincount(np.asarray(scores, dtype=int))))


def std(values: Sequence[float]) -> float | None:
    """Population standard deviation (the spread of the repeats themselves)."""
    if not values:
        return None
    return float(np.std(np.asarray(values, dtype=float)))


def mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


# --- bootstrap -----------------------------------------------------------------------------


def bootstrap(
    units: Sequence[Unit],
    statistic: Callable[[Sequence[Unit]], float | None],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    size: Callable[[Sequence[Unit]], int] = len,
) -> Estimate:
    """`statistic(units)` with a percentile interval from resampling `units` with replacement.

    Resamples where the statistic is undefined (one class drawn) are left out; with fewer
    than half of them defined the interval is None rather than a misleading one.
    """
    value = statistic(units) if units else None
    n = size(units) if units else 0
    if value is None or n_resamples <= 0:
        return Estimate(value, n=n)
    rng = np.random.default_rng(seed)
    draws: list[float] = []
    for _ in range(n_resamples):
        picks = rng.integers(0, len(units), size=len(units))
        result = statistic([units[i] for i in picks])
        if result is not None:
            draws.append(result)
    if len(draws) < n_resamples / 2:
        return Estimate(value, n=n)
    lo, hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return Estimate(value, float(lo), float(hi), n)

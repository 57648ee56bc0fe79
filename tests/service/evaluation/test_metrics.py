"""The metric functions against hand-computed values and against scikit-learn / scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from scribe_service.evaluation import metrics as m


def test_mid_ranks_share_tied_ranks() -> None:
    assert m.mid_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]


def test_auroc_by_hand() -> None:
    # Positives 0.9 and 0.4, negatives 0.5 and 0.1: of 4 pairs, 3 are ordered right.
    assert m.auroc([0.9, 0.4, 0.5, 0.1], [True, True, False, False]) == 0.75


def test_auroc_ties_count_one_half() -> None:
    # One positive and one negative with the same score: exactly a coin flip.
    assert m.auroc([1.0, 1.0], [True, False]) == 0.5
    # 2 positives (3, 2), 2 negatives (2, 0): pairs (3>2)(3>0)(2=2: 1/2)(2>0) = 3.5 of 4.
    assert m.auroc([3, 2, 2, 0], [True, True, False, False]) == 0.875


def test_auroc_one_class_is_undefined_not_zero() -> None:
    assert m.auroc([0.1, 0.9], [True, True]) is None
    assert m.auroc([0.1, 0.9], [False, False]) is None
    assert m.auroc([], []) is None


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_many_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=60).astype(float)  # 0-3 scores: ties everywhere
    labels = rng.integers(0, 2, size=60).astype(bool)
    assert m.auroc(scores.tolist(), labels.tolist()) == pytest.approx(roc_auc_score(labels, scores))


def test_spearman_by_hand() -> None:
    assert m.spearman([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert m.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # Ranks x = (1, 2.5, 2.5), y = (1, 2, 3), both of mean 2: dx = (-1, .5, .5),
    # dy = (-1, 0, 1), so Σdx·dy = 1.5, Σdx² = 1.5, Σdy² = 2 and rho = 1.5 / √3.
    assert m.spearman([0, 1, 1], [1, 2, 3]) == pytest.approx(1.5 / math.sqrt(3))


def test_spearman_undefined_cases() -> None:
    assert m.spearman([2, 2, 2], [1, 2, 3]) is None  # constant scores
    assert m.spearman([1], [1]) is None


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, size=40).tolist()
    y = rng.integers(-1, 2, size=40).tolist()
    assert m.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)


def test_agreement_and_empty() -> None:
    assert m.agreement([1, 0, -1, 1], [1, 1, -1, -1]) == 0.5
    assert m.agreement([], []) is None


def test_cut_points_fit_by_hand() -> None:
    # Rewards 0, 1/3, 2/3, 1 with labels -1, 0, +1, +1: low = 1/3, high = 2/3 fits all four.
    cuts = m.fit_cut_points([0, 1 / 3, 2 / 3, 1], [-1, 0, 1, 1])
    assert cuts == m.CutPoints(1 / 3, 2 / 3)
    assert [cuts.label(s) for s in (0, 0.3, 1 / 3, 0.5, 2 / 3, 1)] == [-1, -1, 0, 0, 1, 1]


def test_cut_points_can_leave_a_class_empty() -> None:
    # No 0 labels at all: the best fit puts nothing in the middle class.
    cuts = m.fit_cut_points([0.0, 0.0, 1.0, 1.0], [-1, -1, 1, 1])
    assert cuts is not None
    assert [cuts.label(s) for s in (0.0, 1.0)] == [-1, 1]
    assert m.fit_cut_points([], []) is None


def test_first_error_by_hand() -> None:
    assert m.predicted_first_error([1.0, 0.6, 0.2, 0.1], 0.5) == 2
    assert m.predicted_first_error([1.0, 0.6], 0.5) is None
    # Erroneous: truth 2 predicted 2 (hit), truth 1 predicted 2 (miss) → 1/2.
    # Correct: predicted None (hit), predicted 0 (miss), predicted None (hit) → 2/3.
    acc_err, acc_ok, f1 = m.first_error_f1([2, 2, None, 0, None], [2, 1, None, None, None])
    assert (acc_err, acc_ok) == (0.5, pytest.approx(2 / 3))
    assert f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))


def test_first_error_f1_needs_both_groups() -> None:
    assert m.first_error_f1([1], [1]) == (1.0, None, None)
    assert m.first_error_f1([None], [None]) == (None, 1.0, None)
    assert m.first_error_f1([0, 1], [1, None]) == (0.0, 0.0, 0.0)


def test_first_error_threshold_fit() -> None:
    rewards = [[1.0, 0.0], [1.0, 1.0], [0.3, 1.0]]
    truth = [1, None, 0]
    threshold = m.fit_first_error_threshold(rewards, truth)
    assert threshold is not None
    predicted = [m.predicted_first_error(r, threshold) for r in rewards]
    assert predicted == [1, None, 0]


def test_consistency_helpers() -> None:
    assert m.modal_agreement([2, 2, 3, 2]) == 0.75
    assert m.modal_score([1, 3, 3, 1]) == 1  # a tie goes to the lower score
    assert m.std([2, 2, 2]) == 0.0
    assert m.std([0, 2]) == 1.0
    assert m.modal_agreement([]) is None and m.std([]) is None


def test_bootstrap_interval_brackets_the_value_and_is_reproducible() -> None:
    units = list(range(50))

    def stat(xs: list[int]) -> float:
        return float(np.mean(xs))

    first = m.bootstrap(units, stat, n_resamples=200, seed=3)
    second = m.bootstrap(units, stat, n_resamples=200, seed=3)
    assert first == second
    assert first.lo is not None and first.hi is not None
    assert first.lo < first.value < first.hi  # type: ignore[operator]
    assert first.n == 50


def test_bootstrap_of_an_undefined_statistic_is_none_not_zero() -> None:
    estimate = m.bootstrap([1, 1, 1], lambda _: None, n_resamples=50)
    assert estimate.value is None and estimate.lo is None
    assert m.bootstrap([], lambda _: 1.0).value is None

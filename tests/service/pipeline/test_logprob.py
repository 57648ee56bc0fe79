from __future__ import annotations

import math

import pytest

from scribe_service.pipeline.judge import (
    Completion,
    JudgeInvalidOutput,
    JudgeLowScoreMass,
    logprob_verdict,
)
from scribe_service.pipeline.logprob import score_distribution


def _lp(p: float) -> float:
    return math.log(p)


def test_expected_score_is_the_renormalised_mean() -> None:
    top = [("2", _lp(0.4)), ("3", _lp(0.2)), ("The", _lp(0.3)), ("1", _lp(0.1))]
    dist = score_distribution(top)
    assert dist.mass == pytest.approx(0.7)
    assert dist.probabilities == pytest.approx((0.0, 1 / 7, 4 / 7, 2 / 7))
    assert dist.expected == pytest.approx((1 * 0.1 + 2 * 0.4 + 3 * 0.2) / 0.7, abs=1e-4)
    assert dist.argmax == 2


def test_spellings_of_one_digit_add_up_and_duplicates_count_once() -> None:
    dist = score_distribution([("1", _lp(0.3)), (" 1", _lp(0.2)), ("1", _lp(0.3)), ("0", _lp(0.5))])
    assert dist.mass == pytest.approx(1.0)
    assert dist.probabilities[1] == pytest.approx(0.5)
    assert dist.argmax == 0  # a tie goes to the lower score


def test_other_numbers_are_not_scores() -> None:
    dist = score_distribution([("12", _lp(0.5)), ("4", _lp(0.3)), ("-1", _lp(0.1))])
    assert dist.mass == 0.0 and dist.probabilities == (0.0, 0.0, 0.0, 0.0)


def test_expected_score_drops_numerical_noise() -> None:
    a = score_distribution([("2", -0.5), ("3", -1.0)]).expected
    b = score_distribution([("2", -0.5 + 1e-9), ("3", -1.0)]).expected
    assert a == b


def test_logprob_verdict_reports_argmax_expectation_and_mass() -> None:
    top = (("3", _lp(0.6)), ("2", _lp(0.3)), ("x", _lp(0.1)))
    verdict = logprob_verdict(Completion("3", top_logprobs=top), min_score_mass=0.5)
    assert verdict.score == 3
    assert verdict.expected_score == pytest.approx(2 + 2 / 3, abs=1e-4)
    assert verdict.score_mass == pytest.approx(0.9)
    assert verdict.failure_modes == () and verdict.rationale is None


def test_too_little_mass_fails_instead_of_guessing() -> None:
    top = (("The", _lp(0.8)), ("2", _lp(0.1)))
    with pytest.raises(JudgeLowScoreMass, match="0.100"):
        logprob_verdict(Completion("The", top_logprobs=top), min_score_mass=0.5)
    assert not JudgeLowScoreMass.transient


def test_a_reply_without_logprobs_is_invalid() -> None:
    with pytest.raises(JudgeInvalidOutput):
        logprob_verdict(Completion("2"), min_score_mass=0.0)

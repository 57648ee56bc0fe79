"""Logprob scoring: a step's score read from the judge's distribution over the tokens 0-3.

Instead of sampling a verdict, the judge is asked for the score digit alone, one output token,
with its most likely alternatives (`top_logprobs`). p(s) is the probability of the token
spelling s (variants that are the same digit once whitespace is stripped, "2" and " 2", add
up), renormalised over the four scores; the step's expected score is Σ s·p(s). No token is
sampled, so the same prompt gives the same number, and it is continuous: a judge torn between
1 and 2 says so. `mass`, the probability that fell on the four score tokens before
renormalising, tells whether the judge answered the question at all; the caller refuses a
step whose mass is too low rather than guessing from noise. Pure functions only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

SCORES = (0, 1, 2, 3)
TOP_LOGPROBS = 20
"""Alternatives asked for: the most OpenAI's API and vLLM's default `max_logprobs` allow."""

EXPECTED_SCORE_DIGITS = 4
"""The judge computes in bf16/fp32: digits beyond these are numerical noise (batching and
prefix caching change them), not signal, and would make equal prompts give unequal rewards."""


@dataclass(frozen=True)
class ScoreDistribution:
    probabilities: tuple[float, ...]
    """p(0)..p(3), renormalised to sum 1 (all 0 when no score token was among the top)."""
    mass: float
    """Probability the judge put on the four score tokens, before renormalising."""

    @property
    def expected(self) -> float:
        expected = sum(s * p for s, p in zip(SCORES, self.probabilities, strict=True))
        return round(expected, EXPECTED_SCORE_DIGITS)

    @property
    def argmax(self) -> int:
        """The most likely score; a tie goes to the lower score."""
        return max(SCORES, key=lambda s: (self.probabilities[s], -s))


def score_distribution(top_logprobs: Iterable[tuple[str, float]]) -> ScoreDistribution:
    """The distribution over scores from (token, logprob) alternatives of one output token."""
    best: dict[str, float] = {}
    for token, logprob in top_logprobs:
        # A server may list the chosen token twice (as chosen and among the top): count it once.
        if math.isfinite(logprob) and logprob > best.get(token, -math.inf):
            best[token] = logprob
    raw = [0.0] * len(SCORES)
    for token, logprob in best.items():
        digit = token.strip()
        if len(digit) == 1 and digit in "0123":
            raw[int(digit)] += math.exp(logprob)
    mass = min(1.0, sum(raw))
    if mass == 0.0:
        return ScoreDistribution(probabilities=(0.0,) * len(SCORES), mass=0.0)
    return ScoreDistribution(probabilities=tuple(p / sum(raw) for p in raw), mass=mass)

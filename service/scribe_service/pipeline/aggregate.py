"""Stage 5: from step scores to the scalars a trainer consumes. Pure functions only.

* step reward = score / 3, in [0, 1];
* process reward = mean (default), min, last or sum of the judged steps' rewards;
* reward = outcome_weight * outcome + process_weight * process when an outcome is given
  (0.7 / 0.3 in the paper), else the process reward.

Anything that cannot be computed is None, never 0: a trajectory whose steps all failed has
no process reward, and then no mixed reward either.
"""

from __future__ import annotations

from collections.abc import Sequence

from scribe_client.protocol import Aggregation, ScoreStatus, StepStatus

MAX_SCORE = 3


def step_reward(score: float | None) -> float | None:
    """A score (or, in logprob mode, an expected score) in [0, 3] as a reward in [0, 1]."""
    return None if score is None else score / MAX_SCORE


def process_reward(rewards: Sequence[float | None], aggregation: Aggregation) -> float | None:
    """Collapse step rewards; failed steps (None) are left out, and none left gives None.

    `last` means the trajectory's last step: if that one failed there is no last reward.
    """
    if aggregation == "last":
        return rewards[-1] if rewards else None
    judged = [r for r in rewards if r is not None]
    if not judged:
        return None
    if aggregation == "mean":
        return sum(judged) / len(judged)
    if aggregation == "min":
        return min(judged)
    return sum(judged)


def trajectory_reward(
    process: float | None,
    outcome: float | None,
    *,
    outcome_weight: float,
    process_weight: float,
) -> float | None:
    if outcome is None:
        return process
    if process is None:
        return None
    return outcome_weight * outcome + process_weight * process


def overall_status(statuses: Sequence[StepStatus]) -> ScoreStatus:
    ok = sum(1 for status in statuses if status == "ok")
    if statuses and ok == len(statuses):
        return "ok"
    return "partial" if ok else "failed"

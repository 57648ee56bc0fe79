"""Stage 5: from step scores to the scalars a trainer consumes. Pure functions only.

* step reward = score / 3, in [0, 1];
* process reward = mean (default), min, last or sum of the judged steps' rewards;
* reward = outcome_weight * outcome + process_weight * process when an outcome is given
  (0.7 / 0.3 in the paper), else the process reward;
* training reward = the same with failed steps counted under the failure policy, never null.

Anything that cannot be computed is None, never 0: a trajectory whose steps all failed has
no process reward, and then no mixed reward either. The arithmetic lives in
`scribe_client.rewards`, so the trainer adapters' stand-ins follow the very same rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scribe_client.protocol import FailurePolicy, ScoreOptions, ScoreStatus, StepStatus
from scribe_client.rewards import (
    FailureRule,
    process_reward,
    training_reward,
    trajectory_reward,
)

__all__ = [
    "MAX_SCORE",
    "FailureRule",
    "Scalars",
    "overall_status",
    "process_reward",
    "scalars",
    "step_reward",
    "trajectory_reward",
]

MAX_SCORE = 3


@dataclass(frozen=True)
class Scalars:
    """A trajectory's scalars, as the response carries them."""

    reward: float | None
    process_reward: float | None
    training_reward: float
    failure_policy: FailurePolicy
    failure_reward: float


def step_reward(score: float | None) -> float | None:
    """A score (or, in logprob mode, an expected score) in [0, 3] as a reward in [0, 1]."""
    return None if score is None else score / MAX_SCORE


def scalars(
    rewards: Sequence[float | None],
    outcome: float | None,
    options: ScoreOptions,
    default: FailureRule,
) -> Scalars:
    """The scalars of a trajectory whose step rewards are `rewards` (None: the step failed)."""
    policy = options.failure_policy or default.policy
    failure_reward = default.reward if options.failure_reward is None else options.failure_reward
    process = process_reward(rewards, options.aggregation)
    weights = {"outcome_weight": options.outcome_weight, "process_weight": options.process_weight}
    return Scalars(
        reward=trajectory_reward(process, outcome, **weights),
        process_reward=process,
        training_reward=training_reward(
            rewards,
            outcome,
            aggregation=options.aggregation,
            policy=policy,
            failure_reward=failure_reward,
            **weights,
        ),
        failure_policy=policy,
        failure_reward=failure_reward,
    )


def overall_status(statuses: Sequence[StepStatus]) -> ScoreStatus:
    ok = sum(1 for status in statuses if status == "ok")
    if statuses and ok == len(statuses):
        return "ok"
    return "partial" if ok else "failed"

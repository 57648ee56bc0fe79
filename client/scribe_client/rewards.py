"""Step rewards → the scalars, and the one number a trainer gets when judging failed.

Pure functions, shared by the service (which puts them in every `ScoreResponse`) and every
trainer adapter (which need a number when there is no response at all).

The response's ``process_reward`` and ``reward`` are honest: computed from the judged steps
only, null when they cannot be computed. Handed to a trainer as they are, they pay a policy
for breaking the judge: a failed step left out of a mean can raise it (judged 1.0 and 0.0,
the 0.0 step breaks the judge: 1.0), and a rollout with nothing judged would fall back to its
bare outcome, more than any judged rollout with that outcome gets (0.7 + 0.3 · process).

``training_reward`` is the trainer-facing number, under a failure policy:

* ``pessimistic`` (the default): a failed step counts as ``failure_reward`` (at most 0.0, the
  worst a judged step can get) in every aggregation, ``sum`` included; a rollout with no
  result at all (the service unreachable, the input refused) gets
  ``outcome_weight · outcome + process_weight · failure_reward``, or ``failure_reward``
  without an outcome. So a failure never leaves the number above what the same rollout
  would get with the failed steps judged 0, nor above any judged rollout with its outcome.
* ``exclude`` (opt-in, exploitable as above): the judged steps only, and when nothing was
  judged the bare outcome, else ``failure_reward``. It is the behaviour before this policy
  existed; use it only where the judge cannot be made to fail by the policy being trained.

One caveat: with ``sum`` and a negative ``failure_reward`` a rollout with no result counts
as a single failed step, however many steps it had.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

from .protocol import Aggregation, FailurePolicy, ScoreOptions, ScoreResponse

__all__ = [
    "DEFAULT_FAILURE_POLICY",
    "DEFAULT_FAILURE_REWARD",
    "ENV_FAILURE_POLICY",
    "ENV_FAILURE_REWARD",
    "FailureRule",
    "WORST_STEP_REWARD",
    "check_failure_policy",
    "check_failure_reward",
    "process_reward",
    "trainer_reward",
    "training_reward",
    "trajectory_reward",
    "unscored_reward",
]

DEFAULT_FAILURE_POLICY: FailurePolicy = "pessimistic"
DEFAULT_FAILURE_REWARD = 0.0
WORST_STEP_REWARD = 0.0
"""The lowest reward a judged step can get (score 0)."""

# One name on both sides: the service's setting and the adapters' fallback read these.
ENV_FAILURE_POLICY = "SCRIBE_FAILURE_POLICY"
ENV_FAILURE_REWARD = "SCRIBE_FAILURE_REWARD"


def check_failure_reward(value: float) -> float:
    """`value` as a failure reward, refused when a failure would beat a judged 0."""
    value = float(value)
    if not math.isfinite(value) or value > WORST_STEP_REWARD:
        raise ValueError(
            f"failure_reward must be a finite number <= {WORST_STEP_REWARD} (the worst judged "
            f"step reward), so that breaking the judge never pays; got {value}"
        )
    return value


def check_failure_policy(value: str) -> FailurePolicy:
    """`value` as a failure policy (`pessimistic` or `exclude`)."""
    for policy in get_args(FailurePolicy):
        if value == policy:
            return policy  # type: ignore[no-any-return]
    raise ValueError(f"failure_policy must be one of {get_args(FailurePolicy)}, got {value!r}")


@dataclass(frozen=True)
class FailureRule:
    """A failure policy and failure reward, checked."""

    policy: FailurePolicy = DEFAULT_FAILURE_POLICY
    reward: float = DEFAULT_FAILURE_REWARD

    def __post_init__(self) -> None:
        check_failure_policy(self.policy)
        check_failure_reward(self.reward)


def _collapse(rewards: Sequence[float], aggregation: Aggregation) -> float:
    if aggregation == "mean":
        return sum(rewards) / len(rewards)
    if aggregation == "min":
        return min(rewards)
    if aggregation == "last":
        return rewards[-1]
    return sum(rewards)


def process_reward(rewards: Sequence[float | None], aggregation: Aggregation) -> float | None:
    """The honest process reward: failed steps (None) are left out, and none left gives None.

    `last` means the trajectory's last step: if that one failed there is no last reward.
    """
    if aggregation == "last":
        return rewards[-1] if rewards else None
    judged = [r for r in rewards if r is not None]
    return _collapse(judged, aggregation) if judged else None


def trajectory_reward(
    process: float | None,
    outcome: float | None,
    *,
    outcome_weight: float,
    process_weight: float,
) -> float | None:
    """outcome_weight · outcome + process_weight · process with an outcome, else process."""
    if outcome is None:
        return process
    if process is None:
        return None
    return outcome_weight * outcome + process_weight * process


def unscored_reward(
    outcome: float | None,
    *,
    outcome_weight: float,
    process_weight: float,
    policy: FailurePolicy,
    failure_reward: float,
) -> float:
    """The stand-in for a rollout with no judged step: nothing judged, or no result at all."""
    failure_reward = check_failure_reward(failure_reward)
    if outcome is None:
        return failure_reward
    if policy == "exclude":
        return outcome
    return outcome_weight * outcome + process_weight * failure_reward


def training_reward(
    rewards: Sequence[float | None],
    outcome: float | None,
    *,
    aggregation: Aggregation,
    outcome_weight: float,
    process_weight: float,
    policy: FailurePolicy,
    failure_reward: float,
) -> float:
    """The trainer-facing reward of a rollout whose step rewards are `rewards` (None: failed).

    Never None: a trainer that cannot take a missing reward can use it as it is.
    """
    failure_reward = check_failure_reward(failure_reward)
    if policy == "exclude":
        process = process_reward(rewards, aggregation)
    elif rewards:
        process = _collapse([failure_reward if r is None else r for r in rewards], aggregation)
    else:
        process = None
    mixed = trajectory_reward(
        process, outcome, outcome_weight=outcome_weight, process_weight=process_weight
    )
    if mixed is not None:
        return mixed
    return unscored_reward(
        outcome,
        outcome_weight=outcome_weight,
        process_weight=process_weight,
        policy=policy,
        failure_reward=failure_reward,
    )


def trainer_reward(
    result: ScoreResponse | None,
    outcome: float | None,
    options: ScoreOptions,
    *,
    policy: FailurePolicy,
    failure_reward: float,
) -> float:
    """What an adapter hands its trainer for one rollout: the response's `training_reward`,
    or the stand-in when the service gave no result (`result` None).

    `options` are those the request was sent with (aggregation and weights); from a server
    that predates `training_reward`, the same rule is applied to the response's steps.
    """
    if result is None:
        return unscored_reward(
            outcome,
            outcome_weight=options.outcome_weight,
            process_weight=options.process_weight,
            policy=policy,
            failure_reward=failure_reward,
        )
    if result.training_reward is not None:
        return result.training_reward
    return training_reward(
        [step.reward for step in result.steps],
        result.outcome_reward,
        aggregation=options.aggregation,
        outcome_weight=options.outcome_weight,
        process_weight=options.process_weight,
        policy=policy,
        failure_reward=failure_reward,
    )

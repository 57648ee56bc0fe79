"""The trainer-facing reward: breaking the judge never pays, whatever the case."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scribe_client.protocol import Aggregation, FailurePolicy, ScoreOptions, ScoreResponse
from scribe_client.rewards import (
    FailureRule,
    check_failure_reward,
    process_reward,
    trainer_reward,
    training_reward,
    trajectory_reward,
    unscored_reward,
)

AGGREGATIONS: tuple[Aggregation, ...] = get_args(Aggregation)

unit = st.floats(0.0, 1.0)
# A case: judged step rewards, which of them failed, and how the scalars are made.
cases = st.integers(1, 8).flatmap(
    lambda n: st.fixed_dictionaries(
        {
            "rewards": st.lists(unit, min_size=n, max_size=n),
            "failed": st.lists(st.booleans(), min_size=n, max_size=n),
            "aggregation": st.sampled_from(AGGREGATIONS),
            "outcome": st.none() | unit,
            "outcome_weight": st.floats(0.0, 2.0),
            "process_weight": st.floats(0.0, 2.0),
            "failure_reward": st.floats(-2.0, 0.0),
        }
    )
)


def _training(case: dict[str, Any], rewards: list[float | None], policy: FailurePolicy) -> float:
    return training_reward(
        rewards,
        case["outcome"],
        aggregation=case["aggregation"],
        outcome_weight=case["outcome_weight"],
        process_weight=case["process_weight"],
        policy=policy,
        failure_reward=case["failure_reward"],
    )


def _unscored(case: dict[str, Any], policy: FailurePolicy = "pessimistic") -> float:
    return unscored_reward(
        case["outcome"],
        outcome_weight=case["outcome_weight"],
        process_weight=case["process_weight"],
        policy=policy,
        failure_reward=case["failure_reward"],
    )


TOLERANCE = 1e-9  # float sums in another order


@settings(max_examples=2000)
@given(case=cases, instead=unit)
def test_a_failure_never_beats_the_same_steps_judged(case: dict[str, Any], instead: float) -> None:
    with_failures = [None if f else r for r, f in zip(case["rewards"], case["failed"], strict=True)]
    judged_zero = [0.0 if r is None else r for r in with_failures]
    judged_any = [instead if r is None else r for r in with_failures]

    got = _training(case, with_failures, "pessimistic")

    assert got <= _training(case, judged_zero, "pessimistic") + TOLERANCE
    assert got <= _training(case, judged_any, "pessimistic") + TOLERANCE
    # With nothing failed, the trainer gets the honest reward.
    honest = trajectory_reward(
        process_reward(judged_any, case["aggregation"]),
        case["outcome"],
        outcome_weight=case["outcome_weight"],
        process_weight=case["process_weight"],
    )
    assert _training(case, judged_any, "pessimistic") == honest


@settings(max_examples=1000)
@given(case=cases)
def test_no_result_never_beats_a_judged_rollout_with_the_same_outcome(case: dict[str, Any]) -> None:
    judged = _training(case, list(case["rewards"]), "pessimistic")
    nothing_judged = _training(case, [None] * len(case["rewards"]), "pessimistic")

    assert _unscored(case) <= judged + TOLERANCE
    assert nothing_judged <= judged + TOLERANCE
    assert nothing_judged <= _unscored(case) + TOLERANCE


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_the_documented_stand_ins(aggregation: Aggregation) -> None:
    rule: dict[str, Any] = {"outcome_weight": 0.7, "process_weight": 0.3}
    rule |= {"policy": "pessimistic", "failure_reward": -0.5}
    assert unscored_reward(1.0, **rule) == pytest.approx(0.7 - 0.15)
    assert unscored_reward(None, **rule) == -0.5
    # One judged step of 1.0, one failed: the failed one counts as -0.5.
    got = training_reward([1.0, None], None, aggregation=aggregation, **rule)
    assert got == {"mean": 0.25, "min": -0.5, "last": -0.5, "sum": 0.5}[aggregation]


def test_exclude_is_the_old_exploitable_rule() -> None:
    weights = {"outcome_weight": 0.7, "process_weight": 0.3, "failure_reward": 0.0}
    # A correct rollout that breaks the judge on every step: its bare outcome, 1.0, more
    # than the 0.7 + 0.3 * 0 of the same rollout judged all wrong.
    broken = training_reward([None, None], 1.0, aggregation="mean", policy="exclude", **weights)
    judged = training_reward([0.0, 0.0], 1.0, aggregation="mean", policy="exclude", **weights)
    assert (broken, judged) == (1.0, pytest.approx(0.7))
    # Leaving a failed 0-step out of the mean raises it.
    assert (
        training_reward([1.0, None], None, aggregation="mean", policy="exclude", **weights) == 1.0
    )
    assert (
        training_reward([1.0, None], None, aggregation="mean", policy="pessimistic", **weights)
        == 0.5
    )


@pytest.mark.parametrize("value", [0.01, float("nan"), float("inf"), float("-inf")])
def test_a_failure_reward_that_could_pay_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match="failure_reward"):
        check_failure_reward(value)
    with pytest.raises(ValueError, match="failure_reward"):
        FailureRule(reward=value)
    with pytest.raises(ValueError):
        ScoreOptions(failure_reward=value)


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="failure_policy"):
        FailureRule(policy="optimistic")  # type: ignore[arg-type]


def _response(**fields: Any) -> ScoreResponse:
    step = {
        "index": 0, "subgoal": "s", "subgoal_source": "derived", "prototype_id": "p",
        "similarity": 0.5, "fallback": False,
    }  # fmt: skip
    steps = [
        {**step, "index": 0, "score": 3, "reward": 1.0, "status": "ok"},
        {**step, "index": 1, "status": "failed", "error": {"type": "internal", "message": "x"}},
    ]
    body = {
        "request_id": "r", "status": "partial", "reward": 1.0, "process_reward": 1.0,
        "outcome_reward": None, "steps": steps, "library_version": "v", "judge_model": "m",
        **fields,
    }  # fmt: skip
    return ScoreResponse.model_validate(body)


def test_an_adapter_uses_the_services_number_or_the_same_rule() -> None:
    options = ScoreOptions()
    rule: dict[str, Any] = {"policy": "pessimistic", "failure_reward": 0.0}
    assert trainer_reward(_response(training_reward=0.25), None, options, **rule) == 0.25
    # A server that predates training_reward: the rule applied to its steps, not `reward`.
    assert trainer_reward(_response(), None, options, **rule) == 0.5
    assert trainer_reward(None, 1.0, options, **rule) == pytest.approx(0.7)

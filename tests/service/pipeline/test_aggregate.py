from __future__ import annotations

import pytest

from scribe_client.protocol import Aggregation, ScoreOptions
from scribe_service.pipeline.aggregate import (
    FailureRule,
    overall_status,
    process_reward,
    scalars,
    step_reward,
    trajectory_reward,
)


@pytest.mark.parametrize(("score", "reward"), [(0, 0.0), (1, 1 / 3), (3, 1.0), (None, None)])
def test_step_reward_is_score_over_three(score: int | None, reward: float | None) -> None:
    assert step_reward(score) == reward


@pytest.mark.parametrize(
    ("rewards", "aggregation", "expected"),
    [
        pytest.param([1.0, 0.0, 0.5], "mean", 0.5, id="mean"),
        pytest.param([1.0, 0.0, 0.5], "min", 0.0, id="min"),
        pytest.param([1.0, 0.0, 0.5], "last", 0.5, id="last"),
        pytest.param([1.0, 0.0, 0.5], "sum", 1.5, id="sum"),
        pytest.param([1.0, None, 0.5], "mean", 0.75, id="mean-skips-failed"),
        pytest.param([0.0, None], "min", 0.0, id="min-skips-failed"),
        pytest.param([1.0, None], "last", None, id="last-failed-is-none"),
        pytest.param([None, None], "mean", None, id="all-failed-is-none-not-zero"),
        pytest.param([], "sum", None, id="no-steps"),
    ],
)
def test_process_reward(
    rewards: list[float | None], aggregation: Aggregation, expected: float | None
) -> None:
    assert process_reward(rewards, aggregation) == expected


@pytest.mark.parametrize(
    ("process", "outcome", "expected"),
    [
        pytest.param(0.5, 1.0, 0.7 + 0.15, id="paper-mix"),
        pytest.param(0.5, None, 0.5, id="no-outcome-is-process"),
        pytest.param(None, 1.0, None, id="no-process-no-mix"),
        pytest.param(None, None, None, id="nothing"),
        pytest.param(0.0, 0.0, 0.0, id="real-zero-stays-zero"),
    ],
)
def test_trajectory_reward(
    process: float | None, outcome: float | None, expected: float | None
) -> None:
    got = trajectory_reward(process, outcome, outcome_weight=0.7, process_weight=0.3)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_custom_weights() -> None:
    assert trajectory_reward(1.0, 0.0, outcome_weight=0.5, process_weight=0.5) == 0.5


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [(["ok", "ok"], "ok"), (["ok", "failed"], "partial"), (["failed"], "failed"), ([], "failed")],
)
def test_overall_status(statuses: list[str], expected: str) -> None:
    assert overall_status(statuses) == expected  # type: ignore[arg-type]


def test_scalars_keep_reward_honest_and_count_failures_for_the_trainer() -> None:
    got = scalars([1.0, None], 1.0, ScoreOptions(), FailureRule())
    # The response's reward leaves the failed step out; the trainer's number counts it as 0.
    assert got.process_reward == 1.0 and got.reward == pytest.approx(1.0)
    assert got.training_reward == pytest.approx(0.7 + 0.3 * 0.5)
    assert (got.failure_policy, got.failure_reward) == ("pessimistic", 0.0)


def test_scalars_when_nothing_was_judged() -> None:
    got = scalars([None, None], 1.0, ScoreOptions(), FailureRule(reward=-1.0))
    assert got.reward is None and got.process_reward is None
    assert got.training_reward == pytest.approx(0.7 - 0.3)


@pytest.mark.parametrize(
    ("options", "default", "expected"),
    [
        pytest.param({}, FailureRule("exclude", -0.5), ("exclude", -0.5, 1.0), id="server"),
        pytest.param(
            {"failure_policy": "pessimistic", "failure_reward": -1.0},
            FailureRule("exclude", -0.5),
            ("pessimistic", -1.0, 0.0),
            id="request-overrides",
        ),
        pytest.param(
            {"failure_reward": 0.0}, FailureRule(reward=-0.5), ("pessimistic", 0.0, 0.5), id="zero"
        ),
    ],
)
def test_the_request_overrides_the_server_rule(
    options: dict[str, object], default: FailureRule, expected: tuple[str, float, float]
) -> None:
    got = scalars([1.0, None], None, ScoreOptions.model_validate(options), default)
    assert (got.failure_policy, got.failure_reward, got.training_reward) == expected

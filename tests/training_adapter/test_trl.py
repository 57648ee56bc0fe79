"""The TRL reward functions, called the way GRPOTrainer calls them, against the service over
HTTP (fake embedder and judge; tests/trainers runs the real trainer)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerState

from scribe_adapters.trl import AsyncScribeReward, ScribeReward
from scribe_service.app import create_app
from scribe_service.settings import Settings
from support import PROTOTYPES, FakeEmbedder, FakeJudge, uvicorn_in_thread

PROMPTS = ["What is 2 + 2?", "What is 3 * 5?"]
COMPLETIONS = ["Step 1: add.\n2 + 2 = 4\nStep 2: answer.\n4", "3 * 5 = 15."]


class Metrics:
    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def __call__(self, name: str, value: float) -> None:
        self.logged[name] = value


def call(reward: ScribeReward | AsyncScribeReward, *args: Any, **kwargs: Any) -> list[float | None]:
    # GRPOTrainer passes everything as keywords, plus its own extras.
    kwargs = {"completion_ids": [[1]] * len(args[1]), "trainer_state": object(), **kwargs}
    if isinstance(reward, AsyncScribeReward):
        return asyncio.run(reward(prompts=args[0], completions=args[1], **kwargs))
    return reward(prompts=args[0], completions=args[1], **kwargs)


@pytest.fixture(params=["sync", "async"])
def make(request: pytest.FixtureRequest) -> Any:
    return ScribeReward if request.param == "sync" else AsyncScribeReward


def test_trl_sees_a_named_async_reward_function() -> None:
    # TRL's own checks: a coroutine `__call__` runs concurrently; the name goes into the logs.
    reward = AsyncScribeReward("http://unused")
    assert inspect.iscoroutinefunction(reward.__call__)
    assert reward.__name__ == "scribe"
    assert ScribeReward("http://unused", name="judge").__name__ == "judge"


def test_scores_a_batch_in_one_call_with_the_outcome_column(
    make: Any, service_url: str, judge: FakeJudge
) -> None:
    before = len(judge.prompts)
    metrics = Metrics()
    rewards = call(make(service_url), PROMPTS, COMPLETIONS, outcome=[0.0, None], log_metric=metrics)

    # Judge says 3 everywhere: process 1.0; 0.7 * 0 + 0.3 * 1 with an outcome, 1.0 without.
    assert rewards == pytest.approx([0.3, 1.0])
    assert len(judge.prompts) - before == 3  # two steps, then one
    assert metrics.logged == {
        "scribe/failed": 0.0, "scribe/failed_steps": 0.0, "scribe/process_reward": 1.0
    }  # fmt: skip


def test_an_outcome_function_with_trls_signature(make: Any, service_url: str) -> None:
    def correct(prompts: Any, completions: Any, answer: list[str], **kwargs: Any) -> list[float]:
        return [float(a in c) for c, a in zip(completions, answer, strict=True)]

    reward = make(service_url, outcome_fn=correct)
    assert call(reward, PROMPTS, COMPLETIONS, answer=["4", "16"]) == pytest.approx([1.0, 0.3])


def test_conversational_tool_run(make: Any, service_url: str) -> None:
    prompts = [[{"role": "user", "content": "Who directed Alien?"}]]
    completions = [
        [
            {"role": "assistant", "content": "Search.", "tool_calls": [
                {"type": "function", "function": {"name": "search", "arguments": {"q": "Alien"}}}
            ]},
            {"role": "tool", "name": "search", "content": "Ridley Scott"},
            {"role": "assistant", "content": "<answer>Ridley Scott</answer>"},
        ]
    ]  # fmt: skip
    assert call(make(service_url), prompts, completions) == [pytest.approx(1.0)]


def test_a_failed_judge_never_beats_a_judged_rollout(make: Any, down_service_url: str) -> None:
    metrics = Metrics()
    rewards = call(
        make(down_service_url), PROMPTS, COMPLETIONS, outcome=[1.0, 0.0], log_metric=metrics
    )
    # 0.7 * outcome + 0.3 * failure_reward: what the rollout would get with every step judged
    # 0, not its bare outcome (1.0) and not None (which TRL turns into advantage 0).
    assert rewards == pytest.approx([0.7, 0.0])
    assert metrics.logged["scribe/failed"] == 1.0


def test_a_partly_judged_completion_counts_its_failed_step(
    make: Any, partial_service_url: str
) -> None:
    metrics = Metrics()
    rewards = call(make(partial_service_url), PROMPTS[:1], COMPLETIONS[:1], log_metric=metrics)
    assert rewards == [pytest.approx(0.5)]  # (1.0 + 0) / 2; leaving the failed step out: 1.0
    assert metrics.logged["scribe/failed_steps"] == 0.5
    assert metrics.logged["scribe/failed"] == 0.0


def test_opt_in_none_for_what_was_not_judged(make: Any, down_service_url: str) -> None:
    rewards = call(
        make(down_service_url, unscored_as_none=True), PROMPTS, COMPLETIONS, outcome=[1.0, 0.0]
    )
    assert rewards == [None, None]


def test_a_negative_failure_reward_from_the_environment(
    make: Any, down_service_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCRIBE_FAILURE_REWARD", "-1")
    rewards = call(make(down_service_url), PROMPTS, COMPLETIONS, outcome=[1.0, None])
    assert rewards == pytest.approx([0.7 - 0.3, -1.0])
    with pytest.raises(ValueError, match="failure_reward"):
        make(down_service_url, failure_reward=0.5)


def test_an_unscorable_completion_gets_the_stand_in_and_the_rest_scored(
    make: Any, service_url: str
) -> None:
    assert call(make(service_url), PROMPTS, ["", "4"]) == [0.0, pytest.approx(1.0)]
    assert call(make(service_url, unscored_as_none=True), PROMPTS, ["", "4"]) == [
        None,
        pytest.approx(1.0),
    ]


def test_an_unreachable_service_gets_the_stand_in_or_raises(make: Any, closed_url: str) -> None:
    metrics = Metrics()
    rewards = call(
        make(closed_url, max_retries=0), PROMPTS, COMPLETIONS, outcome=[1.0, None],
        log_metric=metrics,
    )  # fmt: skip
    assert rewards == pytest.approx([0.7, 0.0])
    assert metrics.logged == {"scribe/failed": 1.0}
    with pytest.raises(Exception, match="onnect"):
        call(make(closed_url, max_retries=0, raise_errors=True), PROMPTS, COMPLETIONS)


def test_chunks_already_scored_are_kept_when_a_later_one_fails(
    make: Any, short_steps_url: str
) -> None:
    # One completion per chunk; the second has a step over the service's limit, so its
    # chunk is refused (422), and the chunks either side of it are scored all the same.
    long = "Step 1: " + "carry the one. " * 30
    metrics = Metrics()
    rewards = call(
        make(short_steps_url, max_batch=1), PROMPTS * 2 + ["x"], [*COMPLETIONS, long, "4", "4"],
        outcome=[None, None, 1.0, None, None], log_metric=metrics,
    )  # fmt: skip
    assert rewards == pytest.approx([1.0, 1.0, 0.7, 1.0, 1.0])
    assert metrics.logged["scribe/failed"] == pytest.approx(1 / 5)
    none = make(short_steps_url, max_batch=1, unscored_as_none=True)
    assert call(none, PROMPTS, [long, "4"]) == [None, pytest.approx(1.0)]


def test_a_rollout_over_a_limit_costs_only_itself_in_a_shared_chunk(
    make: Any, short_steps_url: str, judge: FakeJudge
) -> None:
    # The batch call is refused (422) because of one rollout; the rest of its chunk is then
    # scored one by one, and only the refused rollout gets the stand-in.
    long = "Step 1: " + "carry the one. " * 30
    metrics = Metrics()
    before = len(judge.prompts)
    rewards = call(
        make(short_steps_url), PROMPTS + ["x"], [*COMPLETIONS, long],
        outcome=[None, 1.0, 1.0], log_metric=metrics,
    )  # fmt: skip
    assert rewards == pytest.approx([1.0, 1.0, 0.7])
    assert len(judge.prompts) - before == 3  # the two scorable rollouts' steps, judged once
    assert metrics.logged["scribe/failed"] == pytest.approx(1 / 3)


def test_large_batches_are_split(make: Any, service_url: str) -> None:
    rewards = call(make(service_url, max_batch=1), PROMPTS * 2, COMPLETIONS * 2)
    assert rewards == pytest.approx([1.0] * 4)


def test_an_outcome_out_of_range_is_a_bug_not_a_reward(make: Any, service_url: str) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        call(make(service_url), PROMPTS, COMPLETIONS, outcome=[2.0, 1.0])


SHOWN = re.compile(r"## Reference answer \(known to be correct\)\n(`{3,})text\n(.*?)\n\1\n", re.S)


def shown(judge: FakeJudge, before: int) -> list[tuple[str, str | None]]:
    """(task, reference shown) for each judge prompt since `before`."""
    seen = []
    for messages in judge.prompts[before:]:
        user = messages[1]["content"]
        match = SHOWN.search(user)
        task = "2 + 2" if "What is 2 + 2?" in user else "3 * 5"
        seen.append((task, None if match is None else match.group(2)))
    return sorted(seen, key=str)


def test_the_known_answer_column_is_the_reference(
    make: Any, service_url: str, judge: FakeJudge
) -> None:
    before = len(judge.prompts)
    # TRL's accuracy reward reads `solution`: a default column; a list is several answers.
    call(make(service_url), PROMPTS, COMPLETIONS, solution=["4", ["15", "fifteen"]])
    assert shown(judge, before) == [
        ("2 + 2", "4"), ("2 + 2", "4"), ("3 * 5", '["15", "fifteen"]')
    ]  # fmt: skip

    before = len(judge.prompts)
    reward = make(service_url, reference_column="gold")
    call(reward, PROMPTS, COMPLETIONS, solution=["4", "15"], gold=["four", None])
    assert shown(judge, before) == [("2 + 2", "four"), ("2 + 2", "four"), ("3 * 5", None)]


def test_the_reference_can_be_switched_off(make: Any, service_url: str, judge: FakeJudge) -> None:
    before = len(judge.prompts)
    reward = make(service_url, reference_column=None)
    call(reward, PROMPTS, COMPLETIONS, solution=["4", "15"], ground_truth=["4", "15"])
    assert shown(judge, before) == [("2 + 2", None), ("2 + 2", None), ("3 * 5", None)]


# --- metadata for the score log (training curves) -------------------------------------------


@contextlib.contextmanager
def logged_service(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A service that writes the score log; the log is complete once the block exits (the
    app's shutdown drains the writer)."""
    log = tmp_path / "scores.jsonl"
    settings = Settings(prototypes_dir=PROTOTYPES, cache_dir=tmp_path / "cache", score_log=log)
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=FakeJudge(score=3))
    with uvicorn_in_thread(app, timeout=20) as url:
        yield url, log


def logged_metadata(log: Path) -> list[Any]:
    return [json.loads(line)["metadata"] for line in log.read_text().splitlines()]


def test_every_request_carries_the_trainers_step_and_the_run(make: Any, tmp_path: Path) -> None:
    with logged_service(tmp_path) as (url, log):
        reward = make(url, metadata={"run": "grpo-7", "global_step": -1})
        # What GRPOTrainer passes: its `TrainerState`, global_step = optimizer steps so far.
        first = call(reward, PROMPTS, COMPLETIONS, trainer_state=TrainerState(global_step=7))
        second = call(
            reward, PROMPTS[:1], COMPLETIONS[:1], trainer_state=TrainerState(global_step=8)
        )
    assert first == pytest.approx([1.0, 1.0]) and second == [pytest.approx(1.0)]
    # One line per judged step: two, then one for the first batch; two for the second.
    assert logged_metadata(log) == [
        *[{"run": "grpo-7", "global_step": 7}] * 3,
        *[{"run": "grpo-7", "global_step": 8}] * 2,
    ]


def test_without_a_trainer_state_only_the_given_metadata_goes(make: Any, tmp_path: Path) -> None:
    with logged_service(tmp_path) as (url, log):
        rewards = call(
            make(url, metadata={"run": "grpo-7"}), PROMPTS, COMPLETIONS, trainer_state=None
        )
        # An older TRL, or a state without a step: nothing breaks, no step is made up.
        rewards += call(make(url), PROMPTS[:1], COMPLETIONS[:1], trainer_state=object())
    assert rewards == pytest.approx([1.0, 1.0, 1.0])
    assert logged_metadata(log) == [*[{"run": "grpo-7"}] * 3, None, None]


def test_metadata_the_service_would_refuse_fails_at_setup(make: Any) -> None:
    with pytest.raises(ValueError, match="limit is 4096"):
        make("http://unused", metadata={"note": "x" * 5000})
    with pytest.raises(ValueError, match="not JSON"):
        make("http://unused", metadata={"when": object()})

"""The verl compute_score twins, called with the keywords verl's reward managers use, against
the service over HTTP (fake embedder and judge; tests/trainers runs verl's own code)."""

from __future__ import annotations

import asyncio
import inspect
import re
from typing import Any

import numpy as np
import pytest

from scribe_adapters import verl
from support import FakeJudge

RESPONSE = "Step 1: Add 2 and 2.\nStep 2: The total is 4.\n#### 4"
KEYS = {
    "score", "scribe_status", "scribe_reward", "scribe_process_reward", "scribe_outcome",
    "scribe_steps", "scribe_failed_steps",
}  # fmt: skip


def gsm8k_like(data_source: str, solution_str: str, ground_truth: str, extra_info: Any) -> float:
    return float(solution_str.rsplit("####", 1)[-1].strip() == ground_truth)


@pytest.fixture(params=["sync", "async"])
def compute(request: pytest.FixtureRequest) -> Any:
    def call(**kwargs: Any) -> dict[str, Any]:
        # verl's naive manager: keywords, extra_info from the dataset, reward_kwargs merged in.
        if request.param == "async":
            result: dict[str, Any] = asyncio.run(verl.compute_score_async(**kwargs))
        else:
            result = verl.compute_score(**kwargs)
        return result

    return call


def args(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "data_source": "openai/gsm8k", "solution_str": RESPONSE, "ground_truth": "4",
        "extra_info": {"index": 0, "question": "What is 2 + 2?"}, "scribe_url": url, **extra,
    }  # fmt: skip


def test_verl_detects_the_async_twin() -> None:
    assert inspect.iscoroutinefunction(verl.compute_score_async)
    assert not inspect.iscoroutinefunction(verl.compute_score)


def test_process_reward_alone(compute: Any, service_url: str) -> None:
    result = compute(**args(service_url))
    assert set(result) == KEYS
    assert result["score"] == pytest.approx(1.0) and result["scribe_status"] == "ok"
    assert (result["scribe_steps"], result["scribe_failed_steps"]) == (2, 0)
    assert result["scribe_outcome"] is None


def test_outcome_from_a_function_by_dotted_path(compute: Any, service_url: str) -> None:
    path = f"{__name__}.gsm8k_like"
    right = compute(**args(service_url, outcome_fn=path))
    wrong = compute(**args(service_url, outcome_fn=gsm8k_like, ground_truth="5"))
    assert right["score"] == pytest.approx(1.0) and right["scribe_outcome"] == 1.0
    assert wrong["score"] == pytest.approx(0.3) and wrong["scribe_outcome"] == 0.0


def test_outcome_from_extra_info_and_options(compute: Any, service_url: str) -> None:
    options = {"outcome_weight": 0.5, "process_weight": 0.5}
    result = compute(**args(service_url, options=options, extra_info={"outcome": 0.0}))
    assert result["score"] == pytest.approx(0.5)


def test_a_failed_judge_never_beats_a_judged_response(compute: Any, down_service_url: str) -> None:
    result = compute(**args(down_service_url, outcome_fn=gsm8k_like))
    assert set(result) == KEYS
    # A right answer that breaks the judge: 0.7 * 1 + 0.3 * 0, what it would get with every
    # step judged 0; not its bare outcome (1.0), more than any judged right answer.
    assert result["score"] == pytest.approx(0.7) and result["scribe_reward"] is None
    assert result["scribe_status"] in ("failed", "unavailable")


def test_a_partly_judged_response_counts_its_failed_step(
    compute: Any, partial_service_url: str
) -> None:
    result = compute(**args(partial_service_url))
    assert result["scribe_status"] == "partial" and result["scribe_failed_steps"] == 1
    assert result["scribe_reward"] == 1.0  # honest: the judged step alone
    assert result["score"] == pytest.approx(0.5)  # the trainer's: the failed step counts as 0


def test_the_old_rule_is_an_explicit_opt_in(compute: Any, down_service_url: str) -> None:
    result = compute(**args(down_service_url, outcome_fn=gsm8k_like, failure_policy="exclude"))
    assert result["score"] == 1.0


def test_without_an_outcome_the_failure_reward(compute: Any, closed_url: str) -> None:
    result = compute(**args(closed_url, failure_reward=-1.0))
    assert result["score"] == -1.0 and result["scribe_status"] == "unavailable"
    assert set(result) == KEYS
    # The old keyword still works; the environment is the fallback.
    assert compute(**args(closed_url, failure_score=-0.5))["score"] == -0.5


def test_the_failure_reward_from_the_environment(
    compute: Any, closed_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCRIBE_FAILURE_REWARD", "-0.25")
    result = compute(**args(closed_url, extra_info={"outcome": 1.0}))
    assert result["score"] == pytest.approx(0.7 - 0.075)


def test_a_failure_reward_that_pays_is_refused(compute: Any, closed_url: str) -> None:
    with pytest.raises(ValueError, match="failure_reward"):
        compute(**args(closed_url, failure_reward=0.5))


def test_an_empty_response_is_invalid_not_judged(compute: Any, service_url: str) -> None:
    result = compute(**args(service_url, solution_str="  ", failure_reward=-0.25))
    assert result["score"] == -0.25 and result["scribe_status"] == "invalid"


def test_verl_reward_router_keywords_are_accepted(compute: Any, service_url: str) -> None:
    extra = {"reward_router_address": "127.0.0.1:1", "reward_model_tokenizer": None}
    assert compute(**args(service_url, **extra))["scribe_status"] == "ok"


SHOWN = re.compile(r"## Reference answer \(known to be correct\)\n(`{3,})text\n(.*?)\n\1\n", re.S)


def shown(judge: FakeJudge, before: int) -> list[str | None]:
    """The reference each judge prompt since `before` showed (None: none)."""
    matches = (SHOWN.search(m[1]["content"]) for m in judge.prompts[before:])
    return [None if match is None else match.group(2) for match in matches]


@pytest.mark.parametrize(
    ("ground_truth", "reference"),
    [
        pytest.param("4", "4", id="string"),
        pytest.param(4, "4", id="number"),
        # verl reads parquet into numpy: Search-R1's {"target": array([...])}.
        pytest.param(
            {"target": np.array(["4", "four"], dtype=object)}, '["4", "four"]', id="search-r1"
        ),
        pytest.param(np.array(["4"], dtype=object), "4", id="one-item-array"),
    ],
)
def test_the_ground_truth_is_the_reference(
    compute: Any, service_url: str, judge: FakeJudge, ground_truth: Any, reference: str
) -> None:
    before = len(judge.prompts)
    result = compute(**args(service_url, ground_truth=ground_truth))
    assert result["scribe_status"] == "ok"
    assert shown(judge, before) == [reference, reference]  # both steps of the response


def test_the_reference_can_be_switched_off(
    compute: Any, service_url: str, judge: FakeJudge
) -> None:
    before = len(judge.prompts)
    assert compute(**args(service_url, send_reference=False))["scribe_status"] == "ok"
    assert shown(judge, before) == [None, None]

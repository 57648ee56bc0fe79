"""The pure parts of the speed suite (bench/suite.py) and its stand-in judge; the suite itself
takes minutes and is run by `scripts/bench`, never here."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from scribe_client.protocol import ScoreRequest
from scribe_service.pipeline.backends.base import Sampling
from scribe_service.pipeline.backends.openai import OpenAIJudge
from scribe_service.pipeline.segment import segment
from support import fixture_records, load_bench

suite = load_bench("suite")


def _assistant_turns(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in request["messages"] if m["role"] == "assistant"]


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        pytest.param(list(range(1, 101)), 99, 99, id="p99-of-100"),
        pytest.param(list(range(1, 101)), 50, 50, id="p50-of-100"),
        pytest.param([float(v) for v in range(20, 0, -1)], 99, 20.0, id="p99-of-20-is-max"),
        pytest.param([7.5], 50, 7.5, id="single"),
        pytest.param([3, 1, 2], 0, 1, id="p0-is-min"),
    ],
)
def test_percentile_is_a_measured_value_by_nearest_rank(
    values: list[float], q: float, expected: float
) -> None:
    assert suite.percentile(values, q) == expected


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        suite.percentile([], 50)


def test_grpo_group_rollouts_share_their_first_steps_and_then_diverge() -> None:
    record = next(r for r in fixture_records("hotpot") if len(_assistant_turns(r)) == 4)
    # A second recorded rollout of the same task, different after its second step.
    other = copy.deepcopy(record)
    other["id"] += "-b"
    tail = [i for i, m in enumerate(other["messages"]) if m["role"] == "assistant"][2:]
    for i in tail:
        other["messages"][i]["content"] = f"Another path {i}. <answer>Elsewhere</answer>"
    unrelated = next(r for r in fixture_records("hotpot") if r["task"] != record["task"])

    [group] = suite.grpo_groups([record, unrelated, other], groups=1)

    assert len(group) == suite.GROUP_SIZE
    shared = 2  # half of 4 assistant steps
    prefix_end = [i for i, m in enumerate(record["messages"]) if m["role"] == "assistant"][shared]
    for rollout in group:
        assert rollout["messages"][:prefix_end] == record["messages"][:prefix_end]
        assert len(_assistant_turns(rollout)) == 4
        ScoreRequest.model_validate(rollout)  # the service would accept it
    # The recorded rollouts come back as recorded; the rest diverge after the shared steps.
    assert group[0]["messages"] == record["messages"]
    assert group[1]["messages"] == other["messages"]
    bodies = [json.dumps(r["messages"], sort_keys=True) for r in group]
    assert len(set(bodies)) == len(group)
    for rollout in group[2:]:
        assert _assistant_turns(rollout)[:shared] == _assistant_turns(record)[:shared]


def test_grpo_groups_each_hold_one_task_and_refuse_to_come_up_short() -> None:
    records = fixture_records("processbench")
    groups = suite.grpo_groups(records, groups=len(records))
    for group, record in zip(groups, records, strict=True):
        assert {r["messages"][0]["content"] for r in group} == {record["messages"][0]["content"]}
    with pytest.raises(ValueError, match="usable tasks"):
        suite.grpo_groups(records, groups=len(records) + 1)


def test_ten_step_requests_have_ten_steps_as_the_service_segments_them() -> None:
    record = fixture_records("processbench")[0]
    long = copy.deepcopy(record)
    long["messages"] += [
        {"role": "assistant", "content": f"Step {n}: carry on with line {n}."} for n in range(12)
    ]
    [request] = suite.ten_step_requests([record, long], count=1)
    messages = ScoreRequest.model_validate(request).messages
    assert len(segment(messages=messages).steps) == 10
    assert request["messages"][-1]["role"] == "assistant"
    with pytest.raises(ValueError):
        suite.ten_step_requests([record, long], count=2)


def test_the_report_has_every_issue_key_and_says_why_one_is_missing() -> None:
    measured = {"overhead_ms_per_step": 1.5, "routing_100k_recall": 0.999}
    document = suite.report(measured, {"quick": True})
    assert set(suite.KEYS) <= set(document)
    assert document["overhead_ms_per_step"] == 1.5
    nulls = {key for key in suite.KEYS if document[key] is None}
    assert nulls == set(suite.KEYS) - set(measured)
    assert set(document["not_measured"]) == nulls
    assert all("not measured" in reason for reason in document["not_measured"].values())
    assert json.loads(json.dumps(document)) == document
    with pytest.raises(ValueError, match="not issue keys"):
        suite.report({"overhead": 1.0}, {})


@pytest.mark.anyio
async def test_the_stand_in_judge_answers_the_services_logprob_and_verdict_calls() -> None:
    with suite.instant_judge() as url:
        judge = OpenAIJudge(url)
        try:
            messages = [{"role": "user", "content": "Rate this step 0-3."}]
            scored = await judge.score_token(messages, Sampling())
            verdict = await judge.complete(messages, {"type": "object"}, Sampling())
        finally:
            await judge.aclose()
    assert scored.top_logprobs is not None and dict(scored.top_logprobs)["2"] == 0.0
    assert json.loads(verdict.text)["score"] == 2


def test_between_gives_what_one_workload_added_per_stage_observation() -> None:
    before = {"stage_s.embed": 1.0, "stage_n.embed": 10, "judgment_cache.hit": 5}
    after = {
        "stage_s.embed": 1.5,
        "stage_n.embed": 15,
        "stage_s.judge": 0.2,
        "stage_n.judge": 40,
        "stage_s.idle": 0.0,
        "stage_n.idle": 0,
        "judgment_cache.hit": 12,
        "judgment_cache.miss": 3,
    }
    added = suite.between(before, after)
    assert added["stage_mean_ms"] == {"embed": 100.0, "judge": 5.0}  # idle: never observed
    assert added["judgment_cache"] == {"hit": 7, "miss": 3}

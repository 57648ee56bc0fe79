"""bench/vs_direct.py, SCRIBE against the direct judge: both arms, with a real `scribe serve`,
against a stand-in judge (tests/standin_judge.py's answers, served here so that it can count
calls and refuse the prompts of one marked step), and the pure parts. The runs on llama.cpp
and vLLM take many minutes and are run by hand (`python bench/vs_direct.py --server ...`)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from standin_judge import StandInJudge

from support import fixture_records, load_bench, uvicorn_in_thread

MARKER = "REFUSE-THIS-STEP-7f3a"


vs_direct = load_bench("vs_direct")


def _steps(records: list[dict[str, Any]]) -> int:
    return sum(len(vs_direct.assistant_positions(r)) for r in records)


def _marked() -> list[dict[str, Any]]:
    """Two math trajectories; the first's last step carries MARKER (its last, so no other
    step's prompt shows it as history)."""
    first, second = (
        {"messages": [dict(m) for m in r["messages"]]} for r in fixture_records("processbench")[:2]
    )
    last = vs_direct.assistant_positions(first)[-1]
    first["messages"][last]["content"] += f" {MARKER}"
    return [first, second]


@pytest.fixture(scope="module")
def measured() -> Iterator[tuple[dict[str, Any], StandInJudge, dict[str, list[Any]]]]:
    judge = StandInJudge(refuse=MARKER.encode())
    group = vs_direct.grpo_groups(fixture_records("hotpot"), 1)[0]
    rounds = {"grpo": [group], "marked": [_marked()]}
    with uvicorn_in_thread(judge) as url, tempfile.TemporaryDirectory() as tmp:
        results = vs_direct.vs_direct(f"{url}/v1", rounds, 4, Path(tmp))
    yield results, judge, rounds


@pytest.mark.real
def test_both_arms_judge_every_step_and_the_judge_saw_each_call(
    measured: tuple[dict[str, Any], StandInJudge, dict[str, list[Any]]],
) -> None:
    results, judge, rounds = measured
    grpo, marked = results["grpo"], results["marked"]
    steps = _steps(rounds["grpo"][0])
    assert (grpo.scribe.ok, grpo.scribe.failed) == (steps, 0)
    assert (grpo.direct.ok, grpo.direct.failed) == (steps, 0)
    # The rollouts share their first steps: the service's judgment cache answered some.
    assert grpo.cached_steps > 0
    # A result that never happened has no sample in /metrics (all coalesced: no "hit").
    cache = grpo.judgment_cache
    assert cache.get("hit", 0.0) + cache.get("coalesced", 0.0) == grpo.cached_steps
    # Every step judged reached the judge once, except those the service's cache answered.
    marked_steps = _steps(rounds["marked"][0])
    expected = 2 * steps - grpo.cached_steps + 2 * marked_steps - marked.cached_steps
    assert judge.calls == expected
    assert grpo.scribe.wall_s > 0 and grpo.direct.wall_s > 0
    assert grpo.ratio == pytest.approx(grpo.scribe.steps_per_s / grpo.direct.steps_per_s)
    assert grpo.scribe_prefix_cache_hit_rate is None  # the stand-in has no vLLM metrics


@pytest.mark.real
def test_a_step_the_judge_refuses_is_counted_failed_on_both_sides_not_scored(
    measured: tuple[dict[str, Any], StandInJudge, dict[str, list[Any]]],
) -> None:
    results, _, rounds = measured
    marked = results["marked"]
    steps = _steps(rounds["marked"][0])
    assert (marked.scribe.ok, marked.scribe.failed) == (steps - 1, 1)
    assert (marked.direct.ok, marked.direct.failed) == (steps - 1, 1)
    # Throughput counts judged steps only.
    assert marked.direct.steps_per_s == pytest.approx((steps - 1) / marked.direct.wall_s)


VLLM_METRICS = """\
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="smollm2-vllm"} 1200.0
vllm:prefix_cache_queries_created{engine="0",model_name="smollm2-vllm"} 1.76e+09
vllm:prefix_cache_hits_total{engine="0",model_name="smollm2-vllm"} 800.0
vllm:prefix_cache_hits_total{engine="1",model_name="smollm2-vllm"} 100.0
vllm:num_requests_running{engine="0",model_name="smollm2-vllm"} 0.0
"""


def test_prefix_cache_counters_sum_vllms_hits_and_queries_over_engines() -> None:
    counters = vs_direct.prefix_cache_counters(VLLM_METRICS)
    assert (counters.hits, counters.queries) == (900.0, 1200.0)
    later = vs_direct.PrefixCache(hits=1000.0, queries=1400.0)
    assert (later - counters).hit_rate == pytest.approx(0.5)


def test_a_server_without_vllm_metrics_has_no_prefix_cache_rate() -> None:
    assert vs_direct.prefix_cache_counters("# llama.cpp\nrequests_total 3\n") is None
    assert vs_direct.prefix_cache_counters('{"data": [{"id": "stand-in"}]}') is None
    assert vs_direct.PrefixCache(0.0, 0.0).hit_rate is None


def test_cut_steps_keeps_the_last_steps_tool_results() -> None:
    record = next(r for r in fixture_records("hotpot") if _steps([r]) >= 3)
    cut = vs_direct.cut_steps(record, 2)
    positions = vs_direct.assistant_positions(record)
    assert _steps([cut]) == 2
    assert cut["messages"] == record["messages"][: positions[2]]
    assert cut["messages"][-1]["role"] == "tool"


def test_tallies_add_up_and_throughput_counts_judged_steps_apart_from_answered_ones() -> None:
    first = vs_direct.Tally(3, 1, 2.0, {"judge_timeout": 1})
    second = vs_direct.Tally(1, 2, 2.0, {"judge_timeout": 1, "judge_low_score_mass": 1})
    total = first + second
    assert (total.ok, total.failed, total.wall_s) == (4, 3, 4.0)
    assert total.errors == {"judge_timeout": 2, "judge_low_score_mass": 1}
    assert total.steps_per_s == 1.0
    assert total.answered_per_s == 1.75

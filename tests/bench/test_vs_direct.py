"""bench/vs_direct.py, SCRIBE against the direct judge: both arms, with a real `scribe serve`,
against a stand-in judge (tests/standin_judge.py, served here so that it can count calls, keep
every prompt, refuse the prompts of one marked step and hold the warm-up's), and the pure
parts. The runs on llama.cpp and vLLM take many minutes and are run by hand
(`python bench/vs_direct.py --server ...`)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from standin_judge import StandInJudge

from support import fixture_records, load_bench, uvicorn_in_thread

MARKER = "REFUSE-THIS-STEP-7f3a"
# Seconds the judge waits before answering a warm-up call: a timed round that took the
# warm-up in would last at least this long.
WARM_UP_DELAY = 3.0


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


def prompts(judge: StandInJudge) -> list[str]:
    """Every chat call's messages as one text, in the order the calls came."""
    return ["\n".join(m["content"] for m in chat) for chat in judge.chats]


Measured = tuple[dict[str, Any], StandInJudge, dict[str, list[Any]], Any]


@pytest.fixture(scope="module")
def measured() -> Iterator[Measured]:
    # Warm-up calls are held WARM_UP_DELAY each, so a timed round that waited on one shows.
    judge = StandInJudge(
        refuse=MARKER.encode(), hold=(vs_direct.WARM_UP_TASK.encode(), WARM_UP_DELAY)
    )
    group = vs_direct.grpo_groups(fixture_records("hotpot"), 1)[0]
    rounds = {"grpo": [group], "marked": [_marked()]}
    with uvicorn_in_thread(judge) as url, tempfile.TemporaryDirectory() as tmp:
        results, warm = vs_direct.vs_direct(f"{url}/v1", rounds, 4, Path(tmp), "prototypes")
    yield results, judge, rounds, warm


@pytest.mark.real
def test_both_arms_judge_every_step_and_the_judge_saw_each_call(measured: Measured) -> None:
    results, judge, rounds, warm = measured
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
    # The warm-up's steps are none of these: each reached the judge once from either arm.
    assert judge.calls == expected + 2 * warm.steps
    assert grpo.scribe.wall_s > 0 and grpo.direct.wall_s > 0
    assert grpo.ratio == pytest.approx(grpo.scribe.steps_per_s / grpo.direct.steps_per_s)
    assert grpo.scribe_prefix_cache_hit_rate is None  # the stand-in has no vLLM metrics


@pytest.mark.real
def test_a_step_the_judge_refuses_is_counted_failed_on_both_sides_not_scored(
    measured: Measured,
) -> None:
    results, _, rounds, _ = measured
    marked = results["marked"]
    steps = _steps(rounds["marked"][0])
    assert (marked.scribe.ok, marked.scribe.failed) == (steps - 1, 1)
    assert (marked.direct.ok, marked.direct.failed) == (steps - 1, 1)
    # Throughput counts judged steps only.
    assert marked.direct.steps_per_s == pytest.approx((steps - 1) / marked.direct.wall_s)


@pytest.mark.real
def test_the_warm_up_covers_every_prototype_the_timed_steps_route_to(measured: Measured) -> None:
    results, _, _, warm = measured
    timed = set(results["grpo"].prototypes) | set(results["marked"].prototypes)
    assert len(timed) > 2
    # Routed beforehand by another service, as the measured one routed them in the rounds.
    assert warm.needed == sorted(timed)
    # The measured service routed one one-step request to each of them.
    assert warm.covered == sorted(timed)
    assert warm.requests == warm.steps == len(timed)
    assert warm.summary()["uncovered"] == []


@pytest.mark.real
def test_the_warm_up_sends_no_timed_step_and_comes_before_the_timed_calls(
    measured: Measured,
) -> None:
    _, judge, rounds, warm = measured
    warming = 2 * warm.steps
    first, rest = prompts(judge)[:warming], prompts(judge)[warming:]
    assert all(vs_direct.WARM_UP_TASK in p for p in first)
    assert not any(vs_direct.WARM_UP_TASK in p for p in rest)
    timed = [r for workload in rounds.values() for r in workload[0]]
    # Each timed step's opening, as its own prompts show it; no warm-up prompt holds one.
    openings = {t[:40] for t in vs_direct.assistant_texts(timed) if len(t.strip()) >= 40}
    assert openings and all(any(o in p for p in rest) for o in openings)
    assert not any(o in p for o in openings for p in first)


@pytest.mark.real
def test_the_warm_up_is_untimed(measured: Measured) -> None:
    results, _, _, warm = measured
    # Its calls were held WARM_UP_DELAY each; no timed arm waited that long.
    assert warm.wall_s >= WARM_UP_DELAY
    for comparison in results.values():
        for detail in comparison.rounds:
            assert detail["scribe"]["wall_s"] < WARM_UP_DELAY
            assert detail["direct"]["wall_s"] < WARM_UP_DELAY


def test_a_warm_up_that_repeats_a_timed_step_is_refused() -> None:
    records = fixture_records("processbench")[:2]
    vs_direct.check_disjoint(records[:1], records[1:])
    with pytest.raises(ValueError, match="repeat timed steps"):
        vs_direct.check_disjoint(records[:1], records)


def test_warm_up_requests_are_one_step_under_a_prototypes_exemplar_or_the_fallback_subgoal() -> (
    None
):
    library = vs_direct.load_library(vs_direct.PROTOTYPES)
    candidates = vs_direct.warm_up_candidates(library)
    assert set(candidates) == set(library.prototypes)
    assert candidates[library.fallback.id] == [vs_direct.FALLBACK_SUBGOAL]
    routable = library.routable()[0]
    assert candidates[routable.id] == list(routable.exemplars)
    request = vs_direct.warm_up_request(routable.id, routable.exemplars[0])
    assert _steps([request]) == 1
    [step] = vs_direct.step_items([request])
    assert step.segmented.steps[0].subgoal == routable.exemplars[0]
    assert vs_direct.WARM_UP_TASK in step.segmented.task


VLLM_METRICS = """\
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="smollm2-vllm"} 1200.0
vllm:prefix_cache_queries_created{engine="0",model_name="smollm2-vllm"} 1.76e+09
vllm:prefix_cache_hits_total{engine="0",model_name="smollm2-vllm"} 800.0
vllm:prefix_cache_hits_total{engine="1",model_name="smollm2-vllm"} 100.0
vllm:num_requests_running{engine="0",model_name="smollm2-vllm"} 0.0
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="smollm2-vllm"} 1500.0
# TYPE vllm:prompt_tokens_cached_total counter
vllm:prompt_tokens_cached_total{engine="0",model_name="smollm2-vllm"} 700.0
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="length",model_name="smollm2-vllm"} 3.0
vllm:request_success_total{engine="0",finished_reason="stop",model_name="smollm2-vllm"} 1.0
"""


def test_prefix_cache_counters_sum_vllms_hits_and_queries_over_engines() -> None:
    counters = vs_direct.prefix_cache_counters(VLLM_METRICS)
    assert (counters.hits, counters.queries) == (900.0, 1200.0)
    later = vs_direct.PrefixCache(hits=1000.0, queries=1400.0)
    assert (later - counters).hit_rate == pytest.approx(0.5)


def test_counters_read_prompt_tokens_and_calls_and_the_tokens_computed_per_call() -> None:
    counters = vs_direct.prefix_cache_counters(VLLM_METRICS)
    # prompt_tokens_cached is another counter, not added into prompt_tokens.
    assert (counters.prompt_tokens, counters.calls) == (1500.0, 4.0)
    later = vs_direct.PrefixCache(hits=1900.0, queries=2200.0, prompt_tokens=2600.0, calls=6.0)
    gained = later - counters
    assert (gained.computed, gained.calls) == (0.0, 2.0)
    summary = counters.summary()
    assert summary["computed_tokens"] == 300.0
    assert summary["computed_tokens_per_call"] == 75.0
    assert summary["prompt_tokens_per_call"] == 375.0
    assert vs_direct.PrefixCache(0.0, 0.0).summary()["computed_tokens_per_call"] is None


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

"""bench/prompt_layout.py, the rubric-first and rubric-late prompt layouts: the template
rewrite, the library copies, and the command's plumbing with two real `scribe serve` on a
stand-in judge that records every user prompt it is sent. The runs on vLLM and llama.cpp take
many minutes and are run by hand (`python bench/prompt_layout.py --server ...`)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from standin_judge import StandInJudge

from support import ROOT, fixture_records, load_bench, uvicorn_in_thread

prompt_layout = load_bench("prompt_layout")
suite = load_bench("suite")

TEMPLATES = ROOT / "prototypes" / "templates"
STARTS = {"rubric-first": "## Rubric\n", "rubric-late": "## Task given to the agent\n"}


# --- with_layout ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["judge_user.txt", "judge_user_logprob.txt"])
def test_each_layout_moves_only_the_rubric_block_and_they_round_trip(name: str) -> None:
    template = (TEMPLATES / name).read_text(encoding="utf-8")
    first = prompt_layout.with_layout(template, "rubric-first", name)
    late = prompt_layout.with_layout(template, "rubric-late", name)
    assert template in (first, late)  # the file holds one of the two today
    assert first.startswith("## Rubric\n{{rubric}}\n\n## Task given to the agent\n")
    assert late.startswith("## Task given to the agent\n")
    assert (
        "## Earlier history\n{{history}}\n\n## Rubric\n{{rubric}}\n\n## The step to grade" in late
    )
    # Moved, not lost or duplicated: the same lines, and the rest in the same order.
    assert sorted(first.splitlines()) == sorted(late.splitlines())
    block = prompt_layout.RUBRIC_BLOCK
    assert first.replace(block, "") == late.replace(block, "")
    assert prompt_layout.with_layout(late, "rubric-first", name) == first
    assert prompt_layout.with_layout(first, "rubric-late", name) == late
    assert prompt_layout.with_layout(late, "rubric-late", name) == late


@pytest.mark.parametrize(
    ("template", "layout", "missing"),
    [
        pytest.param("## Task\n\n## The step to grade\n", "rubric-first", "Rubric", id="none"),
        pytest.param("## Rubric\n{{rubric}}\n## Task\n", "rubric-late", "Rubric", id="not-exact"),
        pytest.param("## Rubric\n{{rubric}}\n\n" * 2, "rubric-first", "Rubric", id="twice"),
        pytest.param("## Rubric\n{{rubric}}\n\n## Task\n", "rubric-late", "step to", id="no-step"),
    ],
)
def test_a_template_without_the_block_exactly_once_is_an_error_naming_the_file(
    template: str, layout: str, missing: str
) -> None:
    with pytest.raises(ValueError, match=f"custom/judge_user.txt: .*{missing}"):
        prompt_layout.with_layout(template, layout, "custom/judge_user.txt")


def test_layout_library_rewrites_both_user_templates_and_copies_the_rest(tmp_path: Path) -> None:
    source = ROOT / "prototypes"
    target = prompt_layout.layout_library(source, tmp_path / "late", "rubric-late")
    copied = sorted(p.relative_to(target) for p in target.rglob("*") if p.is_file())
    assert copied == sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    for path in copied:
        text = (target / path).read_text(encoding="utf-8")
        if path.name in prompt_layout.TEMPLATES:
            assert text.startswith(STARTS["rubric-late"]), path
        else:
            assert text == (source / path).read_text(encoding="utf-8"), path


VLLM_METRICS = """\
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="smollm2-vllm"} 1500.0
vllm:prompt_tokens_total{engine="1",model_name="smollm2-vllm"} 500.0
vllm:prompt_tokens_created{engine="0",model_name="smollm2-vllm"} 1.76e+09
vllm:prompt_tokens_cached_total{engine="0",model_name="smollm2-vllm"} 900.0
"""


def test_prompt_tokens_sums_vllms_counter_and_is_none_without_it() -> None:
    assert prompt_layout.prompt_tokens(VLLM_METRICS) == 2000.0
    assert prompt_layout.prompt_tokens("# llama.cpp\nrequests_total 3\n") is None


# --- the command's plumbing, on a stand-in judge ------------------------------------------------


def user_prompts(judge: StandInJudge) -> list[str]:
    """Each chat call's user prompt, in the order the calls came."""
    return [next(m["content"] for m in chat if m["role"] == "user") for chat in judge.chats]


@pytest.fixture(scope="module")
def measured() -> Iterator[tuple[dict[str, Any], StandInJudge, dict[str, Any]]]:
    judge = StandInJudge()
    # Requests, as the service takes them: the fixtures' other fields are the corpus's.
    math = [{"messages": r["messages"]} for r in fixture_records("processbench")]
    rounds = {
        "grpo": suite.grpo_groups(fixture_records("hotpot"), 2),
        "distinct": [math[:2], math[2:3]],
    }
    with uvicorn_in_thread(judge) as url, tempfile.TemporaryDirectory() as tmp:
        result = prompt_layout.measure_layouts(f"{url}/v1", rounds, math[3:], 4, Path(tmp))
    yield result, judge, rounds


def _calls(run: dict[str, Any]) -> int:
    """Judge calls one layout made: its steps, less those its judgment cache answered."""
    return run["steps_judged"] + run["steps_failed"] - run["cached_steps"]


@pytest.mark.real
def test_each_service_sent_its_own_layout_in_the_order_the_json_reports(
    measured: tuple[dict[str, Any], StandInJudge, dict[str, Any]],
) -> None:
    result, judge, _ = measured
    # The arms run one after the other: the calls split, in order, by the JSON's own counts.
    expected = [(layout, _calls(result["warm_up"][layout])) for layout in prompt_layout.LAYOUTS]
    for workload in result["workloads"].values():
        for this in workload["rounds"]:
            order = [this["first"], *(x for x in prompt_layout.LAYOUTS if x != this["first"])]
            expected += [(layout, _calls(this[layout])) for layout in order]
    assert sum(n for _, n in expected) == len(user_prompts(judge))
    prompts = iter(user_prompts(judge))
    for layout, calls in expected:
        assert calls > 0
        for _ in range(calls):
            assert next(prompts).startswith(STARTS[layout]), layout
    # Which layout goes first alternates, round by round.
    for workload in result["workloads"].values():
        assert [r["first"] for r in workload["rounds"]] == list(prompt_layout.LAYOUTS)


@pytest.mark.real
def test_the_json_has_both_layouts_numbers_for_every_workload(
    measured: tuple[dict[str, Any], StandInJudge, dict[str, Any]],
) -> None:
    result, _, rounds = measured
    json.dumps(result)
    for name, workload in rounds.items():
        steps = sum(len(suite.assistant_positions(r)) for group in workload for r in group)
        summary = result["workloads"][name]
        for layout in prompt_layout.LAYOUTS:
            run = summary[layout]
            assert (run["steps_judged"], run["steps_failed"]) == (steps, 0)
            assert run["wall_s"] > 0 and run["steps_per_s"] > 0
            # The stand-in has no vLLM counters: absent, never a made-up zero.
            assert run["prefix_cache_hit_rate"] is None and run["prompt_tokens"] is None
        first, late = (summary[x]["steps_per_s"] for x in prompt_layout.LAYOUTS)
        assert summary["ratio"] == pytest.approx(late / first, rel=1e-3)
    # The GRPO rollouts share their first steps: each service's judgment cache answered some.
    assert all(result["workloads"]["grpo"][x]["cached_steps"] > 0 for x in prompt_layout.LAYOUTS)

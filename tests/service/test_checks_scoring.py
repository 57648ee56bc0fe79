"""Deterministic checks wired into scoring, through the real app (embedder and judge faked).

The fake judge gives every step a 3, as the bundled judge did on the issue's `3*4 = 7`: only
the checks can tell a wrong step from its correct twin here."""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from scribe_client.protocol import ScoreRequest, ScoreResponse, StepResult
from scribe_service.app import create_app
from scribe_service.evaluation.arms import (
    ArmName,
    Arms,
    RubricStore,
    StepItem,
    load_baseline_templates,
)
from scribe_service.library import Library
from scribe_service.pipeline import checks
from scribe_service.pipeline.backends.base import Sampling
from scribe_service.pipeline.checks import CheckFinding, CheckInput
from scribe_service.pipeline.judge import Judge, JudgeMode
from scribe_service.pipeline.retrieve import Route
from scribe_service.pipeline.segment import segment
from scribe_service.settings import Settings
from support import PROTOTYPES, FakeEmbedder, FakeJudge

WRONG = {"prompt": "What is 3*4?", "completion": "Step 1: 3*4 = 7.\nStep 2: The answer is 7."}
RIGHT = {"prompt": "What is 3*4?", "completion": "Step 1: 3*4 = 12.\nStep 2: The answer is 12."}
FALLBACK = {"min_similarity": 1.0}
"""Routes every step to the fallback rubric, which declares arithmetic, tool arguments and
reference checks: a test then does not depend on where the fake embedder routes a step."""

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def _weather_call(arguments: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "What's the weather in Oslo, in Celsius?"},
        {
            "role": "assistant",
            "content": "I need to call the weather tool for the city.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps(arguments)},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "Oslo: 4 C, light rain."},
    ]


@contextlib.contextmanager
def _app_client(settings: Settings, judge: FakeJudge) -> Iterator[TestClient]:
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=judge)
    with TestClient(app) as client:
        yield client


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with _app_client(settings, FakeJudge(score=3)) as client:
        yield client


def _score(client: TestClient, payload: dict[str, Any]) -> ScoreResponse:
    response = client.post("/v1/score", json=payload)
    assert response.status_code == 200, response.text
    return ScoreResponse.model_validate(response.json())


def _check_findings(step: StepResult) -> list[tuple[str | None, str, int]]:
    return [(f.check, f.failure_mode, f.max_score) for f in step.findings if f.source == "check"]


def _library(client: TestClient) -> Library:
    library: Library = client.app.state.pipeline.library  # type: ignore[attr-defined]
    return library


def _declares(client: TestClient, step: StepResult, check: str) -> bool:
    """Whether the prototype the step was judged with declares `check`: asserted first, so a
    routing change fails a test loudly instead of letting it pass with the check never run."""
    return check in _library(client).prototypes[step.prototype_id].checks


def test_the_issue_example_scores_below_its_correct_twin(client: TestClient) -> None:
    wrong, right = _score(client, WRONG), _score(client, RIGHT)
    first = wrong.steps[0]
    assert _declares(client, first, "arithmetic")  # routed where arithmetic is checked
    assert _check_findings(first) == [("arithmetic", "arithmetic_error", 1)]
    [finding] = first.findings
    assert finding.source == "check" and "3*4 = 7" in finding.description
    assert first.failure_modes == ["arithmetic_error"]
    assert (first.score, first.reward) == (1, pytest.approx(1 / 3))
    assert [s.score for s in right.steps] == [3, 3]
    assert all(s.findings == [] and s.failure_modes == [] for s in right.steps)
    assert wrong.process_reward is not None and right.process_reward is not None
    assert wrong.process_reward < right.process_reward == 1.0
    # The number a trainer uses carries the cap too.
    assert wrong.training_reward == pytest.approx(wrong.process_reward)
    assert wrong.training_reward < right.training_reward  # type: ignore[operator]


def test_logprob_mode_caps_the_expected_score(settings: Settings) -> None:
    judge = FakeJudge(logprobs={"3": math.log(0.9), "2": math.log(0.1)})
    options = {"judge_mode": "logprob"}
    with _app_client(settings, judge) as client:
        wrong = _score(client, WRONG | {"options": options})
        right = _score(client, RIGHT | {"options": options})
    first = wrong.steps[0]
    assert _check_findings(first) == [("arithmetic", "arithmetic_error", 1)]
    assert (first.score, first.expected_score) == (1, pytest.approx(1.0))
    assert first.reward == pytest.approx(1 / 3)
    assert right.steps[0].expected_score == pytest.approx(2.9)
    assert right.steps[0].reward == pytest.approx(2.9 / 3)
    assert wrong.training_reward < right.training_reward  # type: ignore[operator]


def test_a_wrong_final_answer_is_capped_by_the_reference(client: TestClient) -> None:
    payload = {"steps": [{"content": "So the answer is 7."}], "options": FALLBACK}
    wrong = _score(client, payload | {"reference": "12"})
    [step] = wrong.steps
    assert _check_findings(step) == [("reference_answer", "reference_mismatch", 0)]
    assert (step.score, step.reward) == (0, 0.0)
    # The same step without a reference, or with one it matches, is not capped.
    assert _score(client, payload).steps[0].score == 3
    right = {"steps": [{"content": "So the answer is 12."}], "options": FALLBACK}
    assert _score(client, right | {"reference": '["12", "twelve"]'}).steps[0].findings == []


def test_a_schema_breaking_tool_call_is_capped(client: TestClient) -> None:
    good = _score(client, {"messages": _weather_call({"city": "Oslo"}), "tools": [WEATHER_TOOL]})
    assert _declares(client, good.steps[0], "tool_arguments")
    assert good.steps[0].findings == [] and good.steps[0].score == 3
    bad = _score(
        client, {"messages": _weather_call({"city": 5, "unit": "K"}), "tools": [WEATHER_TOOL]}
    )
    [step] = bad.steps
    assert _check_findings(step) == [("tool_arguments", "schema_violation", 1)]
    assert step.score == 1 and bad.training_reward == pytest.approx(1 / 3)
    # Without the request's `tools` there is no schema to break: nothing is capped.
    untooled = _score(client, {"messages": _weather_call({"city": 5})})
    assert untooled.steps[0].findings == [] and untooled.steps[0].score == 3


def test_an_unknown_tool_caps_at_zero(client: TestClient) -> None:
    messages = _weather_call({"city": "Oslo"})
    messages[1]["tool_calls"][0]["function"]["name"] = "get_forecast"
    [step] = _score(client, {"messages": messages, "tools": [WEATHER_TOOL]}).steps
    assert _check_findings(step) == [("tool_arguments", "unknown_tool", 0)]
    assert step.score == 0


def test_judge_and_check_findings_are_reported_side_by_side(settings: Settings) -> None:
    reply = json.dumps(
        {"rationale": "repeats itself", "failure_modes": ["pointless_repetition"], "score": 3}
    )
    payload = {"steps": [{"content": "3*4 = 7"}], "options": FALLBACK}
    with _app_client(settings, FakeJudge(replies=[reply])) as client:
        [step] = _score(client, payload).steps
        library = _library(client)
    assert [(f.source, f.failure_mode, f.check, f.max_score) for f in step.findings] == [
        ("judge", "pointless_repetition", None, 1),
        ("check", "arithmetic_error", "arithmetic", 1),
    ]
    judge_finding = step.findings[0]
    [mode] = [m for m in library.fallback.failure_modes if m.id == "pointless_repetition"]
    assert judge_finding.description == mode.description
    assert step.failure_modes == ["pointless_repetition", "arithmetic_error"]
    assert step.score == 1


def test_a_failed_judge_call_stays_failed_with_its_findings(settings: Settings) -> None:
    settings.judge_max_attempts = 1
    with _app_client(settings, FakeJudge(replies=["nonsense"])) as client:
        result = _score(client, {"steps": [{"content": "3*4 = 7"}], "options": FALLBACK})
    [step] = result.steps
    assert step.status == "failed" and step.score is None and step.reward is None
    assert step.error is not None and step.error.type == "judge_invalid_output"
    assert _check_findings(step) == [("arithmetic", "arithmetic_error", 1)]
    assert step.failure_modes == ["arithmetic_error"]
    assert result.status == "failed"


def test_a_check_that_raises_is_skipped_and_counted(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(inp: CheckInput) -> list[CheckFinding]:
        raise RuntimeError("a bug in a check")

    monkeypatch.setitem(checks.CHECKS, "arithmetic", broken)  # type: ignore[index]
    payload = {"steps": [{"content": "3*4 = 7. The answer is 7."}], "options": FALLBACK}
    result = _score(client, payload | {"reference": "12"})
    [step] = result.steps
    assert result.status == "ok" and step.status == "ok"
    # The broken check is skipped; the others still run and cap.
    assert _check_findings(step) == [("reference_answer", "reference_mismatch", 0)]
    assert client.app.state.pipeline.check_errors == 1  # type: ignore[attr-defined]
    metrics = client.get("/metrics").text
    assert 'scribe_stage_seconds_count{stage="checks"}' in metrics


def test_a_prototype_declaring_no_checks_still_gets_the_always_run_ones(
    settings: Settings, tmp_path: Path
) -> None:
    """Arithmetic, tool arguments and the reference do not depend on the skill, so a routing
    slip must not switch them off: here every step goes to a fallback that declares nothing."""
    library = tmp_path / "library"
    shutil.copytree(PROTOTYPES, library)
    fallback = library / "generic_step.toml"
    text = fallback.read_text()
    declared = re.search(r"^checks = .*$", text, flags=re.MULTILINE)
    assert declared is not None
    fallback.write_text(text.replace(declared.group(0), "checks = []"))
    settings.prototypes_dir = library
    with _app_client(settings, FakeJudge(score=3)) as client:
        assert _library(client).fallback.checks == ()
        arithmetic = _score(client, {"steps": [{"content": "3*4 = 7"}], "options": FALLBACK})
        answer = {"steps": [{"content": "So the answer is 7."}], "options": FALLBACK}
        reference = _score(client, answer | {"reference": "12"})
        call = {"messages": _weather_call({"city": 5}), "tools": [WEATHER_TOOL]}
        schema = _score(client, call | {"options": FALLBACK})
        # `answer_grounded` is not one of them: only a prototype that declares it checks it.
        grounded = _score(
            client,
            {
                "messages": _weather_call({"city": "Oslo"})
                + [{"role": "assistant", "content": "<answer>Bergen</answer>"}],
                "options": FALLBACK,
            },
        )
    assert [step.prototype_id for step in arithmetic.steps] == ["generic_step"]
    assert _check_findings(arithmetic.steps[0]) == [("arithmetic", "arithmetic_error", 1)]
    assert _check_findings(reference.steps[0]) == [("reference_answer", "reference_mismatch", 0)]
    assert _check_findings(schema.steps[0]) == [("tool_arguments", "schema_violation", 1)]
    assert [_check_findings(step) for step in grounded.steps] == [[], []]


def test_step_checks_adds_the_always_run_checks_after_the_declared_ones() -> None:
    assert checks.step_checks(()) == checks.ALWAYS_RUN
    assert checks.step_checks(("answer_grounded", "reference_answer")) == (
        "answer_grounded",
        "reference_answer",
        "arithmetic",
        "tool_arguments",
    )
    assert "answer_grounded" not in checks.ALWAYS_RUN
    assert set(checks.ALWAYS_RUN) <= set(checks.CHECKS)


# --- `scribe eval`: the arms apply the same checks through the same rule ---------------------


def _arms(library: Library) -> Arms:
    templates = load_baseline_templates(PROTOTYPES / "templates")
    return Arms(library, templates, RubricStore(None), max_step_chars=4000, max_context_chars=8000)


def _item(library: Library, payload: dict[str, Any], prototype_id: str) -> StepItem:
    request = ScoreRequest.model_validate(payload)
    seg = segment(
        messages=request.messages,
        completion=request.completion,
        steps=request.steps,
        prompt=request.prompt,
    )
    prototype = library.prototypes[prototype_id]
    route = Route(prototype=prototype, similarity=0.9, fallback=False, nearest=prototype)
    return StepItem("r1", seg.task, seg, seg.steps[0], route, tools=request.tools)


def _judge(backend: FakeJudge) -> Judge:
    return Judge(backend, concurrency=1, timeout=5, max_attempts=1, sampling=Sampling())


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["verdict", "logprob"])
async def test_the_scribe_and_generic_arms_cap_as_the_service_does(
    library: Library, mode: JudgeMode
) -> None:
    arms = _arms(library)
    item = _item(library, {"steps": [{"content": "3*4 = 7."}]}, "arithmetic_computation")
    judge = _judge(FakeJudge(score=3, logprobs={"3": math.log(0.9), "2": math.log(0.1)}))
    arm_names: tuple[ArmName, ...] = ("scribe", "generic", "direct")
    outcomes = {arm: await arms.judge(arm, item, judge, mode) for arm in arm_names}
    for arm in ("scribe", "generic"):
        outcome = outcomes[arm]
        assert (outcome.score, outcome.findings) == (1, ("arithmetic_error",)), arm
        assert outcome.reward == pytest.approx(1 / 3)
        if mode == "logprob":
            assert outcome.expected_score == pytest.approx(1.0)
    assert (outcomes["direct"].score, outcomes["direct"].findings) == (3, ())
    # `rar` and `direct` have no prototype of their own: the same step, the same declaring
    # prototype, and still no checks.
    for arm in ("rar", "direct"):
        assert arms.check(arm, item, item.route.prototype) == []
    assert [f.failure_mode for f in arms.check("scribe", item, item.route.prototype)] == [
        "arithmetic_error"
    ]


@pytest.mark.anyio
async def test_the_scribe_arm_checks_tool_arguments_against_the_records_tools(
    library: Library,
) -> None:
    arms = _arms(library)
    payload = {"messages": _weather_call({"city": 5}), "tools": [WEATHER_TOOL]}
    item = _item(library, payload, "argument_filling")
    outcome = await arms.judge("scribe", item, _judge(FakeJudge(score=3)), "verdict")
    assert (outcome.score, outcome.findings) == (1, ("schema_violation",))
    untooled = replace(item, tools=None)
    outcome = await arms.judge("scribe", untooled, _judge(FakeJudge(score=3)), "verdict")
    assert (outcome.score, outcome.findings) == (3, ())


@pytest.mark.anyio
async def test_only_the_ref_arms_check_against_the_reference(library: Library) -> None:
    arms = _arms(library)
    item = _item(library, {"steps": [{"content": "The answer is 7."}]}, "final_answer_statement")
    item = replace(item, reference="12")
    judge = _judge(FakeJudge(score=3))
    with_ref = await arms.judge("scribe+ref", item, judge, "verdict")
    assert (with_ref.score, with_ref.findings) == (0, ("reference_mismatch",))
    plain = await arms.judge("scribe", item, judge, "verdict")
    assert (plain.score, plain.findings) == (3, ())


@pytest.mark.anyio
async def test_the_arms_run_the_always_run_checks_whatever_the_route(library: Library) -> None:
    """A final answer routed to a search prototype (it happens on dev HotpotQA) is still held
    to the reference; a computation routed there still has its arithmetic checked."""
    prototype = "search_query_formulation"
    assert not {"arithmetic", "reference_answer"} & set(library.prototypes[prototype].checks)
    arms = _arms(library)
    judge = _judge(FakeJudge(score=3))
    item = _item(library, {"steps": [{"content": "3*4 = 7, so the answer is 7."}]}, prototype)
    with_ref = await arms.judge("scribe+ref", replace(item, reference="12"), judge, "verdict")
    assert (with_ref.score, with_ref.findings) == (0, ("arithmetic_error", "reference_mismatch"))
    plain = await arms.judge("scribe", item, judge, "verdict")
    assert (plain.score, plain.findings) == (1, ("arithmetic_error",))

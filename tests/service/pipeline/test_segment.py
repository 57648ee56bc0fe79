from __future__ import annotations

from typing import Any

import pytest

from scribe_client.protocol import AssistantMessage, ScoreRequest, StepInput
from scribe_service.pipeline.segment import derive_subgoal, marker_subgoal, segment


def _segment(payload: dict[str, Any]):  # type: ignore[no-untyped-def]
    request = ScoreRequest.model_validate(payload)
    return segment(
        messages=request.messages,
        completion=request.completion,
        steps=request.steps,
        prompt=request.prompt,
    )


def test_messages_one_step_per_assistant_message_with_tool_results() -> None:
    out = _segment(
        {
            "messages": [
                {"role": "system", "content": "Be helpful."},
                {"role": "user", "content": "Who directed Alien?"},
                {
                    "role": "assistant",
                    "content": "I need to look up the director.",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "search", "arguments": '{"q": "Alien"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "Ridley Scott"},
                {"role": "assistant", "content": "<answer>Ridley Scott</answer>"},
            ]
        }
    )
    assert [s.message_index for s in out.steps] == [2, 4]
    first, second = out.steps
    assert "search" in first.content and "Ridley Scott" in first.observation
    assert first.subgoal.startswith("I need to look up the director.")
    assert "Call search with q: Alien" in first.subgoal
    assert second.subgoal == "Give the final answer: Ridley Scott"
    assert "Who directed Alien?" in out.task
    assert second.history_end == 2  # the first step and its tool result


def test_marker_subgoal_wins_over_derivation() -> None:
    assert marker_subgoal("<subgoal>Sum the divisors</subgoal> 1+2+4 = 7") == "Sum the divisors"
    assert marker_subgoal("Step 2: Filter the factors\nKeep those below 14.") == (
        "Filter the factors"
    )
    assert marker_subgoal("Just some text") is None


def test_derived_subgoal_prefers_a_stated_intent() -> None:
    text = "The rate is 2 pounds a week. Let's compute how long Sandy needs. It is 4 weeks."
    assert derive_subgoal(text) == "Let's compute how long Sandy needs."
    assert derive_subgoal("") == "(empty step)"
    assert derive_subgoal("So the answer is \\boxed{42}.").endswith("State the final answer: 42")


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        pytest.param(
            "<subgoal>Find factors</subgoal>1, 2, 4\n<subgoal>Sum them</subgoal>7",
            ["Find factors", "Sum them"],
            id="subgoal-tags",
        ),
        pytest.param(
            "Step 1: Read the problem\nWe need x.\n\nStep 2: Solve\nx = 3.",
            ["Read the problem", "Solve"],
            id="step-headers",
        ),
        pytest.param(
            "1. Let's find the rate.\n2. Let's divide the total.",
            ["Let's find the rate.", "Let's divide the total."],
            id="numbered-lines",
        ),
        pytest.param(
            "First, we compute the area.\n\nThen we double it.\n\n\n",
            ["First, we compute the area.", "Then we double it."],
            id="paragraphs",
        ),
    ],
)
def test_completion_forms(completion: str, expected: list[str]) -> None:
    out = _segment({"completion": completion})
    assert [s.subgoal for s in out.steps] == expected
    for step in out.steps:
        assert step.char_span is not None
        start, end = step.char_span
        assert completion[start:end] == step.content
        assert step.content == step.content.strip()


def test_text_before_the_first_marker_is_its_own_step() -> None:
    completion = "Some preamble.\nStep 1: Go\nwent.\nStep 2: Stop\nstopped."
    out = _segment({"completion": completion})
    assert [s.subgoal_source for s in out.steps] == ["derived", "marker", "marker"]


def test_numbered_lines_must_count_from_one() -> None:
    out = _segment({"completion": "3. not a list\n7. either"})
    assert len(out.steps) == 1


def test_given_steps_keep_their_subgoals() -> None:
    out = segment(
        steps=[StepInput(subgoal="Add", content="1+1=2"), StepInput(content="Let's check it.")],
        prompt="What is 1+1?",
    )
    assert [(s.subgoal, s.subgoal_source) for s in out.steps] == [
        ("Add", "given"),
        ("Let's check it.", "derived"),
    ]
    assert out.task == "What is 1+1?"


def _assistant_indices(record: dict[str, Any]) -> list[int]:
    return [i for i, m in enumerate(record["messages"]) if m["role"] == "assistant"]


@pytest.mark.parametrize("corpus", ["hotpot_records", "processbench_records"])
def test_every_labelled_message_maps_to_exactly_one_step(
    corpus: str, request: pytest.FixtureRequest
) -> None:
    records: list[dict[str, Any]] = request.getfixturevalue(corpus)
    for record in records:
        out = _segment({"messages": record["messages"], "tools": record.get("tools")})
        indices = [s.message_index for s in out.steps]
        assert indices == _assistant_indices(record), record["id"]
        for key in record["step_labels"]:
            assert indices.count(int(key)) == 1, (record["id"], key)
        assert all(s.subgoal and s.subgoal != "(empty step)" for s in out.steps), record["id"]


def test_assistant_text_parts_are_joined() -> None:
    message = AssistantMessage.model_validate(
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        }
    )
    out = segment(messages=[message])
    assert out.steps[0].content == "a\nb"

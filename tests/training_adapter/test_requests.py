"""Trainer rollouts become the service's requests."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from scribe_adapters._requests import check_outcome, normalise_messages, trajectory_request

# A tool run exactly as TRL's GRPOTrainer hands it to reward functions: calls without ids,
# arguments as a dict, tool results without a tool_call_id.
TRL_TOOL_RUN = [
    {
        "role": "assistant",
        "content": "I will look it up.",
        "tool_calls": [
            {"type": "function", "function": {"name": "search", "arguments": {"q": "Alien"}}},
            {"type": "function", "function": {"name": "lookup", "arguments": {"id": 3}}},
        ],
    },
    {"role": "tool", "name": "search", "content": "Alien (1979), dir. Ridley Scott"},
    {"role": "tool", "name": "lookup", "content": [{"type": "text", "text": "id 3: film"}]},
    {"role": "assistant", "content": "<answer>Ridley Scott</answer>"},
]


def test_trl_tool_calls_get_ids_and_results_answer_them_in_order() -> None:
    messages = normalise_messages(TRL_TOOL_RUN)

    calls = messages[0]["tool_calls"]
    assert [c["id"] for c in calls] == ["call_0_0", "call_0_1"]
    assert [m.get("tool_call_id") for m in messages[1:3]] == ["call_0_0", "call_0_1"]
    assert messages[2]["content"] == "id 3: film"


def test_openai_ids_are_kept() -> None:
    messages = normalise_messages(
        [
            {"role": "assistant", "tool_calls": [
                {"id": "c9", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "c9", "content": "ok"},
        ]
    )  # fmt: skip
    assert messages[0]["tool_calls"][0]["id"] == "c9" and messages[1]["tool_call_id"] == "c9"


def test_text_rollout_is_a_completion_request() -> None:
    request = trajectory_request("What is 2+2?", "Step 1: add.\nStep 2: 4.", outcome=1.0)
    assert request.completion and request.prompt == "What is 2+2?" and request.outcome == 1.0


def test_conversational_rollout_is_a_messages_request() -> None:
    request = trajectory_request([{"role": "user", "content": "Who directed Alien?"}], TRL_TOOL_RUN)
    assert request.messages is not None
    assert [m.role for m in request.messages] == ["user", "assistant", "tool", "tool", "assistant"]


def test_text_completion_after_a_chat_prompt_is_an_assistant_message() -> None:
    request = trajectory_request([{"role": "user", "content": "Hi"}], "Hello.")
    assert request.messages is not None and request.messages[-1].role == "assistant"


def test_an_empty_completion_is_refused_locally() -> None:
    with pytest.raises(ValidationError):
        trajectory_request("Q", "   ")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (True, 1.0), (0, 0.0), (0.25, 0.25), (float("nan"), None)],
    ids=["none", "bool", "int", "float", "nan"],
)
def test_outcomes(value: object, expected: float | None) -> None:
    assert check_outcome(value) == expected


@pytest.mark.parametrize("value", [1.5, -0.1, "1.0"], ids=["above", "below", "string"])
def test_bad_outcomes_raise(value: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        check_outcome(value)


def test_the_reference_goes_with_the_request() -> None:
    request = trajectory_request("What is 2 + 2?", "4", reference="4")
    assert request.reference == "4"
    assert trajectory_request("What is 2 + 2?", "4").reference is None

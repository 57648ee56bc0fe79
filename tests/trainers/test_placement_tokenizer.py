"""Token placement on SmolLM2's real Hugging Face tokenizer and chat template, with the
service's own segmentation deciding the steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scribe_adapters._requests import trajectory_request
from scribe_adapters.placement import (
    offsets_from_token_ids,
    place_by_char_spans,
    place_by_turns,
    turn_spans_from_mask,
)
from scribe_client.protocol import StepResult
from scribe_service.pipeline.segment import segment_completion, segment_messages

COMPLETION = (
    "Step 1: Factor 196.\n196 = 2² · 7², so its divisors are 1, 2, 4, 7, 14, 28, 49, 98, 196.\n"
    "Step 2: Keep the divisors below 14.\nThat leaves 1, 2, 4 and 7 — four of them.\n"
    "Step 3: Answer.\nThe answer is 4 ✓"
)
MESSAGES = [
    {"role": "user", "content": "Who directed Alien, and when was it released?"},
    {"role": "assistant", "content": "I will search for the film.", "tool_calls": [
        {"type": "function", "function": {"name": "search", "arguments": {"q": "Alien film"}}}
    ]},
    {"role": "tool", "name": "search", "content": "Alien (1979) was directed by Ridley Scott."},
    {"role": "assistant", "content": "Ridley Scott directed it; it came out in 1979."},
]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_tokenizer))


def results(spans: list[Any], key: str) -> list[StepResult]:
    """Distinct rewards per step, so a misplaced one shows."""
    return [
        StepResult(
            index=i, subgoal="s", subgoal_source="derived", prototype_id="generic_step",
            similarity=0.5, fallback=False, score=i % 4, reward=(i + 1) / 10, status="ok",
            **{key: span},
        )
        for i, span in enumerate(spans)
    ]  # fmt: skip


def test_multi_step_completion(tokenizer: Any) -> None:
    steps = segment_completion(COMPLETION, None).steps
    assert len(steps) == 3
    scored = results([s.char_span for s in steps], "char_span")
    encoded = tokenizer(COMPLETION, return_offsets_mapping=True, add_special_tokens=False)
    ids = encoded["input_ids"]

    from_offsets = place_by_char_spans(scored, encoded["offset_mapping"])
    decode = lambda part: tokenizer.decode(part, skip_special_tokens=True)  # noqa: E731
    from_ids = place_by_char_spans(scored, offsets_from_token_ids(ids, decode))

    assert from_offsets == from_ids
    placed = [i for i, r in enumerate(from_offsets) if r]
    assert [from_offsets[i] for i in placed] == pytest.approx([0.1, 0.2, 0.3])
    for index, step in zip(placed, steps, strict=True):
        # The reward sits on the token that finishes the step's text.
        assert tokenizer.decode(ids[: index + 1]).rstrip() == COMPLETION[: step.char_span[1]]


def test_multi_turn_messages(tokenizer: Any) -> None:
    request = trajectory_request(MESSAGES[:1], MESSAGES[1:])
    assert request.messages is not None
    steps = segment_messages(request.messages).steps
    scored = results([s.message_index for s in steps], "message_index")

    # Response tokens as multi-turn trainers build them: the template's tokens after the
    # prompt, with a mask that is 1 on each assistant turn (content and end-of-turn tokens)
    # and 0 on tool output and the headers around it.
    chat = [{"role": m["role"], "content": m["content"]} for m in MESSAGES]

    def ids_of(messages: list[dict[str, str]], generation: bool = False) -> list[int]:
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=generation)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    prompt = ids_of(chat[:1], generation=True)
    full = ids_of(chat)
    assert full[: len(prompt)] == prompt
    ids = full[len(prompt) :]
    mask = [0] * len(ids)
    for k, message in enumerate(chat):
        if message["role"] == "assistant":
            start = len(ids_of(chat[:k], generation=True)) - len(prompt)
            end = len(ids_of(chat[: k + 1])) - len(prompt)
            mask[start:end] = [1] * (end - start)

    spans = turn_spans_from_mask(mask)
    assert len(spans) == 2
    rewards = place_by_turns(scored, spans, len(ids))
    placed = [i for i, r in enumerate(rewards) if r]
    assert [rewards[i] for i in placed] == pytest.approx([0.1, 0.2])
    for index, (start, end), message in zip(placed, spans, (chat[1], chat[3]), strict=True):
        assert index == end - 1
        assert message["content"] in tokenizer.decode(ids[start:end])
        assert "<|im_end|>" in tokenizer.decode(ids[start:end])

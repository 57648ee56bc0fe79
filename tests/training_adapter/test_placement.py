"""Per-token placement of step rewards (pure; tests/trainers repeats it on a real tokenizer)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from scribe_adapters.placement import (
    offsets_from_token_ids,
    place_by_char_spans,
    place_by_turns,
    turn_spans_from_mask,
)
from scribe_client.protocol import StepError, StepResult


def step(
    index: int,
    reward: float | None,
    *,
    span: tuple[int, int] | None = None,
    message: int | None = None,
) -> StepResult:
    failed = reward is None
    return StepResult(
        index=index, message_index=message, char_span=span, subgoal="s", subgoal_source="derived",
        prototype_id="generic_step", similarity=0.5, fallback=False,
        score=None if failed else round(reward * 3), reward=reward,
        status="failed" if failed else "ok",
        error=StepError(type="judge_timeout", message="slow") if failed else None,
    )  # fmt: skip


# "ab cd|ef" as five tokens: "ab", " c", "d", "|e", "f"
TEXT = "ab cd|ef"
OFFSETS = [(0, 2), (2, 4), (4, 5), (5, 7), (7, 8)]


def test_each_step_reward_lands_on_its_last_token() -> None:
    steps = [step(0, 1 / 3, span=(0, 5)), step(1, 1.0, span=(6, 8))]
    assert place_by_char_spans(steps, OFFSETS) == pytest.approx([0, 0, 1 / 3, 0, 1.0])


def test_a_step_ending_inside_a_token_lands_on_that_token() -> None:
    steps = [step(0, 0.5, span=(0, 6)), step(1, 1.0, span=(7, 8))]
    assert place_by_char_spans(steps, OFFSETS) == pytest.approx([0, 0, 0, 0.5, 1.0])


def test_two_steps_ending_in_one_token_add_up() -> None:
    steps = [step(0, 0.5, span=(0, 6)), step(1, 0.25, span=(6, 7))]
    assert place_by_char_spans(steps, OFFSETS)[3] == pytest.approx(0.75)


def test_a_failed_step_raises_unless_told_what_to_place() -> None:
    steps = [step(0, None, span=(0, 5)), step(1, 1.0, span=(6, 8))]
    with pytest.raises(ValueError, match="step 0 has no reward \\(judge_timeout\\)"):
        place_by_char_spans(steps, OFFSETS)
    assert place_by_char_spans(steps, OFFSETS, failed_step_reward=0.0)[2] == 0.0


def test_offsets_from_another_text_are_refused() -> None:
    with pytest.raises(ValueError, match="no token covers"):
        place_by_char_spans([step(0, 1.0, span=(20, 30))], OFFSETS)


def test_a_messages_step_has_no_char_span() -> None:
    with pytest.raises(ValueError, match="char_span"):
        place_by_char_spans([step(0, 1.0, message=1)], OFFSETS)


def test_offsets_from_token_ids_follow_the_decoding() -> None:
    vocab = {1: "ab", 2: " c", 3: "d", 4: "|e", 5: "f"}

    def decode(ids: Sequence[int]) -> str:
        return "".join(vocab[i] for i in ids)

    assert offsets_from_token_ids([1, 2, 3, 4, 5], decode) == OFFSETS


def test_a_character_split_over_two_tokens_belongs_to_the_second() -> None:
    # Byte-level BPE: "é" is two bytes, one per token; decoding the first alone gives U+FFFD.
    pieces = {1: b"a", 2: b"\xc3", 3: b"\xa9", 4: b"b"}

    def decode(ids: Sequence[int]) -> str:
        return b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")

    assert offsets_from_token_ids([1, 2, 3, 4], decode) == [(0, 1), (1, 1), (1, 2), (2, 3)]


def test_turn_spans_are_the_runs_of_policy_tokens() -> None:
    assert turn_spans_from_mask([1, 1, 0, 0, 1, 0, 1, 1]) == [(0, 2), (4, 5), (6, 8)]
    assert turn_spans_from_mask([0, 0]) == []


def test_step_k_lands_on_the_last_token_of_assistant_turn_k() -> None:
    steps = [step(0, 0.5, message=1), step(1, 1.0, message=3)]
    rewards = place_by_turns(steps, [(0, 2), (4, 6)], 7)
    assert rewards == pytest.approx([0, 0.5, 0, 0, 0, 1.0, 0])


def test_more_steps_than_turns_is_an_error() -> None:
    with pytest.raises(ValueError, match="only 1 assistant turns"):
        place_by_turns([step(0, 1.0, message=1), step(1, 1.0, message=3)], [(0, 2)], 4)

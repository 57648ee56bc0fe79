"""Per-step rewards → per-token rewards, each step's reward on that step's last token.

This is what a dense-reward trainer consumes: verl with GAE or REINFORCE++ (a custom reward
manager returning ``token_level_scores``), per-turn agent trainers that credit each turn's
last token. Trainers that sum the sequence (GRPO, RLOO) collapse it back to one number.

Two ways to locate a step in the response tokens:

* a `completion` request: each step has a ``char_span`` into the completion text. Give the
  tokens' character spans in that same text: a fast tokenizer's offset mapping
  (``tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)``), or
  `offsets_from_token_ids` when you hold the response ids and the text is their decoding;
* a `messages` request: step *k* is the *k*-th assistant message. Give the token range of
  each assistant turn in the response; `turn_spans_from_mask` reads them off an action
  mask (verl's ``response_mask``, TRL's ``tool_mask``: 1 on policy tokens, 0 on tool output).

```python
result = client.score({"prompt": prompt, "completion": text})
offsets = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
token_rewards = place_by_char_spans(result.steps, offsets)     # torch.tensor(...) as needed
```

A step the judge could not score has no reward; placing a number there would train on a
guess, so it raises unless ``failed_step_reward`` says what to put instead. Pure Python:
lists in, a list out, no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from scribe_client.protocol import ScoreResponse, StepResult

__all__ = [
    "offsets_from_token_ids",
    "place_by_char_spans",
    "place_by_turns",
    "turn_spans_from_mask",
]

Span = tuple[int, int]
Steps = ScoreResponse | Sequence[StepResult]

# Tokens decoded together so a token's text is read in context: SentencePiece drops a leading
# space and byte-level BPE splits characters when a token is decoded alone.
DECODE_WINDOW = 6
_INCOMPLETE = "\ufffd"


def _steps(steps: Steps) -> Sequence[StepResult]:
    return steps.steps if isinstance(steps, ScoreResponse) else steps


def _reward(step: StepResult, failed_step_reward: float | None) -> float:
    if step.reward is not None:
        return step.reward
    if failed_step_reward is None:
        reason = step.error.type if step.error else step.status
        raise ValueError(
            f"step {step.index} has no reward ({reason}); pass failed_step_reward to place one"
        )
    return failed_step_reward


def offsets_from_token_ids(
    token_ids: Sequence[int], decode: Callable[[Sequence[int]], str]
) -> list[Span]:
    """Each token's character span in ``decode(token_ids)``.

    ``decode`` is, for example, ``lambda ids: tokenizer.decode(ids, skip_special_tokens=True)``
    (the same call that made the scored text). A character split over several tokens (byte-
    level BPE) belongs to the token that completes it; the others get an empty span.
    """

    def settled(ids: Sequence[int]) -> int:
        # U+FFFD at the end stands for bytes of a character that has not been completed yet.
        return len(decode(ids).rstrip(_INCOMPLETE))

    spans: list[Span] = []
    end = 0
    for i in range(len(token_ids)):
        start = max(0, i - DECODE_WINDOW)
        grown = max(0, settled(token_ids[start : i + 1]) - settled(token_ids[start:i]))
        spans.append((end, end + grown))
        end += grown
    if end != settled(token_ids):
        # A tokenizer whose decoding is not local; exact, at the price of decoding prefixes.
        spans, end = [], 0
        for i in range(len(token_ids)):
            grown = max(0, settled(token_ids[: i + 1]) - end)
            spans.append((end, end + grown))
            end += grown
    return spans


def _last_token(offsets: Sequence[Span], span: Span) -> int:
    start, end = span
    for index in range(len(offsets) - 1, -1, -1):
        token_start, token_end = offsets[index]
        if token_start < end and token_end > start:
            return index
    raise ValueError(f"no token covers characters {start}..{end}: offsets from another text?")


def place_by_char_spans(
    steps: Steps, offsets: Sequence[Span], *, failed_step_reward: float | None = None
) -> list[float]:
    """Per-token rewards for a `completion` request: 0 everywhere but each step's last token.

    ``offsets[i]`` is token *i*'s [start, end) in the completion text that was scored.
    """
    rewards = [0.0] * len(offsets)
    for step in _steps(steps):
        if step.char_span is None:
            raise ValueError(f"step {step.index} has no char_span: was it a `completion`?")
        rewards[_last_token(offsets, step.char_span)] += _reward(step, failed_step_reward)
    return rewards


def turn_spans_from_mask(mask: Sequence[int | bool]) -> list[Span]:
    """The [start, end) token range of each run of policy tokens (1s) in an action mask."""
    spans: list[Span] = []
    start = None
    for index, value in enumerate([*mask, 0]):
        if value and start is None:
            start = index
        elif not value and start is not None:
            spans.append((start, index))
            start = None
    return spans


def place_by_turns(
    steps: Steps,
    turn_spans: Sequence[Span],
    num_tokens: int,
    *,
    failed_step_reward: float | None = None,
) -> list[float]:
    """Per-token rewards for a `messages` request: step *k*'s reward on the last token of
    ``turn_spans[k]``, the *k*-th assistant turn of a response ``num_tokens`` long."""
    rewards = [0.0] * num_tokens
    for step in _steps(steps):
        if step.message_index is None:
            raise ValueError(f"step {step.index} has no message_index: was it `messages`?")
        if step.index >= len(turn_spans):
            raise ValueError(f"step {step.index} but only {len(turn_spans)} assistant turns")
        start, end = turn_spans[step.index]
        if not 0 <= start < end <= num_tokens:
            raise ValueError(f"turn {step.index} spans tokens {start}..{end} of {num_tokens}")
        rewards[end - 1] += _reward(step, failed_step_reward)
    return rewards

"""OpenRLHF's remote reward-model protocol, translated to and from scoring requests.

OpenRLHF (``--remote_rm_url http://host:port/get_reward``, ``--reward.remote_url`` on newer
releases) posts ``{"query": [...], "prompts": [...], "labels": [...]}`` and reads
``{"rewards": [...], "scores": [...], "extra_logs": {...}}``. A query is the prompt and the
response decoded together *with* special tokens, so the chat template's markup is in it:

* The response is what follows the prompt: ``query[i]`` minus the leading ``prompts[i]``.
  Only special tokens may precede it (a BOS the prompt string lacks); should the decoding
  differ from the prompt string, the two are compared with the markup removed; failing
  that the whole query is scored and ``scribe_prompt_found`` logs 0.
* Markup is removed from both: role headers (ChatML ``<|im_start|>role``, Llama 3
  ``<|start_header_id|>role<|end_header_id|>``, Gemma ``<start_of_turn>role``) and special
  tokens (``<|…|>``, ``<s>``, ``</s>``, ``<eos>``, ``<pad>``, ``<end_of_turn>``). A multi-turn
  response (agent mode, tool output inline) is scored as one completion.
* A label that is a number in [0, 1] (or its string) is the outcome, mixed in as
  0.7 · outcome + 0.3 · process reward; any other label (a reference answer) is ignored.

OpenRLHF cannot take a missing reward (it retries an error response five times, a second
apart, then fails the run), so a sample the service could not score (no step judged, the
judge down, or nothing left of the response) gets its outcome when the label gave one, else
``SCRIBE_REMOTE_RM_FAILURE_REWARD``; ``extra_logs["scribe_failed"]`` is 1 for it. Every
response carries the same ``extra_logs`` keys, one value per sample.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from scribe_client.protocol import RemoteRMRequest, RemoteRMResponse, ScoreRequest, ScoreResponse

_ROLE_HEADER = re.compile(
    r"<\|im_start\|>[ \t]*\w*[ \t]*\n?"
    r"|<\|start_header_id\|>\w*<\|end_header_id\|>\n*"
    r"|<start_of_turn>\w*\n?"
)
_SPECIAL_TOKEN = re.compile(
    r"<\|[^|<>\s]{1,64}\|>|</?s>|<(?:eos|bos|pad|unk)>|<end_of_turn>|<｜[^｜<>]{1,64}｜>"
)
_BLANK_LINES = re.compile(r"\n{3,}")

EXTRA_LOG_KEYS = (
    "scribe_failed",
    "scribe_failed_steps",
    "scribe_outcome_given",
    "scribe_prompt_found",
)


@dataclass(frozen=True)
class Sample:
    """One query, ready to score (`request` is None when nothing is left to score)."""

    request: ScoreRequest | None
    outcome: float | None
    prompt_found: bool


def strip_markup(text: str) -> str:
    """The text without chat-template role headers and special tokens."""
    text = _SPECIAL_TOKEN.sub("\n", _ROLE_HEADER.sub("\n", text))
    return _BLANK_LINES.sub("\n\n", text).strip()


def split_response(query: str, prompt: str) -> tuple[str, bool]:
    """The response part of a query, and whether the prompt was found in front of it."""
    if not prompt:
        return query, False
    start = query.find(prompt)
    if start >= 0 and not strip_markup(query[:start]):  # e.g. a BOS the prompt string lacks
        return query[start + len(prompt) :], True
    plain_query, plain_prompt = strip_markup(query), strip_markup(prompt)
    if plain_prompt and plain_query.startswith(plain_prompt):
        return plain_query[len(plain_prompt) :], True
    return query, False


def label_outcome(label: Any) -> float | None:
    """A label that is a number in [0, 1] is an outcome; anything else is not."""
    if isinstance(label, bool):
        return float(label)
    if isinstance(label, str):
        try:
            label = float(label.strip())
        except ValueError:
            return None
    if isinstance(label, int | float) and math.isfinite(label) and 0.0 <= label <= 1.0:
        return float(label)
    return None


def samples(body: RemoteRMRequest, *, labels_are_outcomes: bool = True) -> list[Sample]:
    """One `Sample` per query, in order."""
    prompts = body.prompts or [""] * len(body.query)
    labels = body.labels or [None] * len(body.query)
    out = []
    for query, prompt, label in zip(body.query, prompts, labels, strict=True):
        response, found = split_response(query, prompt)
        outcome = label_outcome(label) if labels_are_outcomes else None
        try:
            request: ScoreRequest | None = ScoreRequest(
                prompt=strip_markup(prompt) or None,
                completion=strip_markup(response),
                outcome=outcome,
            )
        except ValidationError:
            request = None  # nothing left of the response to judge
        out.append(Sample(request=request, outcome=outcome, prompt_found=found))
    return out


def response(
    scored: Sequence[Sample], results: Sequence[ScoreResponse] | None, *, failure_reward: float
) -> RemoteRMResponse:
    """The OpenRLHF answer; `results` line up with the samples that have a request, and
    None means nothing could be scored (the judge is down)."""
    answered = iter(results or ())
    rewards: list[float] = []
    logs: dict[str, list[float]] = {key: [] for key in EXTRA_LOG_KEYS}
    for sample in scored:
        result = next(answered) if sample.request is not None and results is not None else None
        reward = None if result is None else result.reward
        failed = reward is None
        if reward is None:
            reward = sample.outcome if sample.outcome is not None else failure_reward
        rewards.append(reward)
        failed_steps = 0 if result is None else sum(s.status == "failed" for s in result.steps)
        logs["scribe_failed"].append(float(failed))
        logs["scribe_failed_steps"].append(float(failed_steps))
        logs["scribe_outcome_given"].append(float(sample.outcome is not None))
        logs["scribe_prompt_found"].append(float(sample.prompt_found))
    return RemoteRMResponse(rewards=rewards, scores=list(rewards), extra_logs=logs)

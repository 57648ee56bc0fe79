"""OpenRLHF's remote reward-model protocol, translated to and from scoring requests.

The one copy of the translation, used by the service's ``POST /get_reward`` and by the
reward file ``scribe_adapters/openrlhf.py`` (which needs the light install, hence its place
here). Pure: no I/O.

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
  0.7 · outcome + 0.3 · process reward. Any other label is the reference answer (OpenRLHF's
  ``--label_key`` is usually the dataset's answer): it goes with the request as its
  ``reference``, and the judge checks each step against it (docs/reference.md). A list
  label is a JSON array of acceptable answers. With labels not taken as outcomes
  (``SCRIBE_REMOTE_RM_LABELS_ARE_OUTCOMES=false``) every label is a reference, numbers
  included: the way for math answers such as ``1``.

OpenRLHF cannot take a missing reward (it retries an error response five times, a second
apart, then fails the run), so every sample gets a number: its ``training_reward`` when it
was scored (failed steps counted under the failure policy, ``scribe_client.rewards``), else
the stand-in of that policy (pessimistic: 0.7 · outcome + 0.3 · failure_reward, or
failure_reward without an outcome). Every response carries the same ``extra_logs`` keys, one
number per sample (OpenRLHF turns them into tensors): ``scribe_failed`` (1: no step judged,
or no result), ``scribe_failed_steps``, ``scribe_refused`` (1: over an input limit),
``scribe_outcome_given``, ``scribe_prompt_found``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from .protocol import (
    FailurePolicy,
    RemoteRMRequest,
    RemoteRMResponse,
    ScoreOptions,
    ScoreRequest,
    ScoreResponse,
)
from .reference import reference_text
from .rewards import trainer_reward

__all__ = [
    "EXTRA_LOG_KEYS",
    "Sample",
    "Unscored",
    "label_outcome",
    "response",
    "samples",
    "split_response",
    "strip_markup",
    "unscored_response",
]

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
    "scribe_refused",
)


@dataclass(frozen=True)
class Sample:
    """One query, ready to score (`request` is None when nothing is left to score)."""

    request: ScoreRequest | None
    outcome: float | None
    prompt_found: bool


@dataclass(frozen=True)
class Unscored:
    """Why a sample has no result: nothing left to score, the service or judge unavailable,
    or the sample over an input limit."""

    reason: Literal["empty", "unavailable", "refused"]


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


def samples(
    body: RemoteRMRequest,
    *,
    labels_are_outcomes: bool = True,
    labels_are_references: bool = True,
    options: ScoreOptions | None = None,
) -> list[Sample]:
    """One `Sample` per query, in order; `options` go with every request. A label that is
    not the outcome is the request's reference, unless `labels_are_references` is False."""
    prompts = body.prompts or [""] * len(body.query)
    labels = body.labels or [None] * len(body.query)
    out = []
    for query, prompt, label in zip(body.query, prompts, labels, strict=True):
        response, found = split_response(query, prompt)
        outcome = label_outcome(label) if labels_are_outcomes else None
        use_label = labels_are_references and outcome is None
        try:
            request: ScoreRequest | None = ScoreRequest(
                prompt=strip_markup(prompt) or None,
                completion=strip_markup(response),
                outcome=outcome,
                reference=reference_text(label) if use_label else None,
                options=options or ScoreOptions(),
            )
        except ValidationError:
            request = None  # nothing left of the response to judge
        out.append(Sample(request=request, outcome=outcome, prompt_found=found))
    return out


def response(
    scored: Sequence[Sample],
    results: Sequence[ScoreResponse | Unscored],
    *,
    policy: FailurePolicy,
    failure_reward: float,
) -> RemoteRMResponse:
    """The OpenRLHF answer; `results` line up with `scored`, one per sample."""
    rewards: list[float] = []
    logs: dict[str, list[float]] = {key: [] for key in EXTRA_LOG_KEYS}
    for sample, result in zip(scored, results, strict=True):
        scored_result = result if isinstance(result, ScoreResponse) else None
        options = sample.request.options if sample.request is not None else ScoreOptions()
        rewards.append(
            trainer_reward(
                scored_result,
                sample.outcome,
                options,
                policy=policy,
                failure_reward=failure_reward,
            )
        )
        steps = [] if scored_result is None else scored_result.steps
        failed = scored_result is None or all(step.status == "failed" for step in steps)
        logs["scribe_failed"].append(float(failed))
        logs["scribe_failed_steps"].append(float(sum(step.status == "failed" for step in steps)))
        logs["scribe_outcome_given"].append(float(sample.outcome is not None))
        logs["scribe_prompt_found"].append(float(sample.prompt_found))
        logs["scribe_refused"].append(float(result == Unscored("refused")))
    return RemoteRMResponse(rewards=rewards, scores=list(rewards), extra_logs=logs)


def unscored_response(
    body: RemoteRMRequest,
    *,
    policy: FailurePolicy,
    failure_reward: float,
    labels_are_outcomes: bool = True,
) -> RemoteRMResponse:
    """The answer when the service could not be asked at all: every sample's stand-in."""
    scored = samples(body, labels_are_outcomes=labels_are_outcomes)
    unavailable = [Unscored("unavailable")] * len(scored)
    return response(scored, unavailable, policy=policy, failure_reward=failure_reward)

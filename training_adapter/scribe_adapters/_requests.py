"""Trainer rollouts → `ScoreRequest`s: the translation every adapter shares.

Trainers hand over text or chat messages in their own dialects. TRL's tool runs, for
example, carry tool calls without ids (`{"type": "function", "function": {"name": …,
"arguments": {…}}}`) and tool results without a `tool_call_id` (`{"role": "tool", "name": …}`);
the wire schema wants OpenAI's shape, so ids are assigned here and each tool result answers
the oldest call still open, which is the order trainers execute them in.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from scribe_client.protocol import ScoreOptions, ScoreRequest
from scribe_client.rewards import (
    DEFAULT_FAILURE_POLICY,
    DEFAULT_FAILURE_REWARD,
    ENV_FAILURE_POLICY,
    ENV_FAILURE_REWARD,
    FailureRule,
    check_failure_policy,
)

Message = Mapping[str, Any]
Conversation = Sequence[Message]


def _text_content(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    # Multi-part content: the judge reads text; images and other parts are left out.
    parts = [
        part["text"]
        for part in content
        if isinstance(part, Mapping) and part.get("type") == "text" and "text" in part
    ]
    return "\n".join(parts)


def normalise_messages(messages: Conversation) -> list[dict[str, Any]]:
    """Chat messages in the OpenAI shape the service reads, ids filled in where missing."""
    out: list[dict[str, Any]] = []
    open_calls: list[str] = []
    for position, message in enumerate(messages):
        role = message.get("role")
        item: dict[str, Any] = {"role": role, "content": _text_content(message.get("content"))}
        if role == "assistant" and message.get("tool_calls"):
            calls = []
            for number, call in enumerate(message["tool_calls"]):
                call_id = call.get("id") or f"call_{position}_{number}"
                calls.append({"id": call_id, "type": "function", "function": call["function"]})
                open_calls.append(call_id)
            item["tool_calls"] = calls
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if call_id is None:
                call_id = open_calls.pop(0) if open_calls else f"call_{position}"
            elif call_id in open_calls:
                open_calls.remove(call_id)
            item["tool_call_id"] = call_id
            if message.get("name") is not None:
                item["name"] = message["name"]
        out.append(item)
    return out


def check_outcome(value: Any) -> float | None:
    """An outcome in [0, 1], or None when there is none; anything else is a caller's bug."""
    if value is None:
        return None
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, int | float):
        raise TypeError(f"an outcome must be a number in [0, 1] or None, not {value!r}")
    outcome = float(value)
    if math.isnan(outcome):
        return None
    if not 0.0 <= outcome <= 1.0:
        raise ValueError(f"an outcome must lie in [0, 1], got {outcome}")
    return outcome


def trajectory_request(
    prompt: str | Conversation | None,
    completion: str | Conversation,
    *,
    outcome: float | None = None,
    options: ScoreOptions | None = None,
    reference: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> ScoreRequest:
    """One rollout as a request: text becomes `prompt` + `completion`, chat becomes `messages`;
    `reference` is the known answer (`scribe_client.reference.reference_text` of the ground
    truth), which the judge checks each step against; `metadata` (e.g. the trainer's
    `global_step`) is echoed and logged by the service.

    Raises pydantic's ``ValidationError`` for a rollout the service would refuse (an empty
    completion, no assistant message), so the caller can fail that one sample alone.
    """
    body: dict[str, Any] = {"outcome": outcome, "reference": reference, "metadata": metadata}
    if options is not None:
        body["options"] = options
    if isinstance(completion, str) and (prompt is None or isinstance(prompt, str)):
        body["completion"] = completion
        body["prompt"] = prompt or None
    else:
        history = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        turns = (
            [{"role": "assistant", "content": completion}]
            if isinstance(completion, str)
            else completion
        )
        body["messages"] = normalise_messages([*(history or []), *turns])
    return ScoreRequest.model_validate(body)


def failure_rule(
    policy: str | None = None, reward: float | None = None, options: ScoreOptions | None = None
) -> FailureRule:
    """The failure policy and reward an adapter applies: the argument, else the field of
    `options`, else ``SCRIBE_FAILURE_POLICY`` / ``SCRIBE_FAILURE_REWARD``, else the defaults
    (pessimistic, 0.0). A failure reward above 0 is refused: it would pay for failures."""
    if policy is None:
        policy = (options and options.failure_policy) or os.environ.get(ENV_FAILURE_POLICY)
    if reward is None:
        reward = None if options is None else options.failure_reward
    if reward is None:
        reward = float(os.environ.get(ENV_FAILURE_REWARD) or DEFAULT_FAILURE_REWARD)
    return FailureRule(check_failure_policy(policy or DEFAULT_FAILURE_POLICY), reward)


def with_rule(options: ScoreOptions | None, rule: FailureRule) -> ScoreOptions:
    """`options` carrying `rule`, so the service's `training_reward` and the adapter's own
    stand-ins follow the same policy."""
    update = {"failure_policy": rule.policy, "failure_reward": rule.reward}
    return (options or ScoreOptions()).model_copy(update=update)

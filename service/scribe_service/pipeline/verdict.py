"""What a judge must answer and when its answer is trusted: the verdict schema and its checks.

A verdict is trusted only after validation: an integer score 0-3, failure modes from the
prototype's own list and a text rationale. Neither engine
enforces every schema constraint, so validation is not optional; a reply that fails it is
`JudgeInvalidOutput`, never a score. In logprob mode the verdict is read from the score
token's alternatives instead (`logprob.py`). Pure functions only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from scribe_service.library import Prototype
from scribe_service.pipeline.backends.base import Completion
from scribe_service.pipeline.judge_errors import (
    JudgeInvalidOutput,
    JudgeLowScoreMass,
    JudgeNoLogprobs,
)
from scribe_service.pipeline.logprob import score_distribution

MAX_FAILURE_MODES = 2


@dataclass(frozen=True)
class Verdict:
    score: int
    failure_modes: tuple[str, ...] = ()
    rationale: str | None = None
    expected_score: float | None = None
    """Logprob mode: Σ s·p(s) over the scores 0-3."""
    score_mass: float | None = None
    """Logprob mode: the probability that fell on the four score tokens."""
    served_by: str | None = None
    """The judge server that answered (its base URL), when the judge is a server."""


def max_failure_modes(prototype: Prototype) -> int:
    return min(MAX_FAILURE_MODES, len(prototype.failure_modes))


def verdict_schema(prototype: Prototype) -> dict[str, Any]:
    """The JSON schema a reply must satisfy; engines may enforce it only in part."""
    return {
        "type": "object",
        # Reason first, then verdict: the order the grammar makes the model write them in.
        "properties": {
            "rationale": {"type": "string", "maxLength": 240},
            "failure_modes": {
                "type": "array",
                "items": {"type": "string", "enum": list(prototype.failure_mode_ids())},
                # Small judges otherwise enumerate every mode on the menu.
                "maxItems": max_failure_modes(prototype),
            },
            "score": {"type": "integer", "enum": [0, 1, 2, 3]},
        },
        "required": ["rationale", "failure_modes", "score"],
        "additionalProperties": False,
    }


class _Reply(BaseModel):
    """The fields of a reply, checked against the prototype passed as validation context.

    Strict: "3", 2.0 and true are not scores. The rationale's length is not checked: an
    engine that ignores maxLength still gave a usable verdict."""

    model_config = ConfigDict(strict=True, extra="ignore")

    score: int = Field(ge=0, le=3)
    failure_modes: list[str] = Field(default_factory=list)
    rationale: str = ""

    @field_validator("failure_modes")
    @classmethod
    def _from_the_prototype(cls, modes: list[str], info: ValidationInfo) -> list[str]:
        prototype: Prototype = (info.context or {})["prototype"]
        unknown = sorted(set(modes) - set(prototype.failure_mode_ids()))
        if unknown:
            raise ValueError(f"failure modes not in prototype {prototype.id!r}: {unknown}")
        # The schema asks for at most `MAX_FAILURE_MODES`, but an engine that ignores maxItems
        # still gave a usable verdict: every extra mode can only lower the score through its cap.
        return list(dict.fromkeys(modes))


_FIELD_PROBLEMS = {
    "score": "score must be an integer 0-3",
    "failure_modes": "failure_modes must be a list of the prototype's failure mode ids",
    "rationale": "rationale must be a string",
}


def _problem(exc: ValidationError) -> str:
    """The first problem, worded for a person reading a failed step."""
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else ""
    if error["type"] == "value_error":  # our own check on failure modes: already worded
        return str(error["msg"]).removeprefix("Value error, ")
    intro = _FIELD_PROBLEMS.get(field, f"{field}: invalid")
    return f"{intro}, got {error['input']!r:.100} ({error['msg']})"


_FENCED_JSON = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.DOTALL)
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def _first_object(text: str) -> dict[str, Any]:
    text = _THINK_BLOCK.sub("", text).strip()
    fenced = _FENCED_JSON.search(text)
    if fenced:
        text = fenced.group(1)
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and "score" in value:
            return value
    raise JudgeInvalidOutput(f"no JSON verdict in the judge's reply: {text[:200]!r}")


def parse_verdict(raw: str, prototype: Prototype) -> Verdict:
    """Validate a reply against `prototype`; the score is capped by the failure modes found."""
    try:
        reply = _Reply.model_validate(_first_object(raw), context={"prototype": prototype})
    except ValidationError as exc:
        raise JudgeInvalidOutput(_problem(exc)) from exc
    caps = {mode.id: mode.max_score for mode in prototype.failure_modes}
    return Verdict(
        score=min([reply.score, *(caps[m] for m in reply.failure_modes)]),
        failure_modes=tuple(reply.failure_modes),
        rationale=reply.rationale.strip(),
    )


def logprob_verdict(completion: Completion, min_score_mass: float) -> Verdict:
    """A verdict from one score token's alternatives; refused when they say too little."""
    if not completion.top_logprobs:
        raise JudgeNoLogprobs("the judge returned no logprobs for its score token")
    distribution = score_distribution(completion.top_logprobs)
    if distribution.mass < min_score_mass:
        raise JudgeLowScoreMass(
            f"only {distribution.mass:.3f} of the judge's probability fell on the score tokens "
            f"0-3 (minimum {min_score_mass:g}); it would have answered {completion.text!r:.40}"
        )
    return Verdict(
        score=distribution.argmax,
        expected_score=distribution.expected,
        score_mass=round(distribution.mass, 4),
    )

"""Stage 3: one cluster of similar steps → one skill prototype, written by the judge LLM.

The call goes through the service's own judge backend (`complete(messages, schema,
sampling)`), so a build runs on whatever judges: a vLLM or llama.cpp server (json_schema or
json_object dialect) or the embedded llama.cpp model, which enforces the schema by grammar.
The schema is derived from the library's `Prototype` model, and every reply is validated by
that model before it counts: an engine may enforce a schema only in part, and a prototype
written half-valid would break the library that loads it.

The model writes the rubric (name, domain, usage context, reasoning pattern, levels 0-3,
failure modes); the builder owns everything else: the id, the exemplars (the cluster's own
subgoals) and `fallback = false`. A reply that fails validation is first repaired where the
repair cannot change its meaning (an id written "Wrong Query" becomes `wrong_query`), then
retried with the errors shown to the model, with sampling (a greedy retry repeats itself),
up to `max_attempts`. A cluster that never yields a valid prototype is a `DistilFailure`,
reported, never written.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import ValidationError

from scribe_service.library import LEVELS, Prototype
from scribe_service.library_build.structured import ReplyInvalid, ask_until_valid
from scribe_service.pipeline.backends.base import JudgeBackend, Messages, Sampling

DEFAULT_MAX_ATTEMPTS = 4
MAX_FAILURE_MODES = 4
SHOWN_PER_KIND = 4
"""Members shown per kind (went well, went badly, unlabelled): enough to see the skill, few
enough for a small judge's context."""
STEP_CHARS = 280


@dataclass(frozen=True)
class DraftLimits:
    """Upper bounds on what the model writes, enforced by its grammar: a small model otherwise
    fills a string until max_tokens, and a cut-off reply is no prototype at all. Each bound
    also costs grammar work per token, so a plumbing test uses `COMPACT`."""

    name: int = 60
    usage_context: int = 300
    reasoning_pattern: int = 700
    level: int = 200
    id: int = 40
    description: int = 160


COMPACT = DraftLimits(usage_context=120, reasoning_pattern=160, level=80, description=80)

_OWNED_BY_BUILDER = ("id", "exemplars", "fallback", "checks", "requires")
_NOT_ID = re.compile(r"[^a-z0-9]+")


class DraftInvalid(ReplyInvalid):
    """A reply that is not a valid prototype; the message names the field."""


@dataclass(frozen=True)
class Member:
    """One step of the cluster as the model is shown it."""

    subgoal: str
    content: str
    label: int | None = None


@dataclass(frozen=True)
class ClusterBrief:
    key: str
    """A provisional prototype id (`cluster_3`); the built prototype is named after itself."""
    members: tuple[Member, ...]
    exemplars: tuple[str, ...]
    steps: int
    trajectories: int


@dataclass(frozen=True)
class Distilled:
    key: str
    prototype: Prototype
    attempts: int
    leaks: tuple[str, ...] = ()
    """Instance details the rubric seems to copy from the members (`instance_leaks`)."""


@dataclass(frozen=True)
class DistilFailure:
    key: str
    attempts: int
    errors: tuple[str, ...]
    """Why each attempt failed, in order."""


# --- the schema ------------------------------------------------------------------------------


def _bounded(field: dict[str, Any], max_chars: int | None = None) -> dict[str, Any]:
    out = {k: v for k, v in field.items() if k not in ("title", "description", "default")}
    if max_chars is not None and out.get("pattern", "").endswith("*$"):
        # Grammars compile the pattern and ignore maxLength beside it: bound the pattern.
        out["pattern"] = out["pattern"][:-2] + f"{{0,{max_chars - 1}}}$"
    elif max_chars is not None and out.get("type") == "string" and "enum" not in out:
        out["maxLength"] = max_chars
    if out.get("type") == "integer" and "minimum" in out and "maximum" in out:
        # As an enum: every engine's grammar compiles one; integer bounds are not universal.
        out["enum"] = list(range(out.pop("minimum"), out.pop("maximum") + 1))
    return out


def draft_schema(limits: DraftLimits = DraftLimits()) -> dict[str, Any]:
    """The JSON schema of the part of a `Prototype` the model writes, derived from the model's
    own schema (its patterns, minimum lengths, enums and bounds), with upper bounds added."""
    full = Prototype.model_json_schema()
    fields, mode = full["properties"], full["$defs"]["FailureMode"]
    bounds = asdict(limits)
    level = {"type": "string", "minLength": 10, "maxLength": limits.level}
    failure_mode = {
        "type": "object",
        "properties": {
            name: _bounded(spec, bounds.get(name)) for name, spec in mode["properties"].items()
        },
        "required": list(mode["required"]),
        "additionalProperties": False,
    }
    return {
        "type": "object",
        # The order the grammar makes the model write them in: what the skill is, then how
        # to grade it.
        "properties": {
            "name": _bounded(fields["name"], limits.name),
            "domain": _bounded(fields["domain"]),
            "usage_context": _bounded(fields["usage_context"], limits.usage_context),
            "reasoning_pattern": _bounded(fields["reasoning_pattern"], limits.reasoning_pattern),
            "levels": {
                "type": "object",
                "properties": {key: dict(level) for key in reversed(LEVELS)},
                "required": list(reversed(LEVELS)),
                "additionalProperties": False,
            },
            "failure_modes": {
                "type": "array",
                "items": failure_mode,
                "minItems": fields["failure_modes"].get("minItems", 1),
                "maxItems": MAX_FAILURE_MODES,
            },
        },
        "required": [
            "name",
            "domain",
            "usage_context",
            "reasoning_pattern",
            "levels",
            "failure_modes",
        ],
        "additionalProperties": False,
    }


# --- the prompt ------------------------------------------------------------------------------

SYSTEM_PROMPT = """You write one skill prototype for a library of grading rubrics. A process \
reward model uses it to grade single steps of AI agents and solvers: every step whose subgoal \
is like the ones you are shown will be graded with your rubric, in other tasks with other \
numbers and answers.

Write a JSON object with these fields:
- name: a short name for the skill (3-6 words).
- domain: one of math, tool_use, search_qa, general.
- usage_context: when a step needs this skill.
- reasoning_pattern: what correct execution of the skill looks like, as a few checkable points.
- levels: what a step scoring 3 (fully correct), 2 (correct with a minor flaw), 1 (a real \
error) and 0 (wrong or useless) looks like.
- failure_modes: 1 to 4 typical mistakes, each with a snake_case id, a description and \
max_score (0, 1 or 2): the highest score a step showing that mistake may get.

Describe the skill in general terms. Never mention the particular numbers, names, entities or \
answers of the examples: the rubric must fit every instance of the skill."""


def _clip(text: str, limit: int = STEP_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _shown(members: Sequence[Member], label: int | None) -> list[Member]:
    return [m for m in members if m.label == label][:SHOWN_PER_KIND]


def _section(title: str, members: Sequence[Member]) -> str:
    lines = [title]
    for member in members:
        lines.append(f"- Subgoal: {_clip(member.subgoal, 200)}")
        if member.content.strip() and _clip(member.content) != _clip(member.subgoal):
            lines.append(f"  Step: {_clip(member.content)}")
    return "\n".join(lines)


def distil_messages(brief: ClusterBrief) -> Messages:
    """The prompt for one cluster: its members, those people judged correct apart from those
    they judged wrong when the data is labelled. Pure."""
    good, bad = _shown(brief.members, 1), _shown(brief.members, -1)
    other = [m for m in brief.members if m.label not in (1, -1)][:SHOWN_PER_KIND]
    parts = [
        f"This skill covers {brief.steps} steps from {brief.trajectories} trajectories. "
        "Some of them:"
    ]
    if good:
        parts.append(_section("Steps that people judged correct:", good))
    if bad:
        parts.append(_section("Steps that people judged wrong (learn the failure modes):", bad))
    if other or not (good or bad):
        parts.append(_section("Steps:" if not (good or bad) else "Other steps:", other))
    parts.append("Write the skill prototype for these steps as one JSON object.")
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "\n\n".join(parts)},
    ]


def correction(problem: str) -> str:
    """What the model is told after an invalid prototype."""
    return (
        f"That JSON is not a valid prototype: {problem}. "
        "Write the whole JSON object again, corrected."
    )


# --- checking a reply --------------------------------------------------------------------------


def parse_draft(text: str) -> dict[str, Any]:
    """The first JSON object in a reply (a fenced block or surrounding prose is tolerated)."""
    # Not strict: llama.cpp's grammars let a raw line break into a string, which means no harm.
    decoder = json.JSONDecoder(strict=False)
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise DraftInvalid(f"no JSON object in the reply: {text[:160]!r}")


def slug(text: str) -> str:
    """`text` as an id (`^[a-z][a-z0-9_]*$`), or "" when it has no letters or digits."""
    out = _NOT_ID.sub("_", text.lower()).strip("_")
    return f"x_{out}" if out and not out[0].isalpha() else out


def _level_key(key: object) -> object:
    digits = re.findall(r"\d", str(key))
    return digits[0] if len(digits) == 1 else key


def repair_draft(raw: dict[str, Any]) -> dict[str, Any]:
    """Mechanical repairs that cannot change what a reply means: text stripped, ids and level
    keys normalised, a digit string read as its digit, repeated mode ids numbered, and the
    fields the builder owns removed. Anything else is left for validation to refuse."""
    draft = copy.deepcopy(raw)
    for field in _OWNED_BY_BUILDER:
        draft.pop(field, None)
    for field in ("name", "usage_context", "reasoning_pattern"):
        if isinstance(draft.get(field), str):
            draft[field] = draft[field].strip()
    if isinstance(draft.get("domain"), str):
        draft["domain"] = draft["domain"].strip().lower()
    levels = draft.get("levels")
    if isinstance(levels, dict):
        draft["levels"] = {
            str(_level_key(k)): v.strip() if isinstance(v, str) else v for k, v in levels.items()
        }
    modes = draft.get("failure_modes")
    if isinstance(modes, list):
        seen: dict[str, int] = {}
        for mode in modes:
            if not isinstance(mode, dict):
                continue
            if isinstance(mode.get("id"), str) and (ident := slug(mode["id"])):
                seen[ident] = seen.get(ident, 0) + 1
                mode["id"] = ident if seen[ident] == 1 else f"{ident}_{seen[ident]}"
            if isinstance(mode.get("description"), str):
                mode["description"] = mode["description"].strip()
            score = mode.get("max_score")
            if isinstance(score, str) and score.strip().isdigit():
                mode["max_score"] = int(score.strip())
    return draft


def _describe(exc: ValidationError) -> str:
    problems = []
    for item in exc.errors()[:4]:
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        problems.append(f"{where}: {item['msg']}")
    return "; ".join(problems)


def check_draft(raw: dict[str, Any], brief: ClusterBrief) -> Prototype:
    """The prototype a (repaired) reply describes, validated by the library's own model."""
    data = {**repair_draft(raw), "id": brief.key, "exemplars": list(brief.exemplars)}
    try:
        return Prototype.model_validate(data)
    except ValidationError as exc:
        raise DraftInvalid(_describe(exc)) from None


_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")
_SENTENCE_START = re.compile(r"(?:^|[.!?:\n]\s*|^\s*-\s*|\(\s*)$")


def _proper_nouns(text: str) -> set[str]:
    """Capitalised words that do not start a sentence, list item or parenthesis."""
    found = set()
    for match in _WORD.finditer(text):
        word = match.group()
        if word[0].isupper() and not _SENTENCE_START.search(text[: match.start()]):
            found.add(word)
    return found


def instance_leaks(prototype: Prototype, brief: ClusterBrief) -> tuple[str, ...]:
    """Numbers of two or more digits and mid-sentence capitalised words that the rubric shares
    with the members it was shown: the particular names, numbers and answers a prototype must
    abstract away. A warning for the reviewer, not a refusal: a tool's or a language's name
    may belong in a rubric, and no rule tells it from an instance's entity."""
    rubric = "\n".join(
        [
            prototype.name,
            prototype.usage_context,
            prototype.reasoning_pattern,
            *prototype.levels.values(),
            *(mode.description for mode in prototype.failure_modes),
        ]
    )
    shown = "\n".join(f"{m.subgoal}\n{m.content}" for m in brief.members)
    numbers = {n for n in _NUMBER.findall(rubric) if len(n.replace(".", "")) >= 2}
    numbers &= set(_NUMBER.findall(shown))
    names = _proper_nouns(rubric) & set(_WORD.findall(shown))
    return tuple(sorted(numbers | names))


# --- the call ------------------------------------------------------------------------------


async def distil(
    backend: JudgeBackend,
    brief: ClusterBrief,
    *,
    sampling: Sampling,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout: float | None = None,
    limits: DraftLimits = DraftLimits(),
) -> Distilled | DistilFailure:
    """One cluster's prototype, or why none could be had in `max_attempts` calls.

    A judge error that a retry cannot cure (the prompt does not fit, a 4xx) ends the cluster
    at once; invalid output and transient errors use up an attempt each."""
    asked = await ask_until_valid(
        backend,
        distil_messages(brief),
        draft_schema(limits),
        sampling,
        check=lambda text: check_draft(parse_draft(text), brief),
        correction=correction,
        max_attempts=max_attempts,
        timeout=timeout,
    )
    if asked.value is None:
        return DistilFailure(brief.key, asked.calls, asked.errors)
    return Distilled(brief.key, asked.value, asked.calls, instance_leaks(asked.value, brief))

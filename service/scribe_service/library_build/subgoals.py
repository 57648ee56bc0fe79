"""Stage 1, optional (`--llm-subgoals`): the judge LLM names the skill of a step whose subgoal
the segmenter had to derive.

A derived subgoal is the step's own words ("I need the director. Call search with query:
Alien 1979 director"): instance-heavy, so two steps of one skill can sit far apart and steps
of different skills close together. The model is asked for one short mid-level intent ("Look
up a fact about a work named in the question") and the build clusters and distils on that.
Steps with a marker (or a given subgoal) keep it: it is already the policy's statement of
intent, and the service routes it as written.

The call goes through the service's judge backend, as distillation does (json_schema or
json_object dialect, or the embedded model's grammar), with the schema {"subgoal": string}
bounded in length. A reply is checked (a JSON object, a subgoal of a few words, within the
bound, no multi-digit number copied from the step: that is an instance, not a skill); an
invalid reply is retried with the problem shown and with sampling, up to `max_attempts`.
A step that never gets a valid subgoal keeps its derived one and is counted as kept, with the
reason, for the build report: never silently.

The service's own subgoal stays on every step (`BuildStep.subgoal`); the model's goes beside
it (`BuildStep.llm_subgoal`). Which of the two each later stage uses is the build's decision
(`build.py`): the serving router only ever sees the service's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from scribe_service.library_build.decompose import BuildStep
from scribe_service.library_build.distil import DraftInvalid, parse_draft
from scribe_service.library_build.structured import ReplyInvalid, ask_until_valid
from scribe_service.pipeline.backends.base import JudgeBackend, Messages, Sampling

DEFAULT_MAX_CHARS = 100
MIN_CHARS = 8
MIN_WORDS = 3
TASK_CHARS = 300
STEP_CHARS = 700
FAILURES_SHOWN = 5
SUBGOAL_MAX_TOKENS = 80
"""Enough for {"subgoal": "…"} at `DEFAULT_MAX_CHARS`; a longer reply is one that rambles."""

SYSTEM_PROMPT = """You name the skill a single step of an AI agent or solver is exercising. \
Write its subgoal: one short imperative phrase (3 to 12 words) saying what kind of thing the \
step sets out to do, in words that fit every other task where the same skill is needed.

Describe the intent, not the instance: never copy the particular numbers, names, entities, \
search queries or answers of the step. For example, write "Find the birth year of a person \
named in the question", not "Search Obama birth year"; write "Solve a linear equation for the \
unknown", not "Solve 3x + 5 = 20".

Answer with a JSON object: {"subgoal": "..."}."""

_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_WORD = re.compile(r"[^\W\d_]{2,}")


@dataclass(frozen=True)
class SubgoalCounts:
    """What `--llm-subgoals` did, for the build report."""

    asked: int
    """Steps with a derived subgoal, each one the model was asked about."""
    rewritten: int
    kept: int
    """Steps that kept their derived subgoal: no valid reply in `max_attempts` calls."""
    calls: int
    """Judge calls made (identical steps are asked once)."""
    failures: tuple[str, ...] = ()
    """Why the first few kept steps got no subgoal."""

    def as_report(self) -> dict[str, Any]:
        return {
            "asked": self.asked,
            "rewritten": self.rewritten,
            "kept_on_failure": self.kept,
            "calls": self.calls,
            "failures": list(self.failures),
        }


@dataclass(frozen=True)
class Rewritten:
    steps: list[BuildStep]
    counts: SubgoalCounts


class SubgoalInvalid(ReplyInvalid):
    """A reply that is not a usable subgoal; the message says why."""


def subgoal_schema(max_chars: int = DEFAULT_MAX_CHARS) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "subgoal": {"type": "string", "minLength": MIN_CHARS, "maxLength": max_chars}
        },
        "required": ["subgoal"],
        "additionalProperties": False,
    }


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def subgoal_messages(step: BuildStep) -> Messages:
    """The prompt for one step: the task for context, then the step (its prose and tool
    calls, without the tool's answer: the intent is what the step set out to do). Pure."""
    parts = []
    if step.task.strip():
        parts.append(f"The task: {_clip(step.task, TASK_CHARS)}")
    parts.append(f"The step:\n{_clip(step.step.content, STEP_CHARS)}")
    parts.append('Write the subgoal of this step as {"subgoal": "..."}.')
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "\n\n".join(parts)},
    ]


def check_subgoal(text: str, step: BuildStep, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """The subgoal a reply holds, whitespace collapsed, or `SubgoalInvalid`."""
    try:
        raw = parse_draft(text)
    except DraftInvalid as exc:
        raise SubgoalInvalid(str(exc)) from None
    value = raw.get("subgoal")
    if not isinstance(value, str):
        raise SubgoalInvalid('no "subgoal" string in the object')
    subgoal = " ".join(value.split()).strip(" .")
    if len(subgoal) < MIN_CHARS or len(_WORD.findall(subgoal)) < MIN_WORDS:
        raise SubgoalInvalid(f"subgoal {subgoal!r} is too short: write a phrase of 3-12 words")
    if len(subgoal) > max_chars:
        raise SubgoalInvalid(f"subgoal is {len(subgoal)} characters, more than {max_chars}")
    # A number of two or more digits that the step also holds is the instance's, not the
    # skill's; a single digit ("two numbers", "step 1") is too common to tell apart.
    shown = set(_NUMBER.findall(f"{step.task}\n{step.step.content}"))
    copied = sorted(n for n in set(_NUMBER.findall(subgoal)) & shown if len(n) >= 2)
    if copied:
        raise SubgoalInvalid(
            f"subgoal copies the step's numbers ({', '.join(copied)}): describe the skill"
        )
    return subgoal


def correction(problem: str) -> str:
    """What the model is told after an unusable subgoal."""
    return (
        f"That is not a usable subgoal: {problem}. "
        'Write the JSON object {"subgoal": "..."} again, corrected.'
    )


async def ask_subgoal(
    backend: JudgeBackend,
    step: BuildStep,
    *,
    sampling: Sampling,
    max_attempts: int,
    timeout: float | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> tuple[str | None, int, list[str]]:
    """(the model's subgoal or None, calls made, why each failed call failed). A judge error
    a retry cannot cure ends the step at once, as in `distil`."""
    asked = await ask_until_valid(
        backend,
        subgoal_messages(step),
        subgoal_schema(max_chars),
        sampling,
        check=lambda text: check_subgoal(text, step, max_chars),
        correction=correction,
        max_attempts=max_attempts,
        timeout=timeout,
        keep_reply=1000,
    )
    return asked.value, asked.calls, list(asked.errors)


async def write_subgoals(
    backend: JudgeBackend,
    steps: Sequence[BuildStep],
    *,
    sampling: Sampling,
    max_attempts: int,
    timeout: float | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> Rewritten:
    """`steps` with `llm_subgoal` set on every step whose subgoal was derived and got a valid
    reply; marker and given subgoals are left as they are. One call per distinct prompt (a
    repeated step is asked once), in order, so a build's calls are reproducible."""
    answers: dict[str, tuple[str | None, list[str]]] = {}
    out: list[BuildStep] = []
    asked = rewritten = kept = calls = 0
    failures: list[str] = []
    for step in steps:
        if step.step.subgoal_source != "derived":
            out.append(step)
            continue
        asked += 1
        key = subgoal_messages(step)[1]["content"]
        if key not in answers:
            subgoal, made, errors = await ask_subgoal(
                backend,
                step,
                sampling=sampling,
                max_attempts=max_attempts,
                timeout=timeout,
                max_chars=max_chars,
            )
            calls += made
            answers[key] = (subgoal, errors)
        subgoal, errors = answers[key]
        if subgoal is None:
            kept += 1
            if len(failures) < FAILURES_SHOWN:
                failures.append(f"{step.record_id} step {step.step.index}: {errors[-1]}")
            out.append(step)
        else:
            rewritten += 1
            out.append(replace(step, llm_subgoal=subgoal))
    return Rewritten(out, SubgoalCounts(asked, rewritten, kept, calls, tuple(failures)))

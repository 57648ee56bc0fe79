"""The four arms compared on the same steps, judge, sampling and validation:

* `scribe`: the service as it is (the routed prototype's rubric);
* `generic`: the library's fallback rubric for every step (routing ablated);
* `rar`: "Rubrics as Rewards": the same judge writes one rubric per task (criteria, 0-3 level
  descriptors, pitfalls that cap the score), cached per task, and every step of that task is
  judged against it with the service's own judge templates, so only the rubric differs;
* `direct`: no rubric: a hand-written "rate this step 0-3" prompt (templates `direct_*.txt`)
  with the same task, history, step and observation, and the same output format.

Each arm has a `+ref` twin (`scribe+ref`, …) whose prompt also shows the record's reference
answer, as the service shows a request's `reference`; the plain arms never see it. A `+ref`
judgment of a record without a reference fails (`no_reference`) instead of quietly being
made without one, so a `+ref` number always means "with the reference".

`scribe` and `generic` also run their prototype's deterministic checks and cap the verdict
with `checks.apply_findings`, as the service does, so `scribe eval` measures what the service
returns; `rar` and `direct` have no prototype to declare checks, and get none.

Every prompt is rendered by the service's `render_messages` (same fencing and elision), every
verdict goes through `Judge.verdict` (same retries, dialect, logprob mode and validation).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol, cast

from pydantic import ValidationError

from scribe_service.library import Library, Prototype
from scribe_service.pipeline import aggregate
from scribe_service.pipeline.checks import (
    CheckFinding,
    apply_findings,
    check_input,
    run_checks_isolated,
    step_checks,
)
from scribe_service.pipeline.judge import (
    Judge,
    JudgeError,
    JudgeInvalidOutput,
    JudgeMode,
    Sampling,
)
from scribe_service.pipeline.render import fence, render_messages, substitute
from scribe_service.pipeline.retrieve import Route
from scribe_service.pipeline.segment import Segmented, Step
from scribe_service.settings import Settings

log = logging.getLogger(__name__)

BaseArm = Literal["scribe", "generic", "rar", "direct"]
ArmName = Literal[
    "scribe", "generic", "rar", "direct", "scribe+ref", "generic+ref", "rar+ref", "direct+ref"
]
ARMS: tuple[ArmName, ...] = (
    "scribe", "generic", "rar", "direct", "scribe+ref", "generic+ref", "rar+ref", "direct+ref"
)  # fmt: skip
REFERENCE_SUFFIX = "+ref"
CHECKED_ARMS = ("scribe", "generic")
BASELINE_TEMPLATES = (
    "direct_system.txt",
    "direct_user.txt",
    "direct_system_logprob.txt",
    "direct_user_logprob.txt",
    "rar_rubric_system.txt",
    "rar_rubric_user.txt",
)
RUBRIC_MAX_TOKENS = 700
RUBRIC_ATTEMPTS = 3

# `direct` has no rubric. Its prompt names one failure mode, "incorrect" (capping at 1, as its
# scale says): the verdict schema needs a non-empty list of ids (an empty enum breaks
# llama.cpp's grammar), and it keeps the output format and validation the other arms get.
# The level texts repeat the prompt's scale; `direct_*.txt` never shows a rubric.
DIRECT = Prototype.model_validate(
    {
        "id": "direct",
        "name": "Direct rating",
        "domain": "general",
        "fallback": True,  # never routed to, so it needs no exemplars
        "usage_context": "Any step: the direct baseline judges without a rubric.",
        "reasoning_pattern": "No rubric: the judge rates the step 0-3 from its own reading.",
        "levels": {
            "3": "correct and clearly useful",
            "2": "correct but of little use or with a minor slip",
            "1": "a significant error or pointless step",
            "0": "wrong, fabricated or harmful",
        },
        "failure_modes": [
            {
                "id": "incorrect",
                "description": "The step contains an error.",
                "max_score": 1,
            }
        ],
    }
)


def parse_arms(text: str) -> list[ArmName]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ARMS]
    if unknown or not names:
        raise ValueError(f"--arms: unknown {unknown or text!r}; choose from {', '.join(ARMS)}")
    return [name for name in ARMS if name in names]


def split_arm(arm: ArmName) -> tuple[BaseArm, bool]:
    """The arm's prompt (`scribe`, …) and whether it shows the reference."""
    base = arm.removesuffix(REFERENCE_SUFFIX)
    return cast(BaseArm, base), base != arm


def load_baseline_templates(templates_dir: Path) -> dict[str, str]:
    missing = [n for n in BASELINE_TEMPLATES if not (templates_dir / n).is_file()]
    if missing:
        raise ValueError(f"{templates_dir}: baseline templates missing: {', '.join(missing)}")
    return {n: (templates_dir / n).read_text(encoding="utf-8") for n in BASELINE_TEMPLATES}


def templates_digest(templates: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(templates):
        digest.update(name.encode() + b"\0" + templates[name].encode() + b"\0")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Outcome:
    """One judgment: a score, or an explicit failure (never a score of 0)."""

    status: Literal["ok", "failed"]
    score: int | None = None
    expected_score: float | None = None
    reward: float | None = None
    error: str | None = None
    message: str | None = None
    rubric: str | None = None
    """The prototype whose rubric (or the arm whose prompt) was used."""
    findings: tuple[str, ...] = ()
    """Ids of the failure modes the deterministic checks found (they cap the score)."""
    judge_score: int | None = None
    """The judge's own score, before the checks capped it; None when no check capped it."""
    judge_expected_score: float | None = None
    """Logprob mode: the judge's own expected score, before the checks; None as above."""

    @property
    def capped_by_check(self) -> bool:
        return self.judge_score is not None


class StepScorer(Protocol):
    """Judges an arm's step elsewhere: the `scribe` arms through a running service (`--url`)."""

    async def judge(self, arm: ArmName, item: StepItem, mode: JudgeMode) -> Outcome: ...


# --- RaR: instance rubrics -----------------------------------------------------------------


def rubric_schema() -> dict[str, Any]:
    text = {"type": "string", "minLength": 10, "maxLength": 300}
    return {
        "type": "object",
        "properties": {
            "criteria": {"type": "array", "items": text, "minItems": 2, "maxItems": 5},
            "levels": {
                "type": "object",
                "properties": dict.fromkeys(("3", "2", "1", "0"), text),
                "required": ["3", "2", "1", "0"],
                "additionalProperties": False,
            },
            "pitfalls": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "description": text,
                        "max_score": {"type": "integer", "enum": [0, 1, 2]},
                    },
                    "required": ["description", "max_score"],
                    "additionalProperties": False,
                },
                "minItems": 1,
                "maxItems": 4,
            },
        },
        "required": ["criteria", "levels", "pitfalls"],
        "additionalProperties": False,
    }


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def _json_object(text: str) -> dict[str, Any]:
    text = _THINK.sub("", text)
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise JudgeInvalidOutput(f"no JSON rubric in the judge's reply: {text[:200]!r}")


def rubric_prototype(data: Mapping[str, Any]) -> Prototype:
    """A written rubric as a Prototype (validated like a library one), so the service's own
    `rubric_text` and verdict validation apply to it unchanged."""
    try:
        criteria = [str(c).strip() for c in data["criteria"]]
        pitfalls = [
            {
                "id": f"pitfall_{i}",
                "description": str(p["description"]),
                "max_score": p["max_score"],
            }
            for i, p in enumerate(data["pitfalls"], start=1)
        ]
        return Prototype.model_validate(
            {
                "id": "task_rubric",
                "name": "Rubric written for this task",
                "domain": "general",
                "fallback": True,  # never routed to, so it needs no exemplars
                "usage_context": "Every step of this task; the rubric was written for this task.",
                "reasoning_pattern": "A good step for this task:\n"
                + "\n".join(f"- {c}" for c in criteria),
                "levels": {str(k): str(v) for k, v in dict(data["levels"]).items()},
                "failure_modes": pitfalls,
            }
        )
    except (KeyError, TypeError, ValueError, ValidationError) as exc:
        raise JudgeInvalidOutput(f"the written rubric is not usable: {exc}") from None


def task_key(task: str) -> str:
    return hashlib.sha256(task.encode()).hexdigest()[:16]


class RubricStore:
    """Instance rubrics by task: written once by the judge, kept in a JSONL file across runs.

    A failed rubric is not stored (a rerun tries again) but is remembered for this run, so the
    steps of that task fail together instead of each asking again.
    """

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._rubrics: dict[str, Prototype] = {}
        self._pending: dict[str, asyncio.Task[Prototype]] = {}
        self.calls = 0
        if path is not None and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self._rubrics[entry["task_key"]] = rubric_prototype(entry["rubric"])
                except (ValueError, KeyError, JudgeError):
                    continue  # a torn last line from a killed run: the rubric is written again

    async def get(self, task: str, judge: Judge, templates: Mapping[str, str]) -> Prototype:
        key = task_key(task)
        if key in self._rubrics:
            return self._rubrics[key]
        if key not in self._pending:
            self._pending[key] = asyncio.ensure_future(self._write(key, task, judge, templates))
        return await asyncio.shield(self._pending[key])

    async def _write(
        self, key: str, task: str, judge: Judge, templates: Mapping[str, str]
    ) -> Prototype:
        values = {"task": fence(task or "(not given)")}
        messages = [
            {"role": "system", "content": substitute(templates["rar_rubric_system.txt"], values)},
            {"role": "user", "content": substitute(templates["rar_rubric_user.txt"], values)},
        ]
        base = judge.sampling("verdict")
        error: JudgeError | None = None
        for attempt in range(RUBRIC_ATTEMPTS):
            # Same sampling as the verdicts; a retry after a bad reply samples a little.
            sampling = replace(base, max_tokens=RUBRIC_MAX_TOKENS)
            if attempt:
                seed = None if base.seed is None else base.seed + attempt
                sampling = replace(sampling, temperature=max(base.temperature, 0.5), seed=seed)
            try:
                prototype, data = await self._ask(messages, judge, sampling)
            except JudgeInvalidOutput as exc:
                error = exc
                continue
            self._rubrics[key] = prototype
            if self._path is not None:
                with self._path.open("a", encoding="utf-8") as handle:
                    line = {"task_key": key, "task": task[:200], "rubric": data}
                    handle.write(json.dumps(line, ensure_ascii=False) + "\n")
            return prototype
        assert error is not None
        raise error

    async def _ask(
        self, messages: list[dict[str, str]], judge: Judge, sampling: Sampling
    ) -> tuple[Prototype, dict[str, Any]]:
        self.calls += 1
        completion = await judge.complete(messages, rubric_schema(), sampling)
        data = _json_object(completion.text)
        return rubric_prototype(data), data


# --- judging one step ----------------------------------------------------------------------


@dataclass(frozen=True)
class StepItem:
    """One routed step of one record, ready for any arm."""

    record_id: str
    task: str
    segmented: Segmented
    step: Step
    route: Route
    tools: Sequence[Mapping[str, Any]] | None = None
    """The record's tool schemas, for the `tool_arguments` check."""
    reference: str | None = None
    """The record's reference answer, shown to the `+ref` arms only."""


class Arms:
    def __init__(
        self,
        library: Library,
        templates: Mapping[str, str],
        rubrics: RubricStore,
        *,
        max_step_chars: int,
        max_context_chars: int,
        service: StepScorer | None = None,
    ) -> None:
        self.library = library
        self.templates = dict(templates)
        self.rubrics = rubrics
        self.service = service
        """When given, the `scribe` arms are judged by it (a running service), not here."""
        self._max_step_chars = max_step_chars
        self._max_context_chars = max_context_chars
        self._direct_library = replace(
            library,
            templates={
                "judge_system.txt": templates["direct_system.txt"],
                "judge_user.txt": templates["direct_user.txt"],
                "judge_system_logprob.txt": templates["direct_system_logprob.txt"],
                "judge_user_logprob.txt": templates["direct_user_logprob.txt"],
            },
        )

    @classmethod
    def for_run(
        cls,
        out: Path,
        library: Library,
        templates: Mapping[str, str],
        settings: Settings,
        *,
        service: StepScorer | None = None,
    ) -> Arms:
        """The arms of one eval run: instance rubrics cached in `out/rubrics.jsonl`, prompts cut
        to the service's own budgets so every arm sees what the service would."""
        return cls(
            library,
            templates,
            RubricStore(out / "rubrics.jsonl"),
            max_step_chars=settings.max_step_chars,
            max_context_chars=settings.max_context_chars,
            service=service,
        )

    async def _prompt(
        self, arm: BaseArm, item: StepItem, judge: Judge
    ) -> tuple[Library, Prototype]:
        if arm == "scribe":
            return self.library, item.route.prototype
        if arm == "generic":
            return self.library, self.library.fallback
        if arm == "direct":
            return self._direct_library, DIRECT
        return self.library, await self.rubrics.get(item.task, judge, self.templates)

    async def judge(
        self, arm: ArmName, item: StepItem, judge: Judge | None, mode: JudgeMode
    ) -> Outcome:
        """One step's judgment by `arm`; `judge` may be None only for arms `service` judges."""
        base, with_reference = split_arm(arm)
        if with_reference and item.reference is None:
            return Outcome(
                "failed",
                error="no_reference",
                message="the record has no reference (`reference` or meta.ground_truth)",
            )
        if self.service is not None and base == "scribe":
            return await self.service.judge(arm, item, mode)
        if judge is None:
            raise ValueError(f"arm {arm} needs a judge and was given none")
        reference = item.reference if with_reference else None
        try:
            library, prototype = await self._prompt(base, item, judge)
        except JudgeError as exc:  # only `rar` can fail here: every step of the task fails
            return Outcome("failed", error=exc.type, message=f"instance rubric: {exc}")
        messages = render_messages(
            library,
            prototype,
            item.segmented,
            item.step,
            max_step_chars=self._max_step_chars,
            max_context_chars=self._max_context_chars,
            mode=mode,
            reference=reference,
        )
        found = self.check(arm, item, prototype, reference)
        ids = tuple(dict.fromkeys(f.failure_mode for f in found))
        try:
            verdict = await judge.verdict(messages, prototype, mode)
        except JudgeError as exc:
            return Outcome("failed", error=exc.type, message=str(exc), findings=ids)
        judged = verdict
        verdict = apply_findings(verdict, found)
        capped = (verdict.score, verdict.expected_score) != (judged.score, judged.expected_score)
        graded = verdict.score if verdict.expected_score is None else verdict.expected_score
        return Outcome(
            "ok",
            score=verdict.score,
            expected_score=verdict.expected_score,
            reward=aggregate.step_reward(graded),
            rubric=prototype.id,
            findings=ids,
            judge_score=judged.score if capped else None,
            judge_expected_score=judged.expected_score if capped else None,
        )

    def check(
        self, arm: ArmName, item: StepItem, prototype: Prototype, reference: str | None = None
    ) -> list[CheckFinding]:
        """The checks for the arms that have them (`scribe`, `generic`), as the service runs
        them (`step_checks`); a check that raises is logged and skipped, as in the service."""
        if arm.split("+")[0] not in CHECKED_ARMS:
            return []
        inp = check_input(item.segmented, item.step, item.tools, reference)
        found, errors = run_checks_isolated(step_checks(prototype.checks), inp)
        for name, exc in errors:
            where = f"{item.record_id} step {item.step.index}"
            log.error("check %s failed on %s", name, where, exc_info=exc)
        return found

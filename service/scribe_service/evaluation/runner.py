"""Make the judgments an evaluation needs, each written to `judgments.jsonl` as it is made.

The file is the resume cache: a judgment is identified by (record, step, arm, mode, repeat,
kind), and a rerun makes only the ones not there yet, so a long CPU run can be stopped at any
point (even killed mid-line: a torn last line is cut off) and resumed. Failed judgments are
recorded too, with their error, and are not redone unless asked (`retry_failed`): a rerun
of a finished run makes no judge call at all. `run.json` records the setup (judge model,
library version, sampling); resuming into a folder made with another setup is refused, since
mixing two judges' numbers would be silent nonsense.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from scribe_service.evaluation.arms import ArmName, Arms, Outcome, StepItem
from scribe_service.evaluation.records import Record
from scribe_service.pipeline.judge import Judge, JudgeMode, Sampling
from scribe_service.pipeline.run import Pipeline
from scribe_service.pipeline.segment import segment
from scribe_service.settings import Settings

log = logging.getLogger(__name__)


class EvalError(ValueError):
    """The evaluation cannot run as asked (a folder from another setup, no judge, …)."""


@dataclass(frozen=True)
class Job:
    """One judgment to make."""

    kind: str
    """"labels", "repeat" (verdict consistency) or "logprob" (logprob consistency)."""
    arm: ArmName
    item: StepItem
    mode: JudgeMode
    repeat: int
    judge: Judge | None
    """None: the arm is judged by a running service (`--url`), sampling as `service_sampling`."""
    service_sampling: Sampling | None = None

    @property
    def sampling(self) -> Sampling:
        if self.judge is not None:
            return self.judge.sampling(self.mode)
        if self.service_sampling is None:
            raise EvalError(f"job {self.key} has neither a judge nor the service's sampling")
        return self.service_sampling

    @property
    def key(self) -> str:
        return judgment_key(self.kind, self.item.record_id, self.item.step.index, self.arm,
                            self.mode, self.repeat)  # fmt: skip


def judgment_key(kind: str, record_id: str, step: int, arm: str, mode: str, repeat: int) -> str:
    return json.dumps([kind, record_id, step, arm, mode, repeat])


def line_key(line: Mapping[str, Any]) -> str:
    return judgment_key(
        line["kind"], line["record_id"], line["step"], line["arm"], line["mode"], line["repeat"]
    )


def parse_judgments(path: Path, data: bytes) -> dict[str, dict[str, Any]]:
    """The judgment lines of a `judgments.jsonl`'s bytes by key; a torn last line (a run
    killed mid-write) is left out."""
    lines: dict[str, dict[str, Any]] = {}
    whole = data[: data.rfind(b"\n") + 1]
    for number, text in enumerate(whole.decode("utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            lines[line_key(line)] = line
        except (ValueError, KeyError) as exc:
            raise EvalError(f"{path}:{number}: not a judgment line ({exc})") from None
    return lines


class JudgmentLog:
    """The append-only JSONL of judgments, loaded once and appended line by line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: dict[str, dict[str, Any]] = {}
        if path.is_file():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # A run killed mid-write left a torn line: drop it, so the next append starts
            # on a line of its own.
            keep = data.rfind(b"\n") + 1
            with self.path.open("r+b") as handle:
                handle.truncate(keep)
            data = data[:keep]
        self.lines = parse_judgments(self.path, data)

    def has(self, key: str, retry_failed: bool) -> bool:
        line = self.lines.get(key)
        return line is not None and not (retry_failed and line["status"] != "ok")

    def append(self, line: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.lines[line_key(line)] = line


def judge_setup(
    command: str,
    *,
    model: str,
    mode: JudgeMode,
    sampling: Sampling,
    library_version: str,
    templates_digest: str,
    settings: Settings,
    min_similarity: float,
) -> dict[str, Any]:
    """What makes two judgments comparable; `run.json` holds it and `check_setup` keeps a
    folder to one setup. Every command writes the same keys."""
    return {
        "command": command,
        "judge_model": model,
        "mode": mode,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "seed": sampling.seed,
        "max_tokens": sampling.max_tokens,
        "library_version": library_version,
        "baseline_templates": templates_digest,
        "embedding_model": settings.embedding_model,
        "min_similarity": min_similarity,
    }


def check_setup(path: Path, setup: Mapping[str, Any]) -> None:
    """Write `run.json`, or refuse when the folder holds judgments from another setup."""
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = {k: (before.get(k), v) for k, v in setup.items() if before.get(k) != v}
        if changed:
            detail = "; ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in changed.items())
            raise EvalError(
                f"{path.parent} holds judgments made with another setup ({detail}); "
                "use a new --out folder"
            )
    path.write_text(json.dumps(dict(setup), indent=2) + "\n", encoding="utf-8")


# --- routing -------------------------------------------------------------------------------


async def route_records(pipeline: Pipeline, records: Sequence[Record]) -> list[list[StepItem]]:
    """Segment and route every record as the service does (one encode call for all)."""
    segmented = [
        segment(
            messages=r.request.messages,
            completion=r.request.completion,
            steps=r.request.steps,
            prompt=r.request.prompt,
        )
        for r in records
    ]
    subgoals = [step.subgoal for s in segmented for step in s.steps]
    vectors = await asyncio.to_thread(pipeline.embedder.encode, subgoals)
    items: list[list[StepItem]] = []
    offset = 0
    for record, seg in zip(records, segmented, strict=True):
        count = len(seg.steps)
        routes = pipeline.index.route(
            vectors[offset : offset + count],
            pipeline.index.default_min_similarity(pipeline.min_similarity),
            seg.steps,
        )
        offset += count
        items.append(
            [
                StepItem(
                    record.id,
                    record.task,
                    seg,
                    step,
                    route,
                    tools=record.request.tools,
                    reference=record.reference,
                )
                for step, route in zip(seg.steps, routes, strict=True)
            ]
        )
    return items


# --- running -------------------------------------------------------------------------------


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-/s" if not speed else f"{speed:.2f}/s", style="progress.data.speed")


def judgment_line(
    job: Job, outcome: Outcome, record: Record, seconds: float | None = None
) -> dict[str, Any]:
    step, route = job.item.step, job.item.route
    sampling = job.sampling
    return {
        "kind": job.kind,
        "record_id": job.item.record_id,
        "step": step.index,
        "message_index": step.message_index,
        "arm": job.arm,
        "mode": job.mode,
        "repeat": job.repeat,
        "temperature": sampling.temperature,
        "seed": sampling.seed,
        "prototype_id": route.prototype.id,
        "fallback": route.fallback,
        "similarity": route.similarity,
        "rubric": outcome.rubric,
        "status": outcome.status,
        "score": outcome.score,
        "expected_score": outcome.expected_score,
        "reward": outcome.reward,
        "error": outcome.error,
        "error_message": outcome.message,
        "findings": list(outcome.findings),
        "judge_score": outcome.judge_score,
        "judge_expected_score": outcome.judge_expected_score,
        "capped_by_check": outcome.capped_by_check,
        "human_label": None
        if step.message_index is None
        else record.step_labels.get(step.message_index),
        # Wall time of this judgment, queueing behind other workers included: summed per arm,
        # what a run cost even when it was stopped and resumed across sessions.
        "seconds": None if seconds is None else round(seconds, 3),
    }


async def _judge(job: Job, arms: Arms) -> Outcome:
    try:
        return await arms.judge(job.arm, job.item, job.judge, job.mode)
    except EvalError:
        raise  # the run cannot go on as asked (e.g. the service segments otherwise)
    except Exception as exc:  # a bug fails this judgment visibly, never the whole run
        log.exception("judgment %s failed unexpectedly", job.key)
        return Outcome("failed", error="internal", message=f"{type(exc).__name__}: {exc}")


async def run_jobs(
    jobs: Iterable[Job],
    *,
    arms: Arms,
    judgments: JudgmentLog,
    records: Mapping[str, Record],
    workers: int,
    retry_failed: bool = False,
    console: Console | None = None,
    quiet: bool = False,
) -> int:
    """Make every job's judgment not already in `judgments`; returns how many were made."""
    todo = [job for job in jobs if not judgments.has(job.key, retry_failed)]
    if not todo:
        return 0
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in todo:
        queue.put_nowait(job)
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=quiet) as progress:
        bar = progress.add_task("judging", total=len(todo))
        stopped: list[EvalError] = []

        async def worker() -> None:
            while not queue.empty() and not stopped:
                job = queue.get_nowait()
                started = time.perf_counter()
                try:
                    outcome = await _judge(job, arms)
                except EvalError as exc:
                    # The other workers finish their job in hand (it is written) and stop.
                    stopped.append(exc)
                    return
                seconds = time.perf_counter() - started
                record = records[job.item.record_id]
                judgments.append(judgment_line(job, outcome, record, seconds))
                progress.advance(bar)

        await asyncio.gather(*(worker() for _ in range(max(1, min(workers, len(todo))))))
    if stopped:
        raise stopped[0]
    return len(todo)


def labels_jobs(
    items: Sequence[Sequence[StepItem]],
    arms: Sequence[ArmName],
    judge: Judge | None,
    mode: JudgeMode,
) -> list[Job]:
    # Arm-major: a run stopped early has whole arms rather than a little of each.
    return [
        Job("labels", arm, item, mode, 0, judge)
        for arm in arms
        for record_items in items
        for item in record_items
    ]


def consistency_jobs(
    items: Sequence[Sequence[StepItem]],
    arms: Sequence[ArmName],
    base: Judge,
    settings: Settings,
    *,
    repeats: int,
    temperature: float,
    logprob_repeats: int,
) -> list[Job]:
    seed = settings.judge_seed or 0
    sampling = replace(base.sampling("verdict"), temperature=temperature)
    # A fixed seed would make every repeat identical: repeat r samples with seed + r.
    judges = [
        base.with_sampling(replace(sampling, seed=seed + r))
        for r in range(max(repeats, logprob_repeats))
    ]
    steps = [item for record_items in items for item in record_items]
    # A step's repeats back to back: they share the whole prompt, so a judge with a prefix cache
    # (the embedded judge's state cache, vLLM's) evaluates it once, and each repeat costs only
    # its generation; a run stopped early has every repeat of the steps it reached.
    jobs = [
        Job("repeat", arm, item, "verdict", r, judges[r])
        for arm in arms
        for item in steps
        for r in range(repeats)
    ]
    jobs += [
        Job("logprob", arm, item, "logprob", r, judges[r])
        for arm in arms
        for item in steps
        for r in range(logprob_repeats)
    ]
    return jobs

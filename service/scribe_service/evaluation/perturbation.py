"""`scribe eval perturb`: does a reward score a step lower once an error is put into it?

The steps under test are the human-labelled +1 steps of a record that has labels, and every
step of a record that has none (so a user can run it on unlabelled trajectories). Each
corruption of perturb.py that applies to a step makes a corrupted twin: the same step, route,
history and observation, with one span of its text or of one tool call's arguments changed.
Every arm judges the original once (shared by all of its twins) and each twin once, through
the same `Arms` and runner as `scribe eval labels`, so the judgments are resumable the same way.

In `judgments.jsonl` an original's judgment has kind `original`; a twin's has kind
`perturb:<corruption kind>:<corruption id>`, the id a hash of what was changed, so a
corruption that comes out differently (another seed, changed corruption code) is judged anew
rather than read from a stale line. `corruptions.jsonl` describes every twin judged.

Per arm and corruption kind a pair is detected when the twin's reward is strictly lower than
the original's (a tie is no detection); a pair with either side failed is counted, left out,
and never scored. Intervals resample records (all pairs of a trajectory together).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from scribe_client.protocol import ToolMessage, UserMessage, content_text
from scribe_service.evaluation import metrics as m
from scribe_service.evaluation import perturb_report
from scribe_service.evaluation.analysis import capped_count, judge_reward
from scribe_service.evaluation.arms import (
    ArmName,
    Arms,
    StepItem,
    load_baseline_templates,
    split_arm,
    templates_digest,
)
from scribe_service.evaluation.evaluate import Result
from scribe_service.evaluation.perturb import (
    CORRUPTIONS,
    Corruption,
    PerturbContext,
    StepContent,
    corrupt,
)
from scribe_service.evaluation.records import Record, read_records
from scribe_service.evaluation.runner import (
    EvalError,
    Job,
    JudgmentLog,
    check_setup,
    judge_setup,
    judgment_key,
    parse_judgments,
    route_records,
    run_jobs,
)
from scribe_service.pipeline.checks import CheckToolCall
from scribe_service.pipeline.embed import Embedder
from scribe_service.pipeline.judge import Judge, JudgeBackend, JudgeError, JudgeMode
from scribe_service.pipeline.segment import Step, render_calls
from scribe_service.settings import Settings

ORIGINAL = "original"
PERTURB = "perturb"

console = Console()


@dataclass(frozen=True)
class PerturbOptions:
    data: Path
    out: Path
    arms: list[ArmName]
    kinds: list[str]
    """Corruption kinds to make, in `CORRUPTIONS` order."""
    per_kind: int | None = None
    """At most this many pairs of each kind (a seeded sample); None: all."""
    corruption_seed: int = 0
    limit: int | None = None
    sample: int | None = None
    sample_seed: int = 0
    n_resamples: int = 1000
    seed: int = 0
    """Bootstrap seed."""
    retry_failed: bool = False
    concurrency: int | None = None
    quiet: bool = False
    reuse: tuple[Path, ...] = ()
    """Earlier `labels` or `perturb` folders whose judgments of unchanged steps this run
    takes instead of judging them again (`reuse_originals`)."""


def parse_kinds(text: str | None) -> list[str]:
    """`--kinds k1,k2` → kinds in registry order; None or empty: every kind."""
    if not text:
        return list(CORRUPTIONS)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CORRUPTIONS]
    if unknown or not names:
        raise ValueError(
            f"--kinds: unknown {unknown or text!r}; choose from {', '.join(CORRUPTIONS)}"
        )
    return [name for name in CORRUPTIONS if name in names]


# --- pairs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """A step under test and one corrupted twin of it."""

    original: StepItem
    corrupted: StepItem
    corruption: Corruption
    id: str

    @property
    def kind(self) -> str:
        return self.corruption.kind

    @property
    def job_kind(self) -> str:
        return f"{PERTURB}:{self.kind}:{self.id}"


def corruption_id(corruption: Corruption) -> str:
    text = json.dumps(
        [corruption.kind, corruption.call_index, corruption.original, list(corruption.span),
         corruption.replacement],
        ensure_ascii=False,
    )  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def step_content(step: Step) -> StepContent:
    calls = tuple(CheckToolCall(c.function.name, c.function.arguments) for c in step.tool_calls)
    return StepContent(step.prose, calls)


def perturb_context(record: Record, step: Step) -> PerturbContext:
    """What the user had said by this step, and the tool results before and in it."""
    messages = record.request.messages
    if messages is None or step.message_index is None:
        return PerturbContext(task=record.task, tools=record.request.tools)
    before = messages[: step.message_index]
    user = [content_text(x.content) for x in before if isinstance(x, UserMessage)]
    evidence = [content_text(x.content) for x in before if isinstance(x, ToolMessage)]
    for later in messages[step.message_index + 1 :]:
        if not isinstance(later, ToolMessage):
            break
        evidence.append(content_text(later.content))
    return PerturbContext(
        task="\n".join(u for u in user if u.strip()) or record.task,
        evidence=evidence,
        tools=record.request.tools,
    )


def corrupted_step(step: Step, corruption: Corruption) -> Step:
    """`step` with the corruption's one target changed and its content rendered again the way
    segmentation renders a step (its prose, then its tool calls)."""
    text, calls = step.prose, step.tool_calls
    if corruption.call_index is None:
        text = corruption.corrupted
    else:
        call = calls[corruption.call_index]
        changed = call.model_copy(
            update={
                "function": call.function.model_copy(update={"arguments": corruption.corrupted})
            }
        )
        calls = (*calls[: corruption.call_index], changed, *calls[corruption.call_index + 1 :])
    content = "\n".join(part for part in (text.strip(), render_calls(calls)) if part)
    return replace(step, content=content, text=text, tool_calls=calls)


def steps_under_test(record: Record, items: Sequence[StepItem]) -> list[StepItem]:
    """The human-labelled +1 steps when the record has labels, else every step."""
    if not record.step_labels:
        return list(items)
    return [
        item
        for item in items
        if item.step.message_index is not None
        and record.step_labels.get(item.step.message_index) == 1
    ]


def build_pairs(
    records: Sequence[Record],
    items: Sequence[Sequence[StepItem]],
    *,
    kinds: Sequence[str],
    seed: int,
) -> list[Pair]:
    """Every corruption of `kinds` of every step under test, in record, step, kind order."""
    pairs = []
    for record, record_items in zip(records, items, strict=True):
        for item in steps_under_test(record, record_items):
            context = perturb_context(record, item.step)
            for corruption in corrupt(step_content(item.step), context, seed):
                if corruption.kind not in kinds:
                    continue
                twin = replace(item, step=corrupted_step(item.step, corruption))
                pairs.append(Pair(item, twin, corruption, corruption_id(corruption)))
    return pairs


def cap_per_kind(pairs: Sequence[Pair], per_kind: int | None, seed: int) -> list[Pair]:
    """At most `per_kind` pairs of each kind, a seeded sample kept in order."""
    if per_kind is None:
        return list(pairs)
    by_kind: dict[str, list[int]] = defaultdict(list)
    for i, pair in enumerate(pairs):
        by_kind[pair.kind].append(i)
    keep: set[int] = set()
    for kind, indices in by_kind.items():
        if len(indices) <= per_kind:
            keep.update(indices)
        else:
            keep.update(random.Random(f"per-kind\0{seed}\0{kind}").sample(indices, per_kind))
    return [pair for i, pair in enumerate(pairs) if i in keep]


def perturb_jobs(
    pairs: Sequence[Pair], arms: Sequence[ArmName], judge: Judge, mode: JudgeMode
) -> list[Job]:
    """Per arm (arm-major, like `labels`): each original once, its twins right after it, so
    a judge's prompt cache serves the prefix they share (everything up to the step)."""
    jobs = []
    for arm in arms:
        seen: set[tuple[str, int]] = set()
        for pair in pairs:
            key = (pair.original.record_id, pair.original.step.index)
            if key not in seen:
                seen.add(key)
                jobs.append(Job(ORIGINAL, arm, pair.original, mode, 0, judge))
            jobs.append(Job(pair.job_kind, arm, pair.corrupted, mode, 0, judge))
    return jobs


REUSABLE_KINDS = ("labels", ORIGINAL)


@dataclass(frozen=True)
class ReuseSource:
    """An earlier `labels` or `perturb` folder, read once: its judge setup and judgments."""

    path: Path
    setup: dict[str, Any]
    lines: dict[str, dict[str, Any]]


def read_reuse_source(path: Path) -> ReuseSource:
    """`path` read, never written: a torn last line (a run still writing) is left out."""
    try:
        setup = json.loads((path / "run.json").read_text(encoding="utf-8"))
        data = (path / "judgments.jsonl").read_bytes()
    except (OSError, ValueError) as exc:
        raise EvalError(f"--reuse {path}: not an eval folder ({exc})") from None
    return ReuseSource(path, setup, parse_judgments(path / "judgments.jsonl", data))


def check_reusable(source: ReuseSource, setup: Mapping[str, Any]) -> None:
    """Refuse a source judged with another setup than this run's (whatever the command)."""
    changed = sorted(k for k in setup if k != "command" and source.setup.get(k) != setup[k])
    if changed:
        detail = "; ".join(f"{k}: {source.setup.get(k)!r}, here {setup[k]!r}" for k in changed)
        raise EvalError(f"--reuse {source.path}: judged with another setup ({detail})")


def reuse_originals(jobs: Sequence[Job], judgments: JudgmentLog, source: ReuseSource) -> int:
    """Copy into `judgments` the judgments `source` holds of the unchanged steps this run
    judges; returns how many were copied.

    An original step in its own context is what `labels` judges, with the same prompt: with
    the same judge setup (`check_reusable`), judging it again only costs time. A copied line
    must show the same step routed the same way, so a folder made from other data, or with
    another segmentation or library, gives nothing; only judged (`ok`) lines are taken. The
    `rar` arms are never copied: their rubric is generated into each folder."""
    copied = 0
    for job in jobs:
        if job.kind != ORIGINAL or split_arm(job.arm)[0] == "rar" or job.key in judgments.lines:
            continue
        step, route = job.item.step, job.item.route
        here = {
            "message_index": step.message_index,
            "prototype_id": route.prototype.id,
            "fallback": route.fallback,
            "similarity": route.similarity,
        }
        for kind in REUSABLE_KINDS:
            line = source.lines.get(
                judgment_key(kind, job.item.record_id, step.index, job.arm, job.mode, job.repeat)
            )
            if (
                line is not None
                and line["status"] == "ok"
                and all(line.get(field) == value for field, value in here.items())
            ):
                judgments.append({**line, "kind": ORIGINAL, "reused_from": str(source.path)})
                copied += 1
                break
    return copied


def corruption_line(pair: Pair) -> dict[str, Any]:
    c = pair.corruption
    return {
        "id": pair.id,
        "kind": c.kind,
        "record_id": pair.original.record_id,
        "step": pair.original.step.index,
        "message_index": pair.original.step.message_index,
        "prototype_id": pair.original.route.prototype.id,
        "target": "text" if c.call_index is None else f"tool_call:{c.call_index}",
        "span": list(c.span),
        "replacement": c.replacement,
        "detail": c.detail,
    }


# --- metrics -------------------------------------------------------------------------------

PairStatus = Literal["ok", "failed", "not_judged"]


@dataclass(frozen=True)
class PairResult:
    """One pair as one arm judged it."""

    record_id: str
    kind: str
    status: PairStatus
    original: float | None = None
    """The original's reward (0..1); None unless both sides were judged."""
    corrupted: float | None = None
    judge_original: float | None = None
    """The original's reward from the judge alone, before the checks capped it (None: as
    `original`)."""
    judge_corrupted: float | None = None


def pair_results(
    pairs: Sequence[Pair], lines: Mapping[str, Mapping[str, Any]], arm: str, mode: str
) -> list[PairResult]:
    """Each pair's rewards from the judgment lines (keyed as `runner.judgment_key`)."""
    out = []
    for pair in pairs:
        rid, step = pair.original.record_id, pair.original.step.index
        sides = [
            lines.get(judgment_key(kind, rid, step, arm, mode, 0))
            for kind in (ORIGINAL, pair.job_kind)
        ]
        status: PairStatus = "ok"
        if any(side is None for side in sides):
            status = "not_judged"
        elif any(side["status"] != "ok" for side in sides if side is not None):
            status = "failed"
        if status != "ok":
            out.append(PairResult(rid, pair.kind, status))
            continue
        original, corrupted = (float(side["reward"]) for side in sides if side is not None)
        judge_original, judge_corrupted = (
            judge_reward(s) if s.get("capped_by_check") else None for s in sides if s is not None
        )
        out.append(
            PairResult(rid, pair.kind, "ok", original, corrupted, judge_original, judge_corrupted)
        )
    return out


def detection(results: Sequence[PairResult]) -> float | None:
    """Share of judged pairs whose corrupted twin got a strictly lower reward."""
    ok = [r for r in results if r.status == "ok"]
    return m.mean([float(_lower(r)) for r in ok])


def detection_by_judge(results: Sequence[PairResult]) -> float | None:
    """`detection` from the judge's own rewards: what the judge saw without the checks."""
    return detection(
        [
            replace(
                r,
                original=r.original if r.judge_original is None else r.judge_original,
                corrupted=r.corrupted if r.judge_corrupted is None else r.judge_corrupted,
            )
            for r in results
        ]
    )


def mean_drop(results: Sequence[PairResult]) -> float | None:
    """Mean of original − corrupted reward over the judged pairs (reward units, 0..1)."""
    return m.mean([_drop(r) for r in results if r.status == "ok"])


def _lower(r: PairResult) -> bool:
    assert r.original is not None and r.corrupted is not None
    return r.corrupted < r.original


def _drop(r: PairResult) -> float:
    assert r.original is not None and r.corrupted is not None
    return r.original - r.corrupted


def _by_record(results: Sequence[PairResult]) -> list[list[PairResult]]:
    """Judged pairs grouped by record: the bootstrap's units."""
    groups: dict[str, list[PairResult]] = defaultdict(list)
    for r in results:
        if r.status == "ok":
            groups[r.record_id].append(r)
    return list(groups.values())


def kind_summary(results: Sequence[PairResult], n_resamples: int, seed: int) -> dict[str, Any]:
    """n, failed, ties, detection and mean drop (reward and score units) with intervals."""
    units = _by_record(results)

    def boot(fn: Callable[[Sequence[PairResult]], float | None]) -> dict[str, Any]:
        def pooled(us: Sequence[list[PairResult]]) -> float | None:
            return fn([r for u in us for r in u])

        estimate = m.bootstrap(
            units, pooled, n_resamples=n_resamples, seed=seed,
            size=lambda us: sum(len(u) for u in us),
        )  # fmt: skip
        return estimate.as_dict()

    drop = boot(mean_drop)
    ok = [r for r in results if r.status == "ok"]
    return {
        "n": len(ok),
        "failed": sum(r.status == "failed" for r in results),
        "not_judged": sum(r.status == "not_judged" for r in results),
        "ties": sum(r.original == r.corrupted for r in ok),
        "detection": boot(detection),
        "detection_by_judge": boot(detection_by_judge),
        "mean_drop": drop,
        "mean_drop_score": _in_score_units(drop),
    }


def _in_score_units(estimate: Mapping[str, Any]) -> dict[str, Any]:
    """A reward-unit estimate on the 0..3 score scale (reward = score / 3)."""
    scaled = {k: None if estimate[k] is None else 3 * estimate[k] for k in ("value", "lo", "hi")}
    return {**scaled, "n": estimate["n"]}


def arm_summary(
    pairs: Sequence[Pair],
    lines: Mapping[str, Mapping[str, Any]],
    arm: str,
    mode: str,
    kinds: Sequence[str],
    n_resamples: int,
    seed: int,
) -> dict[str, Any]:
    results = pair_results(pairs, lines, arm, mode)
    mine = [line for line in lines.values() if line["arm"] == arm and line["mode"] == mode]
    return {
        "n": sum(r.status == "ok" for r in results),
        "failed": sum(r.status == "failed" for r in results),
        "capped_by_check": capped_count(mine),
        "kinds": {
            kind: kind_summary([r for r in results if r.kind == kind], n_resamples, seed)
            for kind in kinds
        },
    }


# --- the run -------------------------------------------------------------------------------


async def perturb(
    options: PerturbOptions,
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    judge_backend: JudgeBackend | None = None,
    out_console: Console | None = None,
) -> Result:
    """Run the perturbation suite end to end; `embedder` / `judge_backend` replace the
    configured ones (as in `evaluate`)."""
    from scribe_service.app import build_pipeline

    out_console = out_console or console
    records = read_records(
        options.data, options.limit, sample=options.sample, seed=options.sample_seed
    )
    if not records:
        raise EvalError(f"{options.data}: no records")
    sources = [read_reuse_source(path) for path in options.reuse]  # before loading models
    options.out.mkdir(parents=True, exist_ok=True)
    templates = load_baseline_templates(settings.prototypes_dir / "templates")
    if not options.quiet:
        out_console.print(f"{len(records)} records; loading the pipeline…")
    pipeline = await build_pipeline(settings, embedder=embedder, judge_backend=judge_backend)
    judge = pipeline.judge
    assert judge is not None
    try:
        try:
            await judge.backend.check()
        except JudgeError as exc:
            raise EvalError(f"the judge cannot answer: {exc}") from exc
        mode: JudgeMode = judge.mode
        sampling = judge.sampling("verdict")
        setup = judge_setup(
            "perturb",
            model=judge.backend.model,
            mode=mode,
            sampling=sampling,
            library_version=pipeline.library.version,
            templates_digest=templates_digest(templates),
            settings=settings,
            min_similarity=pipeline.min_similarity,
        )
        for source in sources:
            check_reusable(source, setup)
        check_setup(options.out / "run.json", setup)
        items = await route_records(pipeline, records)
        found = build_pairs(records, items, kinds=options.kinds, seed=options.corruption_seed)
        pairs = cap_per_kind(found, options.per_kind, options.corruption_seed)
        _write_corruptions(options.out / "corruptions.jsonl", pairs)
        arms = Arms.for_run(options.out, pipeline.library, templates, settings)
        jobs = perturb_jobs(pairs, options.arms, judge, mode)
        judgments = JudgmentLog(options.out / "judgments.jsonl")
        reused = sum(reuse_originals(jobs, judgments, source) for source in sources)
        if not options.quiet:
            if options.reuse:
                out_console.print(f"{reused} judgments of unchanged steps taken from --reuse")
            out_console.print(f"{len(pairs)} corrupted steps ({len(found)} found); judging…")
        made = await run_jobs(
            jobs,
            arms=arms,
            judgments=judgments,
            records={r.id: r for r in records},
            workers=options.concurrency or judge.concurrency,
            retry_failed=options.retry_failed,
            console=out_console,
            quiet=options.quiet,
        )
    finally:
        if judge_backend is None:
            await judge.backend.aclose()
    if not options.quiet:
        out_console.print(f"{made} judgments made, {len(jobs) - made} taken from judgments.jsonl")
    summary: dict[str, Any] = {
        "command": "perturb",
        "data": str(options.data),
        "records": len(records),
        "setup": setup,
        "corruption_seed": options.corruption_seed,
        "per_kind": options.per_kind,
        "judgments_made": made,
        "judgments_reused": reused,
        "rubric_calls": arms.rubrics.calls,
        "pairs": {
            kind: {
                "found": sum(p.kind == kind for p in found),
                "judged": sum(p.kind == kind for p in pairs),
            }
            for kind in options.kinds
        },
        "arms": {
            arm: arm_summary(
                pairs, judgments.lines, arm, mode, options.kinds, options.n_resamples, options.seed
            )  # fmt: skip
            for arm in options.arms
        },
    }
    plots = perturb_report.write_plots(options.out, summary)
    perturb_report.write_report(options.out, summary, plots)
    if not options.quiet:
        perturb_report.print_summary(summary, out_console)
        out_console.print(f"report: {options.out / 'report.md'}")
    return Result(summary, made, arms.rubrics.calls)


def _write_corruptions(path: Path, pairs: Sequence[Pair]) -> None:
    text = "".join(json.dumps(corruption_line(p), ensure_ascii=False) + "\n" for p in pairs)
    path.write_text(text, encoding="utf-8")

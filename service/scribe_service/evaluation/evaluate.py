"""One evaluation end to end: records → routed steps → judgments → metrics → report folder.

`labels` and `consistency` both load the service's pipeline once (library, embedder, routing
index, judge: configured as for `scribe serve`, by SCRIBE_* settings or `--judge-url`), make
the judgments the command needs (resumable, see runner.py), then compute the metrics and write
the report folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from scribe_service.evaluation import analysis, report
from scribe_service.evaluation.arms import (
    REFERENCE_SUFFIX,
    ArmName,
    Arms,
    RubricStore,
    load_baseline_templates,
    templates_digest,
)
from scribe_service.evaluation.records import read_records
from scribe_service.evaluation.runner import (
    EvalError,
    JudgmentLog,
    check_setup,
    concurrency,
    consistency_jobs,
    labels_jobs,
    route_records,
    run_jobs,
)
from scribe_service.pipeline.embed import Embedder
from scribe_service.pipeline.judge import JudgeBackend, JudgeError, JudgeMode
from scribe_service.settings import Settings

console = Console()


@dataclass(frozen=True)
class Options:
    command: str
    data: Path
    out: Path
    arms: list[ArmName]
    limit: int | None = None
    sample: int | None = None
    """A seeded random subset of this many records (seed: `sample_seed`)."""
    sample_seed: int = 0
    fit_split: str = "a"
    n_resamples: int = 1000
    seed: int = 0
    retry_failed: bool = False
    repeats: int = 10
    temperature: float = 1.0
    logprob_repeats: int = 3
    concurrency: int | None = None
    """Judge calls in flight; None: SCRIBE_JUDGE_CONCURRENCY (1 for the embedded judge)."""
    quiet: bool = False


@dataclass(frozen=True)
class Result:
    summary: dict[str, Any]
    judgments_made: int
    rubric_calls: int


async def evaluate(
    options: Options,
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    judge_backend: JudgeBackend | None = None,
    out_console: Console | None = None,
) -> Result:
    """Run one evaluation end to end; `embedder` / `judge_backend` replace the configured ones."""
    from scribe_service.app import build_pipeline

    out_console = out_console or console
    records = read_records(
        options.data, options.limit, sample=options.sample, seed=options.sample_seed
    )
    if not records:
        raise EvalError(f"{options.data}: no records")
    with_reference = [arm for arm in options.arms if arm.endswith(REFERENCE_SUFFIX)]
    if with_reference and not any(r.reference for r in records):
        raise EvalError(
            f"{options.data}: no record has a reference, so {', '.join(with_reference)} "
            "would judge nothing (docs/records.md: `reference`)"
        )
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
        labels = options.command == "labels"
        mode: JudgeMode = judge.mode if labels else "verdict"
        sampling = judge.sampling("verdict")
        setup: dict[str, Any] = {
            "command": options.command,
            "judge_model": judge.backend.model,
            "mode": mode,
            "temperature": sampling.temperature if labels else options.temperature,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
            "max_tokens": sampling.max_tokens,
            "library_version": pipeline.library.version,
            "baseline_templates": templates_digest(templates),
            "embedding_model": settings.embedding_model,
            "min_similarity": pipeline.min_similarity,
        }
        check_setup(options.out / "run.json", setup)
        items = await route_records(pipeline, records)
        rubrics = RubricStore(options.out / "rubrics.jsonl")
        arms = Arms(
            pipeline.library,
            templates,
            rubrics,
            max_step_chars=settings.max_step_chars,
            max_context_chars=settings.max_context_chars,
        )
        if labels:
            jobs = labels_jobs(items, options.arms, judge, mode)
        else:
            jobs = consistency_jobs(
                items,
                options.arms,
                judge,
                settings,
                repeats=options.repeats,
                temperature=options.temperature,
                logprob_repeats=options.logprob_repeats,
            )
        judgments = JudgmentLog(options.out / "judgments.jsonl")
        made = await run_jobs(
            jobs,
            arms=arms,
            judgments=judgments,
            records={r.id: r for r in records},
            workers=options.concurrency or concurrency(judge, settings),
            retry_failed=options.retry_failed,
            console=out_console,
            quiet=options.quiet,
        )
    finally:
        if judge_backend is None:
            await judge.backend.aclose()
    if not options.quiet:
        out_console.print(f"{made} judgments made, {len(jobs) - made} taken from judgments.jsonl")
    lines = list(judgments.lines.values())
    cfg = analysis.Config(
        fit_split="b" if options.fit_split == "b" else "a",
        n_resamples=options.n_resamples,
        seed=options.seed,
    )
    summary: dict[str, Any] = {
        "command": options.command,
        "data": str(options.data),
        "records": len(records),
        "setup": setup,
        "judgments_made": made,
        "rubric_calls": rubrics.calls,
    }
    if labels:
        counts = {r.id: len(steps) for r, steps in zip(records, items, strict=True)}
        summary["split"] = {
            "fit": cfg.fit_split,
            "report": cfg.report_split,
            "a": sum(r.split == "a" for r in records),
            "b": sum(r.split == "b" for r in records),
        }
        summary["aggregation"] = cfg.aggregation
        summary["arms"] = {
            arm: analysis.arm_labels_summary(
                analysis.build_units(records, counts, lines, arm, "labels"), cfg
            )
            for arm in options.arms
        }
        summary["reference"] = analysis.reference_rows(records, cfg)
    else:
        setup.update(repeats=options.repeats, logprob_repeats=options.logprob_repeats)
        routes = {(i.record_id, i.step.index): i.route.prototype.id for r in items for i in r}
        summary["arms"] = {
            arm: analysis.arm_consistency_summary(records, lines, arm, routes, cfg)
            for arm in options.arms
        }
    plots = report.write_plots(options.out, summary)
    report.write_report(options.out, summary, plots)
    if not options.quiet:
        report.print_summary(summary, out_console)
        out_console.print(f"report: {options.out / 'report.md'}")
    return Result(summary, made, rubrics.calls)

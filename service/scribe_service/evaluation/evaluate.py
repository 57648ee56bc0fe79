"""One evaluation end to end: records → routed steps → judgments → metrics → report folder.

`labels` and `consistency` both load the service's pipeline once (library, embedder, routing
index, judge: configured as for `scribe serve`, by SCRIBE_* settings or `--judge-url`), make
the judgments the command needs (resumable, see runner.py), then compute the metrics and write
the report folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from scribe_client import AsyncRewardClient, RewardServiceError
from scribe_service.evaluation import analysis, report
from scribe_service.evaluation.arms import (
    REFERENCE_SUFFIX,
    ArmName,
    Arms,
    load_baseline_templates,
    split_arm,
    templates_digest,
)
from scribe_service.evaluation.records import read_records
from scribe_service.evaluation.remote import ServiceScorer, service_info
from scribe_service.evaluation.runner import (
    EvalError,
    Job,
    JudgmentLog,
    check_setup,
    consistency_jobs,
    judge_setup,
    labels_jobs,
    route_records,
    run_jobs,
)
from scribe_service.pipeline.embed import Embedder
from scribe_service.pipeline.judge import Judge, JudgeBackend, JudgeError, JudgeMode, Sampling
from scribe_service.settings import Settings

console = Console()
SERVICE_TIMEOUT = 600.0
"""Seconds for one record's score request: every step of it is judged before the answer."""


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
    url: str | None = None
    """A running service that judges the `scribe` arms (`labels` only); see remote.py."""


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
    http_client: httpx.AsyncClient | None = None,
) -> Result:
    """Run one evaluation end to end; `embedder` / `judge_backend` replace the configured ones,
    `http_client` the one that talks to the service (`options.url`)."""
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
    labels = options.command == "labels"
    local_arms = [a for a in options.arms if options.url is None or split_arm(a)[0] != "scribe"]
    if options.url is not None:
        if not labels:
            raise EvalError(f"--url: only `scribe eval labels` runs against a service, not "
                            f"`{options.command}`")  # fmt: skip
        if local_arms and judge_backend is None and settings.judge_url is None:
            raise EvalError(
                f"--url judges only the scribe arms through the service; {', '.join(local_arms)} "
                "need the judge too: give --judge-url (the judge server the service uses)"
            )
    options.out.mkdir(parents=True, exist_ok=True)
    templates = load_baseline_templates(settings.prototypes_dir / "templates")
    if not options.quiet:
        out_console.print(f"{len(records)} records; loading the pipeline…")
    pipeline = await build_pipeline(
        settings, embedder=embedder, judge_backend=judge_backend, with_judge=bool(local_arms)
    )
    judge = pipeline.judge
    mode: JudgeMode = "verdict"
    if labels:
        mode = settings.judge_mode if judge is None else judge.mode
    client = None
    if options.url is not None:
        client = AsyncRewardClient(options.url, timeout=SERVICE_TIMEOUT, http_client=http_client)
    try:
        if judge is not None:
            try:
                await judge.backend.check()
            except JudgeError as exc:
                raise EvalError(f"the judge cannot answer: {exc}") from exc
        items = await route_records(pipeline, records)
        judgments = JudgmentLog(options.out / "judgments.jsonl")
        by_id = {r.id: r for r in records}
        service = None if client is None else ServiceScorer(client, by_id)
        if labels:
            jobs = labels_jobs(items, options.arms, judge, mode)
        else:
            assert judge is not None  # consistency never runs against a service
            jobs = consistency_jobs(
                items,
                options.arms,
                judge,
                settings,
                repeats=options.repeats,
                temperature=options.temperature,
                logprob_repeats=options.logprob_repeats,
            )
        if service is not None:
            assert client is not None
            model, sampling, library_version = await _service_setup(
                client, service, jobs, judgments, options, mode, settings
            )
            if judge is not None and judge.backend.model != model:
                raise EvalError(
                    f"--judge-url serves {judge.backend.model!r}, the service judges with "
                    f"{model!r}: every arm must have the same judge"
                )
            judge = None if judge is None else judge.with_sampling(sampling)
            jobs = [_service_job(job, judge, sampling) for job in jobs]
        else:
            assert judge is not None
            model, sampling = judge.backend.model, judge.sampling("verdict")
            library_version = pipeline.library.version
        setup = judge_setup(
            options.command,
            model=model,
            mode=mode,
            sampling=sampling if labels else replace(sampling, temperature=options.temperature),
            library_version=library_version,
            templates_digest=templates_digest(templates),
            settings=settings,
            min_similarity=pipeline.min_similarity,
        )
        check_setup(options.out / "run.json", setup)
        arms = Arms.for_run(options.out, pipeline.library, templates, settings, service=service)
        workers = options.concurrency or (
            settings.judge_concurrency if judge is None else judge.concurrency
        )
        made = await run_jobs(
            jobs,
            arms=arms,
            judgments=judgments,
            records=by_id,
            workers=workers,
            retry_failed=options.retry_failed,
            console=out_console,
            quiet=options.quiet,
        )
    finally:
        if pipeline.judge is not None and judge_backend is None:
            await pipeline.judge.backend.aclose()
        if client is not None:
            await client.aclose()
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
        "rubric_calls": arms.rubrics.calls,
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
    return Result(summary, made, arms.rubrics.calls)


async def _service_setup(
    client: AsyncRewardClient,
    service: ServiceScorer,
    jobs: Sequence[Job],
    judgments: JudgmentLog,
    options: Options,
    mode: JudgeMode,
    settings: Settings,
) -> tuple[str, Sampling, str]:
    """The service's judge model, sampling and library version, for `run.json`.

    The sampling is only in score responses, so the first record still to judge is sent now
    (its answer is memoised for its steps); with nothing left to judge no request is made and
    the folder's `run.json` stands for the sampling.
    """
    info = await service_info(client)
    pending = [job for job in jobs if not judgments.has(job.key, options.retry_failed)]
    if not pending:
        path = options.out / "run.json"
        if not path.is_file():
            raise EvalError(f"{options.out}: judgments.jsonl without run.json")
        before = json.loads(path.read_text(encoding="utf-8"))
        sampling = Sampling(
            temperature=before["temperature"],
            top_p=before["top_p"],
            max_tokens=before["max_tokens"],
            seed=before["seed"],
        )
        return info.judge_model or str(before["judge_model"]), sampling, info.library_version
    if info.not_ready is not None:
        raise EvalError(f"the service at {client.base_url} is not ready: {info.not_ready}")
    probe = next(
        (
            (job.item.record_id, split_arm(job.arm)[1])
            for job in pending
            if split_arm(job.arm)[0] == "scribe"
            and (not split_arm(job.arm)[1] or job.item.reference is not None)
        ),
        (pending[0].item.record_id, False),
    )
    try:
        response = await service.response(*probe, mode)
    except RewardServiceError as exc:
        raise EvalError(f"record {probe[0]!r} sent to {client.base_url}: {exc}") from exc
    if response.judge is None:
        raise EvalError(f"the service at {client.base_url} has no judge configured")
    judge = response.judge
    # A logprob-mode answer states max_tokens 1; the verdict budget (used only by `rar` for
    # writing rubrics, with its own budget) is then this side's setting.
    max_tokens = judge.max_tokens if mode == "verdict" else settings.judge_max_tokens
    sampling = Sampling(
        temperature=judge.temperature, top_p=judge.top_p, max_tokens=max_tokens, seed=judge.seed
    )
    return judge.model, sampling, response.library_version


def _service_job(job: Job, judge: Judge | None, sampling: Sampling) -> Job:
    """`job` as run against a service: the `scribe` arms by it, the others by `judge`."""
    if split_arm(job.arm)[0] == "scribe":
        return replace(job, judge=None, service_sampling=sampling)
    return replace(job, judge=judge)

"""`scribe library build DATA.jsonl --out DIR` and `scribe library refresh --misses LOG --base
DIR --out DIR2`: the command lines of build.py and refresh.py.

Judge settings come from the SCRIBE_* environment exactly as for `scribe serve` (a judge
server with SCRIBE_JUDGE_URL, else the embedded model). Registration stays light: models load
only when `library build` runs.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from scribe_service.library_build.errors import BuildError

if TYPE_CHECKING:
    from scribe_service.library_build.journal import JournaledBackend
    from scribe_service.pipeline.backends.base import JudgeBackend
    from scribe_service.pipeline.embed import Embedder
    from scribe_service.settings import Settings

EXIT_OK = 0
EXIT_FAILED = 1
"""The library was written, but some cluster gave no valid prototype (see the report)."""
EXIT_USAGE = 2

stderr = Console(stderr=True)


def _stage_options(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """The cluster and distil options (`StageOptions`) a build and a refresh share."""
    return {
        "min_size": args.min_size,
        "threshold": args.threshold,
        "merge_threshold": args.merge_threshold,
        "max_exemplars": args.max_exemplars,
        "max_attempts": args.max_attempts,
        "max_tokens": args.max_tokens,
        # A prototype is a long reply: the per-verdict timeout applies only when set.
        "timeout": settings.judge_timeout if "judge_timeout" in settings.model_fields_set else None,
        "seed": settings.judge_seed,
    }


async def _load_models(settings: Settings) -> tuple[Embedder, JudgeBackend]:
    """The embedder and judge as `scribe serve` configures them (SCRIBE_EMBEDDING_*,
    SCRIBE_JUDGE_*), loaded off the event loop."""
    from scribe_service.app import configured_embedder, make_judge_backend

    embedder = await asyncio.to_thread(configured_embedder, settings)
    return embedder, await asyncio.to_thread(make_judge_backend, settings)


def _journaled(out: Path, backend: JudgeBackend) -> JournaledBackend:
    """`backend` behind the journal of a build writing `out` (journal.py): a killed build
    rerun with the same inputs reads back every reply it already had."""
    from scribe_service.library_build.journal import JournaledBackend, journal_path

    journaled = JournaledBackend(backend, journal_path(out))
    if journaled.resumed:
        stderr.print(f"resuming: {journaled.resumed} judge replies in {journaled.path}")
    return journaled


async def _build(args: argparse.Namespace) -> int:
    from scribe_service.library_build.build import BuildOptions, build_library
    from scribe_service.settings import Settings

    settings = Settings()
    options = BuildOptions(
        data=args.file,
        out=args.out,
        base=args.base,
        limit=args.limit,
        sample=args.sample,
        sample_seed=args.sample_seed,
        llm_subgoals=args.llm_subgoals,
        **_stage_options(args, settings),
    )
    options.check()
    stderr.print("loading the embedder and the judge…")
    embedder, judge = await _load_models(settings)
    backend = _journaled(options.out, judge)
    try:
        result = await build_library(
            options,
            backend=backend,
            embedder=embedder,
            # Without --base: the served library's fallback and templates, and its coverage.
            shipped=settings.prototypes_dir,
            min_similarity=settings.min_similarity,
            progress=lambda line: stderr.print(escape(line), soft_wrap=True),
        )
    finally:
        await backend.aclose()
    backend.discard()
    report = result.report
    coverage = report["coverage"]
    stderr.print(
        f"wrote {result.out} (library {result.library.version}): {len(result.built)} prototypes "
        f"built, {len(result.extended)} extended, {len(report['failed'])} clusters failed; "
        f"coverage {coverage['before']} → {coverage['after']}; see build-report.md",
        soft_wrap=True,
    )
    if (written := report["llm_subgoals"]) is not None:
        stderr.print(
            f"LLM subgoals: {written['rewritten']} of {written['asked']} derived subgoals "
            f"rewritten, {written['kept_on_failure']} kept on failure",
            soft_wrap=True,
        )
    return EXIT_FAILED if report["failed"] else EXIT_OK


async def _refresh(args: argparse.Namespace) -> int:
    from scribe_service.library_build.refresh import (
        RefreshOptions,
        refresh_library,
        usable_misses,
    )
    from scribe_service.settings import Settings

    settings = Settings()
    options = RefreshOptions(
        misses=args.misses,
        base=args.base,
        out=args.out,
        llm_subgoals=args.llm_subgoals,
        **_stage_options(args, settings),
    )
    options.check()
    misses = usable_misses(options.misses)  # an unusable log is refused before any model loads
    stderr.print(f"{len(misses.steps)} usable miss lines; loading the embedder and the judge…")
    embedder, judge = await _load_models(settings)
    backend = _journaled(options.out, judge)
    try:
        result = await refresh_library(
            options,
            backend=backend,
            embedder=embedder,
            min_similarity=settings.min_similarity,
            misses=misses,
            progress=lambda line: stderr.print(escape(line), soft_wrap=True),
        )
    finally:
        await backend.aclose()
    backend.discard()
    report = result.report
    coverage = report["coverage"]
    stderr.print(
        f"wrote {result.out} (library {result.library.version}): {len(result.built)} new "
        f"prototypes beside the base's, untouched; {len(report['close_to_base'])} clusters close "
        f"to a base prototype left alone, {len(report['failed'])} failed; coverage of the "
        f"misses {coverage['before']} → {coverage['after']}; see build-report.md",
        soft_wrap=True,
    )
    return EXIT_FAILED if report["failed"] else EXIT_OK


def _run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_build(args) if args.library_command == "build" else _refresh(args))
    except BuildError as exc:
        stderr.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        return EXIT_USAGE


def _fit_router(args: argparse.Namespace) -> int:
    from scribe_service.app import configured_embedder
    from scribe_service.library import LibraryError, load_library
    from scribe_service.library_build.router_fit import (
        fit_routers,
        library_pairs,
        read_labels,
        save_router,
        table,
    )
    from scribe_service.settings import Settings

    try:
        library = load_library(args.library)
    except LibraryError as exc:
        raise BuildError(f"library: {exc}") from exc
    pairs = read_labels(args.labels, library) if args.labels else library_pairs(library)
    settings = Settings()
    stderr.print(f"{len(pairs)} pairs; loading the embedder…")
    # The vectors the service will route with: fitted on another backend's, the weights and
    # the threshold would be calibrated for slightly different inputs.
    embedder = configured_embedder(settings)
    fit = fit_routers(
        library,
        embedder,
        pairs,
        pairs_from=str(args.labels) if args.labels else "the library's exemplars",
        min_similarity=settings.min_similarity,
        holdout=args.holdout,
        seed=args.seed,
    )
    written = save_router(
        args.library,
        fit,
        library_version=library.version,
        embedding_model=embedder.name,
        seed=args.seed,
    )
    Console().print(table(fit), markup=False, soft_wrap=True)
    stderr.print(
        f"chose {fit.chosen} (threshold {fit.threshold:.4f}); wrote "
        + ", ".join(str(p) for p in written),
        soft_wrap=True,
    )
    return EXIT_OK


def _run_router(args: argparse.Namespace) -> int:
    try:
        return _fit_router(args)
    except BuildError as exc:
        stderr.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        return EXIT_USAGE


def add_library_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `library build`, `library refresh` and `router fit`."""
    library = commands.add_parser("library", help="build a skill-prototype library from data")
    actions = library.add_subparsers(dest="library_command", required=True)
    build = actions.add_parser(
        "build",
        help="learn prototypes from trajectories: decompose, cluster, distil, merge, write",
        epilog=f"exit status: {EXIT_OK} built; {EXIT_FAILED} built, but some cluster gave no "
        f"valid prototype (build-report.md lists it); {EXIT_USAGE} unusable input or options. "
        "Judge settings: SCRIBE_* as for `scribe serve`. See docs/library-build.md.",
    )
    build.add_argument("file", type=Path, help="trajectory records (JSONL; labels optional)")
    build.add_argument("--out", type=Path, required=True, help="the new library directory")
    build.add_argument("--base", type=Path, help="extend this library (else: a new one)")
    build.add_argument("--limit", type=int, help="use only the first N records")
    build.add_argument("--sample", type=int, help="a seeded random N of the records")
    build.add_argument("--sample-seed", type=int, default=0)
    _add_subgoal_option(build)
    _add_shared_options(build)
    build.set_defaults(run=_run)

    refresh = actions.add_parser(
        "refresh",
        help="new prototypes from the miss log (SCRIBE_MISS_LOG); base prototypes untouched",
        epilog=f"exit status: {EXIT_OK} written; {EXIT_FAILED} written, but some cluster gave "
        f"no valid prototype; {EXIT_USAGE} no usable miss lines, or bad options. Reads LOG and "
        "its rotated files LOG.1, LOG.2, …. A cluster close to a base prototype adds nothing "
        "to it (the report names it). See docs/reload.md.",
    )
    refresh.add_argument("--misses", type=Path, required=True, help="the miss log (JSONL)")
    refresh.add_argument("--base", type=Path, required=True, help="the library to extend")
    refresh.add_argument("--out", type=Path, required=True, help="the new library directory")
    _add_subgoal_option(refresh)
    _add_shared_options(refresh)
    refresh.set_defaults(run=_run)

    # `router fit` is registered here too: it fits a router to a library this module builds.
    router = commands.add_parser("router", help="fit a router to a skill-prototype library")
    router_actions = router.add_subparsers(dest="router_command", required=True)
    fit = router_actions.add_parser(
        "fit",
        help="compare the nearest-exemplar rule and a logistic regression on held-out pairs; "
        "save the better one beside the library",
        epilog=f"exit status: {EXIT_OK} fitted and saved (router.json, and router.npz for the "
        f"regression); {EXIT_USAGE} unusable library, labels or options.",
    )
    fit.add_argument("--library", type=Path, required=True, help="the library directory")
    fit.add_argument(
        "--labels",
        type=Path,
        help='hand-labelled JSONL {"subgoal": …, "prototype_id": …} (else: the exemplars)',
    )
    fit.add_argument("--holdout", type=float, default=0.25, help="held-out share (0.25)")
    fit.add_argument("--seed", type=int, default=0)
    fit.set_defaults(run=_run_router)


def _add_shared_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--min-size", type=int, default=5, help="distinct subgoals a cluster needs (min 5)"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="cluster cut: mean cosine similarity within a cluster (default 0.5)",
    )
    parser.add_argument(
        "--merge-threshold",
        type=float,
        default=0.6,
        help="a cluster this close to a base exemplar extends that prototype (build --base) "
        "or is left alone (refresh: base prototypes are never edited)",
    )
    parser.add_argument("--max-exemplars", type=int, default=16)
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=4,
        help="judge calls per cluster (and per step with --llm-subgoals) before it fails",
    )
    parser.add_argument("--max-tokens", type=int, default=1500, help="per distillation call")


def _add_subgoal_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--llm-subgoals",
        action="store_true",
        help="have the judge write a skill-level subgoal for each step without a marker, and "
        "cluster on those (exemplars stay the service's own subgoals, the ones it routes)",
    )

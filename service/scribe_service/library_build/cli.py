"""`scribe library build DATA.jsonl --out DIR`: the command line of build.py.

Judge settings come from the SCRIBE_* environment exactly as for `scribe serve` (a judge
server with SCRIBE_JUDGE_URL, else the embedded model). Registration stays light: models load
only when `library build` runs.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from scribe_service.library_build.errors import BuildError

EXIT_OK = 0
EXIT_FAILED = 1
"""The library was written, but some cluster gave no valid prototype (see the report)."""
EXIT_USAGE = 2

stderr = Console(stderr=True)


async def _build(args: argparse.Namespace) -> int:
    from scribe_service.app import make_judge_backend
    from scribe_service.library_build.build import BuildOptions, build_library
    from scribe_service.pipeline.embed import SentenceTransformerEmbedder
    from scribe_service.settings import Settings

    settings = Settings()
    options = BuildOptions(
        data=args.file,
        out=args.out,
        base=args.base,
        limit=args.limit,
        sample=args.sample,
        sample_seed=args.sample_seed,
        min_size=args.min_size,
        threshold=args.threshold,
        merge_threshold=args.merge_threshold,
        max_exemplars=args.max_exemplars,
        max_attempts=args.max_attempts,
        max_tokens=args.max_tokens,
        # A prototype is a long reply: the per-verdict timeout applies only when set.
        timeout=settings.judge_timeout if "judge_timeout" in settings.model_fields_set else None,
        seed=settings.judge_seed,
    )
    options.check()
    stderr.print("loading the embedder and the judge…")
    embedder = await asyncio.to_thread(
        SentenceTransformerEmbedder,
        settings.embedding_model,
        batch_size=settings.embedding_batch_size,
    )
    backend = await asyncio.to_thread(make_judge_backend, settings)
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
    report = result.report
    coverage = report["coverage"]
    stderr.print(
        f"wrote {result.out} (library {result.library.version}): {len(result.built)} prototypes "
        f"built, {len(result.extended)} extended, {len(report['failed'])} clusters failed; "
        f"coverage {coverage['before']} → {coverage['after']}; see build-report.md",
        soft_wrap=True,
    )
    return EXIT_FAILED if report["failed"] else EXIT_OK


def _run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_build(args))
    except BuildError as exc:
        stderr.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        return EXIT_USAGE


def add_library_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `library build`."""
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
    build.add_argument(
        "--min-size", type=int, default=5, help="distinct subgoals a cluster needs (min 5)"
    )
    build.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="cluster cut: mean cosine similarity within a cluster (default 0.5)",
    )
    build.add_argument(
        "--merge-threshold",
        type=float,
        default=0.6,
        help="with --base: a cluster this close to a base exemplar extends that prototype",
    )
    build.add_argument("--max-exemplars", type=int, default=16)
    build.add_argument(
        "--max-attempts", type=int, default=4, help="judge calls per cluster before it fails"
    )
    build.add_argument("--max-tokens", type=int, default=1500, help="per distillation call")
    build.set_defaults(run=_run)

"""`scribe eval labels|consistency|perturb DATA.jsonl --out DIR`: the command line of
evaluate.py and perturbation.py; `scribe eval curves LOG --out DIR`: that of curves.py.

Registration stays light: the pipeline, numpy and matplotlib load only when `eval` runs.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

ARM_NAMES = ("scribe", "generic", "rar", "direct")


def _run(args: argparse.Namespace) -> int:
    from scribe_service.evaluation.arms import parse_arms
    from scribe_service.evaluation.evaluate import Options, evaluate
    from scribe_service.settings import Settings

    overrides: dict[str, Any] = {}
    if args.judge_url:
        overrides["judge_url"] = args.judge_url
    if getattr(args, "judge_mode", None):
        overrides["judge_mode"] = args.judge_mode
    options = Options(
        command=args.eval_command,
        data=args.file,
        out=args.out,
        arms=parse_arms(args.arms),
        limit=args.limit,
        sample=args.sample,
        sample_seed=args.sample_seed,
        fit_split=args.fit_split,
        n_resamples=args.bootstrap,
        seed=args.seed,
        retry_failed=args.retry_failed,
        repeats=getattr(args, "repeats", 10),
        temperature=getattr(args, "temperature", 1.0),
        logprob_repeats=getattr(args, "logprob_repeats", 0),
        concurrency=args.concurrency,
        quiet=args.quiet,
        url=getattr(args, "url", None),
    )
    asyncio.run(evaluate(options, Settings(**overrides)))
    return 0


def _run_perturb(args: argparse.Namespace) -> int:
    from scribe_service.evaluation.arms import parse_arms
    from scribe_service.evaluation.perturbation import PerturbOptions, parse_kinds, perturb
    from scribe_service.settings import Settings

    overrides: dict[str, Any] = {}
    if args.judge_url:
        overrides["judge_url"] = args.judge_url
    if args.judge_mode:
        overrides["judge_mode"] = args.judge_mode
    options = PerturbOptions(
        data=args.file,
        out=args.out,
        arms=parse_arms(args.arms),
        kinds=parse_kinds(args.kinds),
        per_kind=args.per_kind,
        corruption_seed=args.corruption_seed,
        limit=args.limit,
        sample=args.sample,
        sample_seed=args.sample_seed,
        n_resamples=args.bootstrap,
        seed=args.seed,
        retry_failed=args.retry_failed,
        concurrency=args.concurrency,
        quiet=args.quiet,
        reuse=tuple(args.reuse or ()),
    )
    asyncio.run(perturb(options, Settings(**overrides)))
    return 0


def _curves(args: argparse.Namespace) -> int:
    from rich.console import Console

    from scribe_service.evaluation.curves import CurvesError, curves

    where = {}
    for condition in args.where:
        key, sep, value = condition.partition("=")
        if not sep or not key:
            raise CurvesError(f"--where {condition!r}: expected KEY=VALUE")
        where[key] = value
    console = None if args.quiet else Console()
    curves(args.log, args.out, step_key=args.step_key, bins=args.bins, top=args.top,
           where=where, console=console)  # fmt: skip
    return 0


def _add_curves(sub: Any) -> None:
    curves = sub.add_parser(
        "curves", help="mean score per prototype and domain against the training step"
    )
    curves.add_argument(
        "log", type=Path, help="the score log (SCRIBE_SCORE_LOG); LOG.1, LOG.2, … are read too"
    )
    curves.add_argument("--out", type=Path, required=True, help="report folder")
    curves.add_argument(
        "--step-key", default="global_step", help="the metadata key holding the training step"
    )
    curves.add_argument(
        "--bins", type=int, default=20, help="step buckets (fewer distinct steps: one each)"
    )
    curves.add_argument(
        "--top", type=int, default=8, help="prototypes in the main plot; the rest in a second"
    )
    curves.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only lines whose metadata KEY equals VALUE (e.g. run=grpo-7); repeatable",
    )
    curves.add_argument("--quiet", action="store_true", help="no table")
    curves.set_defaults(run=_curves)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="labelled trajectory records (docs/records.md)")
    parser.add_argument("--out", type=Path, required=True, help="report folder (resumable)")
    parser.add_argument(
        "--arms",
        default=",".join(ARM_NAMES),
        help=f"comma-separated, of {', '.join(ARM_NAMES)}, each also as NAME+ref: shown the "
        "record's reference answer (docs/reference.md)",
    )
    parser.add_argument("--limit", type=int, help="only the first N records")
    parser.add_argument(
        "--sample",
        type=int,
        help="a seeded random N of the records, in file order (sorted files: use this, "
        "not --limit)",
    )
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of --sample")
    parser.add_argument("--judge-url", help="OpenAI-compatible judge (default SCRIBE_JUDGE_URL)")
    parser.add_argument(
        "--fit-split",
        choices=("a", "b"),
        default="a",
        help="the half of the records (by task hash) that cut points are fitted on; "
        "fitted metrics are reported on the other half",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        help="judge calls in flight (default SCRIBE_JUDGE_CONCURRENCY; 1 for the embedded "
        "judge; 1 suits a single-slot server such as llama.cpp's)",
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument(
        "--retry-failed", action="store_true", help="judge again what failed before"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or table")
    parser.set_defaults(run=_run)


def add_eval_parser(commands: Any) -> None:
    """Register `scribe eval` on the top-level sub-command set."""
    evaluation = commands.add_parser(
        "eval", help="measure reward quality against labelled trajectories"
    )
    sub = evaluation.add_subparsers(dest="eval_command", required=True)
    labels = sub.add_parser("labels", help="AUROC, agreement, first-error F1 per arm")
    _common(labels)
    labels.add_argument(
        "--judge-mode",
        choices=("verdict", "logprob"),
        help="default SCRIBE_JUDGE_MODE (with --url: sent with every request)",
    )
    labels.add_argument(
        "--url",
        help="a running service (e.g. http://127.0.0.1:8000) that judges the scribe arms; "
        "the other arms then need --judge-url, the judge server that service uses",
    )
    consistency = sub.add_parser("consistency", help="repeated and cross-instance consistency")
    _common(consistency)
    consistency.add_argument("--repeats", type=int, default=10, help="verdict repeats per step")
    consistency.add_argument("--temperature", type=float, default=1.0)
    consistency.add_argument(
        "--logprob-repeats", type=int, default=3, help="logprob-mode repeats per step (0: none)"
    )
    _add_curves(sub)
    perturb = sub.add_parser(
        "perturb", help="detection of controlled corruptions per kind and arm (docs/perturb.md)"
    )
    _common(perturb)
    perturb.add_argument(
        "--judge-mode", choices=("verdict", "logprob"), help="default SCRIBE_JUDGE_MODE"
    )
    perturb.add_argument("--kinds", help="comma-separated corruption kinds (default: all)")
    perturb.add_argument(
        "--per-kind", type=int, help="at most N corrupted steps per kind (a seeded sample)"
    )
    perturb.add_argument(
        "--corruption-seed", type=int, default=0, help="seed of the corruptions and --per-kind"
    )
    perturb.add_argument(
        "--reuse",
        type=Path,
        action="append",
        metavar="DIR",
        help="an earlier labels or perturb folder of the same judge setup: its judgments of "
        "the unchanged steps are taken, not made again (repeatable)",
    )
    perturb.set_defaults(run=_run_perturb)

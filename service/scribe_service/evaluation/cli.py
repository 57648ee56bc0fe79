"""`scribe eval labels|consistency DATA.jsonl --out DIR`: the command line of evaluate.py.

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
    )
    asyncio.run(evaluate(options, Settings(**overrides)))
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="labelled trajectory records (docs/records.md)")
    parser.add_argument("--out", type=Path, required=True, help="report folder (resumable)")
    parser.add_argument(
        "--arms", default=",".join(ARM_NAMES), help=f"comma-separated, of {', '.join(ARM_NAMES)}"
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
        "--judge-mode", choices=("verdict", "logprob"), help="default SCRIBE_JUDGE_MODE"
    )
    consistency = sub.add_parser("consistency", help="repeated and cross-instance consistency")
    _common(consistency)
    consistency.add_argument("--repeats", type=int, default=10, help="verdict repeats per step")
    consistency.add_argument("--temperature", type=float, default=1.0)
    consistency.add_argument(
        "--logprob-repeats", type=int, default=3, help="logprob-mode repeats per step (0: none)"
    )

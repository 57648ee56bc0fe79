"""Judge modes side by side on one live vLLM-CPU server: the same steps scored as verdicts
(JSON under xgrammar: rationale, failure modes, score) and in logprob mode (the score digit
alone, one output token, expected score from top_logprobs).

Prints judged steps per second (steps that got a score; failed steps are counted apart and
never add to the rate) and output tokens per judged step (from the server's `usage`) for each
mode, with the ratio logprob / verdict, all taken in the same run on the same server. Each mode
is warmed up first on a trajectory outside the measured set (grammar compilation, prefix
cache of the shared system prompt), so neither pays start-up costs the other does not.

    .venv/bin/python bench/judge_modes.py [--records 6] [--url http://127.0.0.1:8011/v1]
                                          [--data ../shared/data/dev]

Without --url it builds and starts the test suite's vLLM server (SmolLM2-135M, fp32, eager;
tests/vllm_server.py). Routing uses the real MiniLM index, so the rubrics are the real ones.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from scribe_client.protocol import ScoreRequest  # noqa: E402
from scribe_service.app import build_pipeline  # noqa: E402
from scribe_service.pipeline.run import Pipeline  # noqa: E402
from scribe_service.settings import Settings  # noqa: E402
from vllm_server import vllm_server  # noqa: E402  (the test suite's server is the bench's too)

DATA = ROOT.parent / "shared" / "data" / "dev"
CORPORA = ("agentprocessbench_hotpotqa_dev.jsonl", "processbench_dev.jsonl")
MODES = ("verdict", "logprob")


def requests(data: Path, limit: int, mode: str, skip: int = 0) -> list[ScoreRequest]:
    """`limit` trajectories from both dev corpora, alternating (tool use and math)."""
    corpora = []
    for name in CORPORA:
        with (data / name).open() as handle:
            corpora.append([json.loads(line) for line in handle][skip : skip + limit])
    records = [r for pair in zip(*corpora, strict=True) for r in pair][:limit]
    return [
        ScoreRequest.model_validate(
            {"messages": r["messages"], "tools": r.get("tools"), "options": {"judge_mode": mode}}
        )
        for r in records
    ]


def output_tokens(pipeline: Pipeline, mode: str) -> float:
    value = pipeline.metrics.registry.get_sample_value(
        "scribe_judge_output_tokens_total", {"mode": mode}
    )
    return value or 0.0


async def measure(pipeline: Pipeline, data: Path, mode: str, limit: int) -> dict[str, Any]:
    await pipeline.score_batch(requests(data, 1, mode, skip=limit))  # warm-up, not measured
    batch = requests(data, limit, mode)
    tokens_before = output_tokens(pipeline, mode)
    started = time.perf_counter()
    results = await pipeline.score_batch(batch)
    seconds = time.perf_counter() - started
    steps = [s for r in results for s in r.steps]
    ok = [s for s in steps if s.status == "ok"]
    return {
        "steps": len(steps),
        "ok": len(ok),
        "failed": len(steps) - len(ok),
        "seconds": seconds,
        # A failed step costs time and yields no reward: only judged steps count as done.
        "steps_per_s": len(ok) / seconds,
        # Failed steps generate nothing: per judged step, so a failure cannot flatter a mode.
        "tokens_per_step": (output_tokens(pipeline, mode) - tokens_before) / max(1, len(ok)),
        "errors": sorted({s.error.type for s in steps if s.error}),
    }


@contextlib.contextmanager
def judge_url(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    log = Path(tempfile.mkdtemp(prefix="scribe-judge-modes-")) / "vllm.log"
    print(f"starting vLLM (log: {log})")
    with vllm_server(log) as started:
        yield started


async def run(url: str, data: Path, limit: int, min_mass: float) -> dict[str, dict[str, Any]]:
    settings = Settings(judge_url=url, judge_min_score_mass=min_mass, log_level="warning")
    pipeline = await build_pipeline(settings)
    assert pipeline.judge is not None
    try:
        return {mode: await measure(pipeline, data, mode, limit) for mode in MODES}
    finally:
        await pipeline.judge.backend.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=6, help="trajectories per mode")
    parser.add_argument("--url", help="an OpenAI-compatible judge already running")
    parser.add_argument(
        "--data", type=Path, default=DATA, help=f"the dev corpus folder (default: {DATA})"
    )
    parser.add_argument(
        "--min-score-mass",
        type=float,
        default=0.005,
        help="SmolLM2-135M puts little probability on the digits: keep its steps",
    )
    args = parser.parse_args()
    missing = [name for name in CORPORA if not (args.data / name).is_file()]
    if missing:
        parser.error(f"--data {args.data}: no {', '.join(missing)}")
    with judge_url(args.url) as url:
        report = asyncio.run(run(url, args.data, args.records, args.min_score_mass))

    verdict, logprob = report["verdict"], report["logprob"]
    print(f"judge {url}, {args.records} trajectories, {verdict['steps']} steps per mode")
    print(f"{'':24}{'verdict':>12}{'logprob':>12}{'ratio':>10}")
    for key, label in (
        ("steps_per_s", "judged steps / s"),
        ("tokens_per_step", "output tokens / step"),
        ("seconds", "wall seconds"),
    ):
        ratio = logprob[key] / verdict[key] if verdict[key] else float("nan")
        print(f"{label:24}{verdict[key]:12.2f}{logprob[key]:12.2f}{ratio:9.2f}x")
    for mode in MODES:
        r = report[mode]
        print(
            f"{mode}: {r['ok']}/{r['steps']} steps judged, {r['failed']} failed; "
            f"errors: {r['errors'] or 'none'}"
        )


if __name__ == "__main__":
    main()

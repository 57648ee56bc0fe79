"""Prompt layout for prefix caching (issue 14): the rubric first, or just before the step.

    python bench/prompt_layout.py --server vllm|llama [--size tiny|quick|full]
        [--max-context-chars N] --out FILE.json

The judge's user prompt holds the rubric block (`## Rubric` and `{{rubric}}`), the task, the
reference, the history and the step. Two orders of the same blocks are measured:

- `rubric-first` (the order render.py was written for): every step routed to one prototype
  shares system prompt + rubric, whatever its trajectory.
- `rubric-late`: task, reference and history first, the rubric just before `## The step to
  grade`. Consecutive steps of one trajectory then share system prompt + task + history (the
  history only grows), and the rollouts of a GRPO group share that much more.

`with_layout` rewrites a template into either order. The command copies `prototypes/` twice
into a temporary folder, one per layout (both judge_user templates rewritten, nothing else),
starts SmolLM2 on the judge server once (bench/vs_direct.py's `judge_server`) and one `scribe
serve` per layout on it, and sends bench/vs_direct.py's workloads (`SIZES`, the GRPO and the
distinct rounds, after its warm-up request) through both: every request of a round at once,
each round through both layouts, the layout that goes first alternating. Rounds never repeat
steps, so neither the service's judgment cache nor the server's prefix cache carries a step
from one round to the next; the rubric text does carry over (it is the same in every round),
as it does between the batches of a training run. vLLM's prefix-cache counters (tokens looked
up and found) and its prompt-token counter are read around each arm; llama.cpp's server has
neither, so there only the throughput is compared. `ratio` is rubric-late's steps per second
over rubric-first's, per workload.

`--max-context-chars` sets both services' SCRIBE_MAX_CONTEXT_CHARS: half of it is the history's
budget, and a history over it is a window over its last characters, which slides with every
step and so shares no prefix with the step before; a larger budget lets rubric-late's history
grow as the layout assumes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from suite import (  # noqa: E402
    DEFAULT_DATA,
    Record,
    machine_context,
    read_records,
    scribe_serve,
    write_document,
)
from vs_direct import (  # noqa: E402
    SIZES,
    SMOLLM2_MIN_SCORE_MASS,
    PrefixCache,
    Tally,
    build_workloads,
    judge_server,
    read_prefix_cache,
    score_through_service,
)

Layout = Literal["rubric-first", "rubric-late"]
LAYOUTS: tuple[Layout, Layout] = ("rubric-first", "rubric-late")
RUBRIC_BLOCK = "## Rubric\n{{rubric}}\n\n"
STEP_HEADING = "## The step to grade"
TEMPLATES = ("judge_user.txt", "judge_user_logprob.txt")
PROTOTYPES = ROOT / "prototypes"


# --- the layouts ------------------------------------------------------------------------------


def with_layout(template: str, layout: Layout, name: str = "template") -> str:
    """`template` with its rubric block at the top (`rubric-first`) or just before the step's
    heading (`rubric-late`), whichever order it has now; the other blocks keep their order.
    `name` (the file) is what an error names."""
    found = template.count(RUBRIC_BLOCK)
    if found != 1:
        raise ValueError(f"{name}: {RUBRIC_BLOCK!r} occurs {found} times, not once")
    rest = template.replace(RUBRIC_BLOCK, "", 1)
    if layout == "rubric-first":
        return RUBRIC_BLOCK + rest
    if layout != "rubric-late":
        raise ValueError(f"{name}: unknown layout {layout!r}")
    headings = rest.count(STEP_HEADING)
    if headings != 1:
        raise ValueError(f"{name}: {STEP_HEADING!r} occurs {headings} times, not once")
    head, _, tail = rest.partition(STEP_HEADING)
    return head + RUBRIC_BLOCK + STEP_HEADING + tail


def layout_library(source: Path, target: Path, layout: Layout) -> Path:
    """A copy of the prototype library `source` at `target`, its judge_user templates in
    `layout`; everything else byte for byte."""
    shutil.copytree(source, target)
    for name in TEMPLATES:
        path = target / "templates" / name
        text = with_layout(path.read_text(encoding="utf-8"), layout, str(path))
        path.write_text(text, encoding="utf-8")
    return target


# --- the judge server's counters ---------------------------------------------------------------


def prompt_tokens(metrics_text: str) -> float | None:
    """vLLM's prompt-token counter (summed over engines) from a /metrics page; None when the
    page has none (llama.cpp, the stand-in)."""
    values = [
        float(line.rpartition(" ")[2])
        for line in metrics_text.splitlines()
        if line.partition("{")[0].partition(" ")[0] == "vllm:prompt_tokens_total"
    ]
    return sum(values) if values else None


def read_prompt_tokens(judge_url: str) -> float | None:
    root = judge_url.rstrip("/").removesuffix("/v1")
    try:
        response = httpx.get(f"{root}/metrics", timeout=10)
    except httpx.TransportError:
        return None
    return prompt_tokens(response.text) if response.status_code == 200 else None


# --- one layout's work ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LayoutRun:
    """What one layout's service did: the steps (vs_direct's `Tally`), how many its judgment
    cache answered, and what the judge server's counters gained meanwhile (None: no counter)."""

    tally: Tally
    cached_steps: int = 0
    prefix_cache: PrefixCache | None = PrefixCache(0.0, 0.0)
    prompt_tokens: float | None = 0.0

    def __add__(self, other: LayoutRun) -> LayoutRun:
        cache = (
            None
            if self.prefix_cache is None or other.prefix_cache is None
            else self.prefix_cache + other.prefix_cache
        )
        tokens = (
            None
            if self.prompt_tokens is None or other.prompt_tokens is None
            else self.prompt_tokens + other.prompt_tokens
        )
        return LayoutRun(
            self.tally + other.tally, self.cached_steps + other.cached_steps, cache, tokens
        )

    def summary(self) -> dict[str, Any]:
        rate = None if self.prefix_cache is None else self.prefix_cache.hit_rate
        return {
            "steps_judged": self.tally.ok,
            "steps_failed": self.tally.failed,
            "errors": self.tally.errors,
            "wall_s": round(self.tally.wall_s, 3),
            "steps_per_s": round(self.tally.steps_per_s, 4),
            "prefix_cache_hit_rate": None if rate is None else round(rate, 4),
            "prefix_cache_tokens": None if self.prefix_cache is None else asdict(self.prefix_cache),
            "prompt_tokens": self.prompt_tokens,
            "cached_steps": self.cached_steps,
        }


def run_layout(judge_url: str, service_url: str, payloads: Sequence[Record]) -> LayoutRun:
    """Every payload sent at once to one layout's service, the server's counters read around."""
    cache, tokens = read_prefix_cache(judge_url), read_prompt_tokens(judge_url)
    tally, cached = asyncio.run(score_through_service(service_url, payloads))
    cache_after, tokens_after = read_prefix_cache(judge_url), read_prompt_tokens(judge_url)
    return LayoutRun(
        tally,
        cached,
        None if cache is None or cache_after is None else cache_after - cache,
        None if tokens is None or tokens_after is None else tokens_after - tokens,
    )


def compare_rounds(
    judge_url: str, services: Mapping[Layout, str], rounds: Sequence[Sequence[Record]]
) -> dict[str, Any]:
    """Each round through both layouts' services, rubric-first first in even rounds; each
    layout's totals, `ratio` (rubric-late's steps/s over rubric-first's) and every round."""
    totals = {layout: LayoutRun(Tally()) for layout in LAYOUTS}
    detail = []
    for number, payloads in enumerate(rounds):
        order = LAYOUTS if number % 2 == 0 else LAYOUTS[::-1]
        this: dict[str, Any] = {"first": order[0], "requests": len(payloads)}
        for layout in order:
            run = run_layout(judge_url, services[layout], payloads)
            totals[layout] += run
            this[layout] = run.summary()
        detail.append(this)
    first, late = (totals[layout].tally.steps_per_s for layout in LAYOUTS)
    return {
        "ratio": round(late / first, 4) if first else None,
        **{layout: totals[layout].summary() for layout in LAYOUTS},
        "rounds": detail,
    }


def measure_layouts(
    judge_url: str,
    rounds: Mapping[str, Sequence[Sequence[Record]]],
    warm_up: Sequence[Record],
    concurrency: int,
    work_dir: Path,
    max_context_chars: int | None = None,
) -> dict[str, Any]:
    """Both layouts on the judge server at `judge_url` (its `/v1`): a `scribe serve` per
    layout (its library in `work_dir`, beside its log), `concurrency` judge calls in flight
    each; `warm_up` through both first (rubric-first, then rubric-late), then each named
    workload's rounds (`compare_rounds`). `max_context_chars`: both services'
    SCRIBE_MAX_CONTEXT_CHARS (None: the default)."""
    env = {
        "SCRIBE_JUDGE_CONCURRENCY": str(concurrency),
        "SCRIBE_JUDGE_MIN_SCORE_MASS": str(SMOLLM2_MIN_SCORE_MASS),
    }
    if max_context_chars is not None:
        # The history is a window over the last characters once over its half of this
        # budget, and a window that slides shares no prefix with the step before.
        env["SCRIBE_MAX_CONTEXT_CHARS"] = str(max_context_chars)
    with contextlib.ExitStack() as stack:
        services: dict[Layout, str] = {}
        for layout in LAYOUTS:
            library = layout_library(PROTOTYPES, work_dir / layout, layout)
            service = stack.enter_context(
                scribe_serve(
                    judge_url,
                    work_dir / f"serve-{layout}.log",
                    extra_env={**env, "SCRIBE_PROTOTYPES_DIR": str(library)},
                )
            )
            services[layout] = service.url
        warmed = {
            layout: run_layout(judge_url, services[layout], warm_up).summary()
            for layout in LAYOUTS
            if warm_up
        }
        workloads = {
            name: compare_rounds(judge_url, services, workload) for name, workload in rounds.items()
        }
    return {"warm_up": warmed, "workloads": workloads}


# --- command -------------------------------------------------------------------------------------


def measure(
    server: Literal["llama", "vllm"],
    records: Mapping[str, Sequence[Record]],
    size: str,
    concurrency: int | None = None,
    llama_threads: int | None = None,
    max_context_chars: int | None = None,
) -> dict[str, Any]:
    """Start SmolLM2 on `server` and measure both layouts on vs_direct's workloads of `size`.
    `concurrency` None: 8 judge calls in flight on vLLM, 1 on llama.cpp (one slot)."""
    concurrency = concurrency or (8 if server == "vllm" else 1)
    workloads = build_workloads(records, SIZES[size])
    started, load_at_start = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work_dir = Path(tmp)
        with judge_server(server, work_dir / "judge.log", llama_threads) as judge_url:
            ready_s = round(time.time() - started, 1)
            result = measure_layouts(
                judge_url,
                workloads.rounds,
                workloads.warm_up,
                concurrency,
                work_dir,
                max_context_chars,
            )
    return {
        "server": server,
        **{f"ratio_{name}": w["ratio"] for name, w in result["workloads"].items()},
        **result,
        "context": {
            "judge": f"SmolLM2-135M-Instruct on {server}, logprob mode",
            "layouts": {
                "rubric-first": "system, rubric, task, reference, history, step",
                "rubric-late": "system, task, reference, history, rubric, step",
            },
            "ratio": "rubric-late steps/s over rubric-first steps/s",
            "concurrency": concurrency,
            "size": size,
            "sizes": asdict(SIZES[size]),
            "min_score_mass": SMOLLM2_MIN_SCORE_MASS,
            "llama_threads": llama_threads,
            "max_context_chars": max_context_chars,
            "judge_ready_s": ready_s,
            **machine_context(started, load_at_start),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("llama", "vllm"), required=True)
    parser.add_argument("--size", choices=sorted(SIZES), default="quick", help="vs_direct SIZES")
    parser.add_argument("--llama-threads", type=int, help="llama.cpp's --n_threads")
    parser.add_argument("--concurrency", type=int, help="judge calls in flight per service")
    parser.add_argument(
        "--max-context-chars", type=int, help="SCRIBE_MAX_CONTEXT_CHARS of both services"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the dev JSONL folder")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    args = parser.parse_args()
    document = measure(
        args.server,
        read_records(args.data),
        args.size,
        args.concurrency,
        args.llama_threads,
        args.max_context_chars,
    )
    write_document(document, "python bench/prompt_layout.py", args.out)


if __name__ == "__main__":
    main()

"""Measure the service on real components: load times, /v1/route latency per step and the
fallback rate over the dev corpus, and per-step judge latency with the embedded judge.

Each latency is printed beside a baseline taken in the same run, so the ratio survives a
noisy machine: routing against bare MiniLM encoding of the same subgoals, and a judged step
against the same step judged again, when the embedded judge's state cache already holds the
whole prompt (what is left is generation: the ratio is what prompt evaluation costs). A step's
cold time is taken in a fresh process, as its first call; its warm time in a process that has
already judged another step (the shared system prompt is then cached).

    .venv/bin/python bench/measure.py [--judge-steps 6] [--records 200] [--data DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from scribe_service.app import build_pipeline, create_app
from scribe_service.library import Prototype
from scribe_service.pipeline.embed import SentenceTransformerEmbedder
from scribe_service.pipeline.judge import EmbeddedJudge, Messages
from scribe_service.pipeline.render import render_messages
from scribe_service.pipeline.run import Pipeline
from scribe_service.pipeline.segment import segment
from scribe_service.settings import BUNDLED_EMBEDDER, Settings

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dev"
CORPORA = ("agentprocessbench_hotpotqa_dev.jsonl", "processbench_dev.jsonl")
Prompt = tuple[Messages, Prototype]


def records(data: Path, name: str, limit: int) -> list[dict[str, Any]]:
    with (data / name).open() as handle:
        return [json.loads(line) for line in handle][:limit]


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def bench_routing(data: Path, limit: int) -> None:
    if limit == 0:
        return
    embedder, load = timed(SentenceTransformerEmbedder, BUNDLED_EMBEDDER)
    print(f"MiniLM load: {load:.2f} s")
    settings = Settings(judge_url="http://127.0.0.1:9/v1")  # /v1/route never calls it
    app = create_app(settings, embedder=embedder)
    with TestClient(app) as client:
        for name in CORPORA:
            corpus = records(data, name, limit)
            steps = fallbacks = 0
            route_time = 0.0
            batches: list[list[str]] = []
            for record in corpus:
                payload = {"messages": record["messages"], "tools": record.get("tools")}
                response, seconds = timed(client.post, "/v1/route", json=payload)
                route_time += seconds
                routed = response.json()["steps"]
                steps += len(routed)
                fallbacks += sum(step["fallback"] for step in routed)
                batches.append([step["subgoal"] for step in routed])
            _, encode_time = timed(lambda: [embedder.encode(b) for b in batches])  # noqa: B023
            print(
                f"{name}: {len(corpus)} trajectories, {steps} steps, "
                f"fallback rate {fallbacks / steps:.1%}; /v1/route {1000 * route_time / steps:.2f} "
                f"ms/step vs bare MiniLM encode of the same batches "
                f"{1000 * encode_time / steps:.2f} ms/step (ratio {route_time / encode_time:.2f})"
            )


async def judge_prompts(data: Path, count: int) -> tuple[Pipeline, list[Prompt], float]:
    """A fresh pipeline (timed) and the first `count` judge prompts of two dev trajectories
    (an agent one and a math one), in a fixed order."""
    settings = Settings(log_level="warning")
    start = time.perf_counter()
    pipeline = await build_pipeline(settings)
    load = time.perf_counter() - start
    prompts: list[Prompt] = []
    record = records(data, "agentprocessbench_hotpotqa_dev.jsonl", 10)[3]
    math = records(data, "processbench_dev.jsonl", 3)[0]
    for source in (record, math):
        segmented = segment(messages=_messages(source))
        routes = pipeline.index.route(
            pipeline.embedder.encode([s.subgoal for s in segmented.steps]),
            pipeline.min_similarity,
            segmented.steps,
        )
        for step, route in zip(segmented.steps, routes, strict=True):
            messages = render_messages(
                pipeline.library,
                route.prototype,
                segmented,
                step,
                max_step_chars=settings.max_step_chars,
                max_context_chars=settings.max_context_chars,
            )
            prompts.append((messages, route.prototype))
    return pipeline, prompts[:count], load


async def cold_step(data: Path, number: int) -> dict[str, Any]:
    """Prompt `number` judged as the first thing this process does after loading: nothing of
    it, not even the shared system prompt, is in the judge's cache."""
    pipeline, prompts, load = await judge_prompts(data, number + 1)
    judge = pipeline.judge
    assert judge is not None and isinstance(judge.backend, EmbeddedJudge)
    messages, prototype = prompts[number]
    start = time.perf_counter()
    verdict = await judge.verdict(messages, prototype)
    seconds = time.perf_counter() - start
    tokens = len(judge.backend.tokenize("".join(m["content"] for m in messages)))
    await judge.backend.aclose()
    return {"load": load, "seconds": seconds, "score": verdict.score, "tokens": tokens,
            "prototype": prototype.id}  # fmt: skip


def bench_judge(data: Path, steps_wanted: int) -> None:
    """Per judged step, three figures: cold (a fresh process, the step its first call),
    warm (a process that has judged other steps: the shared system prompt is cached) and
    again (the same prompt a second time: the whole prompt is cached, generation is left)."""
    cold = []
    for number in range(steps_wanted):
        done = subprocess.run(
            [sys.executable, __file__, "--data", str(data), "--cold-step", str(number)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        cold.append(json.loads(done.stdout.strip().splitlines()[-1]))
        step = cold[-1]
        print(
            f"  cold {step['prototype']}: {step['tokens']} prompt tokens, score {step['score']}, "
            f"{step['seconds']:.1f} s (process load {step['load']:.1f} s)"
        )
    asyncio.run(bench_warm(data, steps_wanted, [step["seconds"] for step in cold]))


async def bench_warm(data: Path, steps_wanted: int, cold: list[float]) -> None:
    # One prompt more than measured: it warms the process up and is not counted.
    pipeline, prompts, load = await judge_prompts(data, steps_wanted + 1)
    print(f"pipeline load (library, MiniLM, FAISS, GGUF assembly check, llama.cpp): {load:.2f} s")
    judge = pipeline.judge
    assert judge is not None and isinstance(judge.backend, EmbeddedJudge)
    *measured, warm_up = prompts
    await judge.verdict(*warm_up)
    warm, again = [], []
    for messages, prototype in measured:
        start = time.perf_counter()
        await judge.verdict(messages, prototype)
        warm.append(time.perf_counter() - start)
        start = time.perf_counter()
        await judge.verdict(messages, prototype)
        again.append(time.perf_counter() - start)
    await judge.backend.aclose()
    median = statistics.median
    print(
        f"judge, median over {len(warm)} steps: cold (fresh process) {median(cold):.1f} s/step; "
        f"warm process, new prompt {median(warm):.1f} s; same prompt again (cached, generation "
        f"only) {median(again):.1f} s (warm / again {median(warm) / median(again):.2f})"
    )


def _messages(record: dict[str, Any]) -> Any:
    from scribe_client.protocol import ScoreRequest

    return ScoreRequest(messages=record["messages"]).messages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DATA, help=f"the dev corpus (default {DATA})")
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--judge-steps", type=int, default=6)
    parser.add_argument("--cold-step", type=int, help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    missing = [name for name in CORPORA if not (args.data / name).is_file()]
    if missing:
        parser.error(f"--data {args.data}: no {', '.join(missing)}")
    if args.cold_step is not None:
        print(json.dumps(asyncio.run(cold_step(args.data, args.cold_step))))
        return
    bench_routing(args.data, args.records)
    if args.judge_steps:
        bench_judge(args.data, args.judge_steps)


if __name__ == "__main__":
    main()

"""Measure the service on real components: load times, /v1/route latency per step and the
fallback rate over the dev corpus, and per-step judge latency with the embedded judge.

Each latency is printed beside a baseline taken in the same run, so the ratio survives a
noisy machine: routing against bare MiniLM encoding of the same subgoals, and a judged step
against the same step judged again, when the embedded judge's state cache already holds the
whole prompt (what is left is generation: the ratio is what prompt evaluation costs).

    .venv/bin/python bench/measure.py [--judge-steps 6] [--records 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from scribe_service.app import build_pipeline, create_app
from scribe_service.pipeline.embed import SentenceTransformerEmbedder
from scribe_service.pipeline.judge import EmbeddedJudge
from scribe_service.pipeline.render import render_messages
from scribe_service.pipeline.segment import segment
from scribe_service.settings import BUNDLED_EMBEDDER, Settings

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dev"


def records(name: str, limit: int) -> list[dict[str, Any]]:
    with (DATA / name).open() as handle:
        return [json.loads(line) for line in handle][:limit]


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def bench_routing(limit: int) -> None:
    if limit == 0:
        return
    embedder, load = timed(SentenceTransformerEmbedder, BUNDLED_EMBEDDER)
    print(f"MiniLM load: {load:.2f} s")
    settings = Settings(judge_url="http://127.0.0.1:9/v1")  # /v1/route never calls it
    app = create_app(settings, embedder=embedder)
    with TestClient(app) as client:
        for name in ("agentprocessbench_hotpotqa_dev.jsonl", "processbench_dev.jsonl"):
            corpus = records(name, limit)
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


async def bench_judge(steps_wanted: int) -> None:
    settings = Settings()
    start = time.perf_counter()
    pipeline = await build_pipeline(settings)
    load = time.perf_counter() - start
    print(f"pipeline load (library, MiniLM, FAISS, GGUF assembly check, llama.cpp): {load:.2f} s")
    judge = pipeline.judge
    assert judge is not None and isinstance(judge.backend, EmbeddedJudge)
    record = records("agentprocessbench_hotpotqa_dev.jsonl", 10)[3]
    math = records("processbench_dev.jsonl", 3)[0]
    prompts = []
    for source in (record, math):
        segmented = segment(messages=_messages(source))
        routes = pipeline.index.route(
            pipeline.embedder.encode([s.subgoal for s in segmented.steps]), pipeline.min_similarity
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
    prompts = prompts[:steps_wanted]
    cold, warm = [], []
    for messages, prototype in prompts:
        start = time.perf_counter()
        verdict = await judge.verdict(messages, prototype)
        cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        await judge.verdict(messages, prototype)
        warm.append(time.perf_counter() - start)
        tokens = len(judge.backend.tokenize("".join(m["content"] for m in messages)))
        print(f"  {prototype.id}: {tokens} prompt tokens, score {verdict.score}, {cold[-1]:.1f} s")
    print(
        f"judge: {statistics.median(cold):.1f} s/step median over {len(cold)} steps; "
        f"same prompt again (cached, generation only) {statistics.median(warm):.1f} s "
        f"(ratio {statistics.median(cold) / statistics.median(warm):.2f})"
    )
    await judge.backend.aclose()


def _messages(record: dict[str, Any]) -> Any:
    from scribe_client.protocol import ScoreRequest

    return ScoreRequest(messages=record["messages"]).messages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--judge-steps", type=int, default=6)
    args = parser.parse_args()
    bench_routing(args.records)
    if args.judge_steps:
        asyncio.run(bench_judge(args.judge_steps))


if __name__ == "__main__":
    main()

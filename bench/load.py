"""Load: many concurrent trainer clients against `scribe serve` on loopback, judged by a real,
fast judge (SmolLM2-135M behind llama.cpp's OpenAI-compatible server).

Each client behaves as a trainer's should: told 429 or 503 with Retry-After, it waits as long
as the server asks and sends the request again, until the request's deadline. A request is lost
when it got no 200 by its deadline (or an answer no client can act on), so "lost" is what a
trainer would have gone without.

Prints what happened to every request (completed / retried / 429 and 503 answers / lost) and
the latency of completed requests, from first try to 200 with the waits included, beside a
baseline taken in the same run: the same request from a single client on the idle service.
The ratio is what queueing behind the judge costs.

    .venv/bin/python bench/load.py [--clients 64] [--requests 50] [--max-pending 32]
                                   [--max-seconds 600] [--deadline 120]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support import (  # noqa: E402  (the test support module is the bench's too)
    llama_cpp_server,
    load_trajectory,
    run_load,
    scribe_server,
    smollm2_gguf,
)


def baseline(url: str, count: int) -> list[float]:
    times = []
    with httpx.Client(base_url=url, timeout=120) as http:
        for i in range(count):
            started = time.monotonic()
            http.post("/v1/score", json=load_trajectory(10_000 + i)).raise_for_status()
            times.append(time.monotonic() - started)
    return sorted(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=50, help="per client")
    parser.add_argument("--max-pending", type=int, default=32, help="SCRIBE_MAX_PENDING")
    parser.add_argument("--max-seconds", type=float, default=600, help="no new request after")
    parser.add_argument(
        "--deadline",
        type=float,
        default=120,
        help="seconds a request may take, retries and waits included, before it counts as lost",
    )
    args = parser.parse_args()

    logs = Path(tempfile.mkdtemp(prefix="scribe-load-"))
    with llama_cpp_server(smollm2_gguf(), "smollm2-135m", logs / "judge.log") as judge_url:
        env = {
            "SCRIBE_JUDGE_URL": judge_url,
            "SCRIBE_JUDGE_DIALECT": "json_object",
            "SCRIBE_MAX_PENDING": str(args.max_pending),
            "SCRIBE_RETRY_AFTER": "1",
            "SCRIBE_LOG_LEVEL": "warning",
        }
        with scribe_server(logs / "scribe.log", env) as url:
            base = baseline(url, 5)
            started = time.monotonic()
            report = asyncio.run(
                run_load(
                    url,
                    clients=args.clients,
                    requests=args.requests,
                    max_seconds=args.max_seconds,
                    deadline=args.deadline,
                )
            )
            wall = time.monotonic() - started

    base_p50 = base[len(base) // 2]
    total = args.clients * args.requests
    lines = [
        f"load: {args.clients} clients x {args.requests} requests, SCRIBE_MAX_PENDING="
        f"{args.max_pending}, judge SmolLM2-135M (llama.cpp server), logs in {logs}",
        f"sent        {report.sent:6d}   of {total}; the rest not sent after {args.max_seconds:g}s",
        f"completed   {report.completed:6d}   by status {report.statuses}, "
        f"{report.failed_steps} steps not judged",
        f"retried     {report.retried:6d}   requests that needed more than one try",
        f"429         {report.rejected:6d}   answers (all tries)",
        f"503         {report.unavailable:6d}   answers (all tries)",
        f"lost        {len(report.lost):6d}   no 200 within {args.deadline:g}s: {report.lost[:3]}",
        f"wall        {wall:8.1f} s   throughput {report.completed / wall:.2f} completed/s",
        f"baseline    p50 {base_p50:6.2f} s   (one client, idle service, {len(base)} requests)",
    ]
    for q in (0.5, 0.99):
        value = report.percentile(q)
        lines.append(f"under load  p{round(q * 100):<3d}{value:6.2f} s   {value / base_p50:6.1f}x")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""What one judge call costs the calling process, per HTTP client (issue 14).

    .venv/bin/python bench/judge_client.py [--calls 3000] [--concurrency 64] [--rounds 3]

Each client sends the same logprob-mode chat-completions call (a rendered-size prompt) to the
speed suite's zero-latency stand-in judge (bench/suite.py, its own process), `concurrency`
calls in flight, and the caller's CPU time per call is measured (process time: this process
does nothing else). Clients, measured in alternating rounds on this noisy machine:

- `httpx-64`: one httpx.AsyncClient with one pool of `concurrency` connections, as the service
  had it. httpcore scans its whole pool on every request and response, once per idle
  connection (quadratic in the pool).
- `httpx-sharded`: the service's client now (`backends.openai.OpenAIJudge`): the pool split
  into shards of `SHARD_CONNECTIONS`, each call on the least busy.
- `raw-asyncio`: a bare HTTP/1.1 keep-alive client on asyncio streams (Content-Length bodies
  only, no chunked, no TLS, no redirects): a floor for what any client must spend, written
  here for this measurement only, never used by the service.

aiohttp, when installed, would be a fifth; it is not a dependency of the project, and this
script does not install it. (sniffio is installed, as the service extra requires: without it
httpcore searches sys.path for it on every lock, event and request.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from suite import instant_judge  # noqa: E402

from scribe_service.pipeline.backends.base import Sampling  # noqa: E402
from scribe_service.pipeline.backends.openai import OpenAIJudge  # noqa: E402

Call = Callable[[], Awaitable[dict[str, Any]]]
PROMPT = "Rate this step 0-3. " + "The rubric and the trajectory excerpt. " * 80  # ~3 kB


def payload() -> dict[str, Any]:
    return {
        "model": "instant",
        "messages": [{"role": "system", "content": PROMPT}, {"role": "user", "content": PROMPT}],
        "temperature": 0.0,
        "top_p": 1.0,
        "max_tokens": 1,
        "seed": 0,
        "logprobs": True,
        "top_logprobs": 5,
    }


class RawClient:
    """HTTP/1.1 keep-alive POSTs of JSON over a free list of asyncio stream connections."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.host, self.port, self.path = host, port, path
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, body: dict[str, Any]) -> dict[str, Any]:
        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        data = json.dumps(body).encode()
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode()
        writer.write(head + data)
        status_and_headers = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in status_and_headers.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        answer = await reader.readexactly(length)
        self._idle.append((reader, writer))
        result: dict[str, Any] = json.loads(answer)
        return result

    async def aclose(self) -> None:
        for _, writer in self._idle:
            writer.close()


async def cpu_per_call(call: Call, calls: int, concurrency: int) -> tuple[float, float]:
    """(caller CPU ms, wall ms) per call with `concurrency` in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            await call()

    await asyncio.gather(*(one() for _ in range(concurrency)))  # connect outside the figure
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(calls)))
    return 1000 * (time.process_time() - cpu) / calls, 1000 * (time.perf_counter() - wall) / calls


async def measure(url: str, kind: str, calls: int, concurrency: int) -> tuple[float, float]:
    body = payload()
    if kind == "raw-asyncio":
        parsed = httpx.URL(url)
        raw = RawClient(parsed.host, parsed.port or 80, parsed.path + "/chat/completions")
        try:
            return await cpu_per_call(lambda: raw.post(body), calls, concurrency)
        finally:
            await raw.aclose()
    if kind == "httpx-sharded":
        judge = OpenAIJudge(
            url, model="instant", dialect="json_schema", max_connections=concurrency
        )
        sampling = Sampling(max_tokens=1)
        messages = body["messages"]

        async def scored() -> dict[str, Any]:
            await judge.score_token(messages, sampling)
            return {}

        try:
            return await cpu_per_call(scored, calls, concurrency)
        finally:
            await judge.aclose()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:

        async def posted() -> dict[str, Any]:
            response = await http.post("/chat/completions", json=body)
            result: dict[str, Any] = response.json()
            return result

        return await cpu_per_call(posted, calls, concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    kinds = ["httpx-64", "httpx-sharded", "raw-asyncio"]
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    with instant_judge() as url:
        for number in range(args.rounds):
            for kind in kinds if number % 2 == 0 else kinds[::-1]:
                results[kind].append(asyncio.run(measure(url, kind, args.calls, args.concurrency)))
    print(f"{'client':<20}{'CPU ms/call':>12}{'wall ms/call':>14}   (median of rounds)")
    for kind in kinds:
        cpu = statistics.median(r[0] for r in results[kind])
        wall = statistics.median(r[1] for r in results[kind])
        print(f"{kind:<20}{cpu:12.3f}{wall:14.3f}")


if __name__ == "__main__":
    main()

"""Judge replicas, live: vLLM and llama.cpp's server (both SmolLM2-135M) behind one service.

Two vLLM servers would not fit beside everything else on a 2-core CI machine; a vLLM and a
llama.cpp replica also check that each replica's dialect is detected on its own. Clients
keep scoring while the llama.cpp replica is stopped: no request may be lost, and results
keep coming, from vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from scribe_client.protocol import ScoreResponse
from scribe_service.app import create_app
from scribe_service.pipeline.replicas import ReplicaPool
from scribe_service.settings import Settings
from support import (
    PROTOTYPES,
    FakeEmbedder,
    llama_cpp_server,
    load_trajectory,
    smollm2_gguf,
    uvicorn_in_thread,
)

pytestmark = pytest.mark.vllm


@contextlib.contextmanager
def serve(settings: Settings) -> Iterator[tuple[str, ReplicaPool]]:
    """The service on real HTTP (uvicorn in a thread), and its replica pool."""
    app = create_app(settings, embedder=FakeEmbedder())
    with uvicorn_in_thread(app) as url:
        pool = app.state.pipeline.judge.backend
        assert isinstance(pool, ReplicaPool)
        yield url, pool


Results = list[tuple[float, ScoreResponse]]


async def _client(
    http: httpx.AsyncClient, number: int, results: Results, running: asyncio.Event
) -> list[str]:
    lost = []
    request = 0
    while running.is_set():
        payload = load_trajectory(number * 1000 + request) | {"options": {"judge_mode": "logprob"}}
        request += 1
        try:
            response = await http.post("/v1/score", json=payload, timeout=120)
        except httpx.HTTPError as exc:
            lost.append(f"{type(exc).__name__}: {exc}")
            continue
        if response.status_code != 200:
            lost.append(f"HTTP {response.status_code}: {response.text[:200]}")
            continue
        results.append((time.monotonic(), ScoreResponse.model_validate_json(response.content)))
    return lost


async def score_through_a_stop(
    url: str, stop_replica: Callable[[], None], clients: int, after: float
) -> tuple[list[str], Results, float]:
    """`clients` keep scoring; once both replicas have answered (60 s at most) `stop_replica`
    runs, and scoring goes on for `after` seconds. Returns what was lost, the results and
    the time of the stop."""
    results: Results = []
    running = asyncio.Event()
    running.set()
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits) as http:
        tasks = [asyncio.create_task(_client(http, n, results, running)) for n in range(clients)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len({s.judge_replica for _, r in results for s in r.steps}) == 2:
                break
            await asyncio.sleep(0.2)
        await asyncio.to_thread(stop_replica)
        stopped = time.monotonic()
        await asyncio.sleep(after)
        running.clear()
        lost = [item for found in await asyncio.gather(*tasks) for item in found]
    return lost, results, stopped


def _wait_for_dialects(pool: ReplicaPool, timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    while any(r.backend.dialect == "auto" for r in pool.replicas) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [r.backend.dialect for r in pool.replicas]


def test_replica_stopped_mid_run_loses_nothing(vllm_url: str, tmp_path: Path) -> None:
    with contextlib.ExitStack() as llama:
        llama_url = llama.enter_context(
            # n_ctx: logprobs make llama-cpp-python's server keep and normalise logits for the
            # whole context on every call; a prompt here is under 1000 tokens.
            llama_cpp_server(smollm2_gguf(), "smollm2-135m", tmp_path / "llama.log", n_ctx=2048)
        )
        settings = Settings(
            prototypes_dir=PROTOTYPES,
            judge_url=f"{vllm_url},{llama_url}",
            judge_min_score_mass=0.005,
            judge_probe_interval=1.0,
            judge_unreachable_after=2,
            judge_concurrency=6,
        )
        with serve(settings) as (url, pool):
            # `auto`, per replica: vLLM gets json_schema, llama.cpp's server json_object.
            assert _wait_for_dialects(pool) == ["json_schema", "json_object"]
            lost, results, stopped = asyncio.run(
                score_through_a_stop(url, llama.close, clients=3, after=10)
            )
            vllm_replica, llama_replica = pool.replicas

    assert lost == []
    before = [r for t, r in results if t < stopped]
    after = [r for t, r in results if t > stopped + 3]  # started after the stop
    assert {s.judge_replica for r in before for s in r.steps} == {vllm_url, llama_url}
    assert len(after) >= 5, f"{len(after)} results after the stop"
    assert {s.judge_replica for r in after for s in r.steps} == {vllm_url}
    failed = [s.error for _, r in results for s in r.steps if s.error]
    assert failed == []
    assert not llama_replica.health.available and vllm_replica.health.available

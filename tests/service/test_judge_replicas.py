"""Replicas through the real app, over real HTTP: two scripted judges on loopback. A replica
that goes away costs no step; /v1/score answers 503 only when none is left, and recovers by
itself when one comes back."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from scribe_client.protocol import ScoreResponse
from scribe_service.app import create_app
from scribe_service.settings import Settings
from support import PROTOTYPES, FakeEmbedder, ScriptedJudgeHandler, free_port

TRAJECTORY = {
    "prompt": "What is 3 * 4 + 1?",
    "steps": [{"content": f"Step {i}: compute part {i}."} for i in range(4)],
}


class VerdictHandler(ScriptedJudgeHandler):
    def reply(self) -> str:
        time.sleep(0.05)  # long enough for concurrent steps to overlap
        return json.dumps({"rationale": "ok", "failure_modes": [], "score": 2})


class Replica:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), VerdictHandler)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def replicas() -> Iterator[tuple[Replica, Replica]]:
    a, b = Replica(), Replica()
    yield a, b
    for replica in (a, b):
        replica.stop()


def _wait(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_replicas_fail_over_and_recover(replicas: tuple[Replica, Replica], tmp_path: Path) -> None:
    a, b = replicas
    settings = Settings(
        prototypes_dir=PROTOTYPES, cache_dir=tmp_path, judge_url=f"{a.url},{b.url}",
        judge_probe_interval=0.1, judge_unreachable_after=2, judge_timeout=2,
        judgment_cache=False,  # the same trajectory again must reach a replica again
    )  # fmt: skip
    with TestClient(create_app(settings, embedder=FakeEmbedder())) as client:

        def score() -> ScoreResponse:
            response = client.post("/v1/score", json=TRAJECTORY)
            assert response.status_code == 200, response.text
            return ScoreResponse.model_validate(response.json())

        first = score()
        assert first.status == "ok"
        assert {s.judge_replica for s in first.steps} == {a.url, b.url}  # least in flight

        a.stop()
        for _ in range(3):  # no step lost while a is down and before it is marked down
            result = score()
            assert result.status == "ok" and {s.judge_replica for s in result.steps} == {b.url}
        assert client.get("/readyz").status_code == 200

        b.stop()
        _wait(lambda: client.post("/v1/score", json=TRAJECTORY).status_code == 503)
        assert client.get("/readyz").status_code == 503

        a.start()  # the probe lets it back in; no request needed to discover it
        _wait(lambda: client.get("/readyz").status_code == 200)
        result = score()
        assert result.status == "ok" and {s.judge_replica for s in result.steps} == {a.url}
    b.start()  # the fixture stops both

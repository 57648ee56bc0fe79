"""The container image end to end: build it with podman (scripts/container-build), run it as a
trainer's neighbour would, wait for /readyz and score an agent trajectory (tests/fixtures).

SCRIBE_CONTAINER_EMBEDDED=1 (default): the image with the embedded judge, which does the
judging. 0: the image without it, pointed at a SmolLM2 llama.cpp server on the host (a judge
server checks the wiring, not the verdicts). Slow (a cold build of the embedded image compiles
llama.cpp); run it with `scripts/container-smoke`, or `pytest -m container tests/e2e`, with
SCRIBE_CONTAINER_IMAGE naming an image already built.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from scribe_client.protocol import ScoreResponse
from support import fixture_records

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "build" / "container"
READY_TIMEOUT = 300.0
SCORE_TIMEOUT = 600.0
EMBEDDED = os.environ.get("SCRIBE_CONTAINER_EMBEDDED", "1") != "0"
JUDGE_MODEL = "qwen2.5-coder-1.5b-instruct-q4_k_m" if EMBEDDED else "smollm2-135m"


def _podman(*args: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINERS_CONF": str(WORK / "containers.conf")}
    return subprocess.run(
        ["podman", "--runtime", "runc", *args],
        env=env,
        check=check,
        text=True,
        capture_output=True,
        **kwargs,
    )


@pytest.fixture(scope="module")
def image() -> str:
    """SCRIBE_CONTAINER_IMAGE, or the image built now."""
    if given := os.environ.get("SCRIBE_CONTAINER_IMAGE"):
        return given
    tag = f"localhost/scribe-reward:e2e-{'cpu' if EMBEDDED else 'slim'}"
    WORK.mkdir(parents=True, exist_ok=True)
    log = WORK / "build.log"
    with log.open("w") as out:
        built = subprocess.run(
            [str(ROOT / "scripts" / "container-build"), tag],
            env={**os.environ, "EMBEDDED_JUDGE": "1" if EMBEDDED else "0"},
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if built.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-40:])
        pytest.fail(f"scripts/container-build failed ({log}):\n{tail}")
    return tag


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Service:
    name: str
    url: str
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture(scope="module")
def judge_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """No settings for the embedded judge; else the host's SmolLM2 server (the container
    shares the host's network)."""
    if EMBEDDED:
        return {}
    url: str = request.getfixturevalue("small_judge_url")
    return {"SCRIBE_JUDGE_URL": url, "SCRIBE_JUDGE_DIALECT": "json_object"}


@pytest.fixture(scope="module")
def service(image: str, judge_env: dict[str, str]) -> Iterator[Service]:
    """The image running with --network=host on a free port, ready; removed afterwards."""
    name = f"scribe-e2e-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    key = secrets.token_hex(16)
    env = {"SCRIBE_PORT": str(port), "SCRIBE_API_KEY": key, **judge_env}
    options = [f"--env={k}={v}" for k, v in env.items()]
    _podman("run", "-d", "--name", name, "--network=host", *options, image)
    running = Service(name, f"http://127.0.0.1:{port}", key)
    try:
        _wait_ready(running)
        yield running
    finally:
        logs = _podman("logs", name, check=False)
        (WORK / "e2e-container.log").write_text(logs.stdout + logs.stderr)
        _podman("rm", "-f", "-t", "5", name, check=False)


def _wait_ready(running: Service) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        state = _podman("inspect", "--format", "{{.State.Status}}", running.name).stdout.strip()
        if state != "running":
            logs = _podman("logs", running.name, check=False)
            pytest.fail(f"container {state}:\n{logs.stdout}{logs.stderr}")
        try:
            answer = httpx.get(f"{running.url}/readyz", headers=running.auth, timeout=10)
            if answer.status_code == 200:
                return
            last = f"{answer.status_code} {answer.text}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(2)
    pytest.fail(f"/readyz not ready within {READY_TIMEOUT:.0f}s: {last}")


def _shortest_trajectory() -> dict[str, Any]:
    """The fixture agent trajectory (tests/fixtures) with the fewest assistant steps, then the
    fewest characters: the embedded judge takes seconds a step on a small CPU."""

    def cost(record: dict[str, Any]) -> tuple[int, int]:
        messages = record["messages"]
        steps = sum(m["role"] == "assistant" for m in messages)
        return steps, sum(len(m.get("content") or "") for m in messages)

    return min(fixture_records("hotpot"), key=cost)


def test_refuses_to_serve_without_an_api_key(image: str) -> None:
    result = _podman("run", "--rm", "--network=host", "-e", f"SCRIBE_PORT={_free_port()}",
                     image, check=False, timeout=300)  # fmt: skip
    assert result.returncode == 2
    assert "refusing to serve on 0.0.0.0 without an API key" in result.stdout + result.stderr


def test_image_is_non_root_cpu_only_and_healthchecked(image: str, service: Service) -> None:
    inspected = json.loads(_podman("image", "inspect", image).stdout)[0]
    config = inspected["Config"]
    assert config["User"] == "10001:10001"
    # podman shows the Docker-format healthcheck beside Config, docker inside it.
    healthcheck = inspected.get("Healthcheck") or config["Healthcheck"]
    assert healthcheck["Test"] == ["CMD", "python3", "/app/healthcheck.py"]
    assert config["StopSignal"] == "SIGTERM"
    _podman("healthcheck", "run", service.name)
    who = _podman("exec", service.name, "python3", "-c",
                  "import os, torch; print(os.getuid(), torch.version.cuda)")  # fmt: skip
    assert who.stdout.split() == ["10001", "None"]


def test_ready_and_authenticated(service: Service) -> None:
    assert httpx.get(f"{service.url}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{service.url}/readyz", timeout=10).status_code == 401
    ready = httpx.get(f"{service.url}/readyz", headers=service.auth, timeout=10).json()
    assert ready["ready"] is True and ready["checks"]["judge"] is True
    assert ready["judge_model"] == JUDGE_MODEL
    assert ready["prototypes"] > 0


def test_scores_a_trajectory(service: Service) -> None:
    record = _shortest_trajectory()
    payload = {
        "request_id": record["id"],
        "messages": record["messages"],
        "tools": record.get("tools"),
        "outcome": 1.0 if record.get("final_label") == 1 else 0.0,
    }
    answer = httpx.post(
        f"{service.url}/v1/score", json=payload, headers=service.auth, timeout=SCORE_TIMEOUT
    )
    assert answer.status_code == 200, answer.text
    result = ScoreResponse.model_validate(answer.json())
    assistant = [i for i, m in enumerate(record["messages"]) if m["role"] == "assistant"]
    assert result.request_id == record["id"]
    assert result.judge_model == JUDGE_MODEL
    assert [step.message_index for step in result.steps] == assistant
    # Both judges are healthy (SmolLM2 is poor but held to the schema by llama.cpp's grammar):
    # every step is judged, whichever image runs.
    assert result.status == "ok", result.model_dump_json()
    for step in result.steps:
        assert step.status == "ok" and step.score in {0, 1, 2, 3}
        assert step.reward == pytest.approx(step.score / 3)
    assert result.process_reward is not None and 0.0 <= result.process_reward <= 1.0
    assert result.reward is not None and 0.0 <= result.reward <= 1.0


def test_stops_gracefully_on_sigterm(service: Service) -> None:
    # Runs last in this module: the container is stopped for good.
    started = time.monotonic()
    _podman("stop", "-t", "30", service.name)
    assert time.monotonic() - started < 30, "SIGTERM did not stop it; it was killed"
    code = _podman("inspect", "--format", "{{.State.ExitCode}}", service.name).stdout.strip()
    assert code == "0"

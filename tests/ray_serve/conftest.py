"""The service on a local Ray Serve instance, driven from the main venv.

Ray lives in its own venv (build/venvs/ray, made by tests/venvs.py from its recipe: Ray Serve,
the service extra, MiniLM's package). `tests/ray_serve/scripts/control.py` runs there: it owns the
Ray instance and Serve, and takes one JSON command a line (deploy, list or kill replicas). The
judges are stand-in OpenAI-compatible servers, one process each on loopback, which a test can
stop, start again on the same port, or slow down.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import PROTOTYPES, free_port, stop, wait_for
from venvs import RECIPES, BuildError, ensure_venv

SCRIPTS = Path(__file__).parent / "scripts"
STANDIN_JUDGE = Path(__file__).parents[1] / "standin_judge.py"
API_KEY = "ray-test-key"
# Logical CPUs for the local instance: two replicas of one CPU each, with room for a third
# while a redeploy or a replaced replica starts (Ray does not oversubscribe them).
CPUS = 4


class Judge:
    """tests/standin_judge.py on a fixed loopback port."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self._log.open("ab") as sink:
            self._process = subprocess.Popen(
                [sys.executable, str(STANDIN_JUDGE), str(self.port)],
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        wait_for(f"{self.url}/models", self._process, timeout=60)

    def stop(self) -> None:
        if self._process is not None:
            stop(self._process)
            self._process = None

    def calls(self) -> int:
        return int(httpx.get(f"http://127.0.0.1:{self.port}/calls").json()["calls"])

    def slow_down(self, delay: float) -> None:
        httpx.post(f"http://127.0.0.1:{self.port}/control", json={"delay": delay})


class Control:
    """tests/ray_serve/scripts/control.py in the ray venv: one command, one answer."""

    def __init__(self, python: Path, port: int, log: Path) -> None:
        self._log = log
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SCRIBE_")},
            # A local test instance: no token file to share, no usage report sent out.
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "HF_HUB_OFFLINE": "1",
        }
        self._sink = log.open("ab")
        self.process = subprocess.Popen(
            [str(python), str(SCRIPTS / "control.py"), str(port), str(CPUS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._sink,
            env=env,
        )
        self._answers: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready_s = float(self._answer(timeout=120)["ready"])

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._answers.put(line)
        self._answers.put(b"")

    def _answer(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._answers.get(timeout=timeout)
        except queue.Empty:
            line = b""
        if not line:
            self.close()
            pytest.fail(f"control.py gave no answer:\n{self._log.read_text()[-6000:]}")
        answer: dict[str, Any] = json.loads(line)
        if answer.get("ok") is False:
            pytest.fail(f"control.py: {answer['error']}\n{self._log.read_text()[-4000:]}")
        return answer

    def send(self, op: str, timeout: float = 240, **fields: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **fields}).encode() + b"\n")
        self.process.stdin.flush()
        return self._answer(timeout)

    def replicas(self) -> list[str]:
        ids: list[str] = self.send("replicas")["ids"]
        return ids

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                stop(self.process)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._sink.close()


@dataclass
class Cluster:
    url: str
    control: Control
    judges: tuple[Judge, Judge]
    args: dict[str, str]
    deploy_s: float

    def deploy(self, **changes: str) -> float:
        """Deploy the app again with `changes` to its arguments; seconds until it runs."""
        self.args = {**self.args, **changes}
        return float(self.control.send("deploy", args=self.args)["seconds"])


@pytest.fixture(scope="session")
def ray_python() -> Path:
    """The ray venv's python, made on first use; a failed build fails the test."""
    try:
        return ensure_venv(RECIPES["ray"])
    except BuildError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def cluster(ray_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two replicas behind Serve's proxy on loopback, judging with two stand-in judges."""
    logs = tmp_path_factory.mktemp("ray")
    judges = (Judge(logs / "judge-a.log"), Judge(logs / "judge-b.log"))
    for judge in judges:
        judge.start()
    port = free_port()
    control = Control(ray_python, port, logs / "control.log")
    args = {
        "num_replicas": "2",
        "num_cpus": "1",
        # Short, so that the outage tests outlast several of them.
        "health_check_period_s": "2",
        "judge_url": ",".join(judge.url for judge in judges),
        "prototypes_dir": str(PROTOTYPES),
        "api_key": API_KEY,
        "max_body_bytes": "65536",
        "judge_probe_interval": "1",
        "judge_unreachable_after": "2",
        "judge_backoff": "0.05",
    }
    try:
        deploy_s = float(control.send("deploy", args=args)["seconds"])
        yield Cluster(f"http://127.0.0.1:{port}", control, judges, args, deploy_s)
    finally:
        control.close()
        for judge in judges:
            judge.stop()

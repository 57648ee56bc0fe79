"""Shared fixtures. Fakes stand in for one heavy backend at a time; `tests/integration`
runs everything real."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scribe_service.library import Library, load_library
from scribe_service.settings import Settings
from support import DATA, PROTOTYPES, FakeEmbedder, FakeJudge, llama_cpp_server, smollm2_gguf


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's SCRIBE_* variables must not change test results."""
    for name in list(os.environ):
        if name.startswith("SCRIBE_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def library() -> Library:
    return load_library(PROTOTYPES)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(prototypes_dir=PROTOTYPES, cache_dir=tmp_path / "cache")


@pytest.fixture
def fake_embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
def fake_judge() -> FakeJudge:
    return FakeJudge()


def load_records(name: str) -> list[dict[str, Any]]:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture(scope="session")
def hotpot_records() -> list[dict[str, Any]]:
    return load_records("agentprocessbench_hotpotqa_dev.jsonl")


@pytest.fixture(scope="session")
def processbench_records() -> list[dict[str, Any]]:
    return load_records("processbench_dev.jsonl")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def small_judge_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real but fast judge: SmolLM2-135M behind llama.cpp's OpenAI-compatible server (about
    0.5 s per verdict here). Its verdicts are poor; it is for plumbing, load and trainer tests,
    never for judging quality. Yields the `/v1` base URL."""
    log = tmp_path_factory.mktemp("small-judge") / "server.log"
    with llama_cpp_server(smollm2_gguf(), "smollm2-135m", log, n_ctx=8192) as url:
        yield url

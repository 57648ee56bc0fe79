"""Shared fixtures. Fakes stand in for one heavy backend at a time; `tests/integration`
runs everything real.

The suite stands on a clone alone: trajectories come from tests/fixtures. `--data-dir DIR`
(CI passes ../shared/data/dev) runs the corpus-wide checks over the real dev corpus too; a
missing or empty DIR is then an error, never a skip."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scribe_service.library import Library, load_library
from scribe_service.settings import Settings
from support import (
    CORPORA,
    EXPORT_DIR,
    PROTOTYPES,
    FakeEmbedder,
    FakeJudge,
    fixture_records,
    llama_cpp_server,
    read_records,
    smollm2_gguf,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the step-labelled dev corpus (../shared/data/dev): the corpus-wide checks run "
        "over it as well as over tests/fixtures; without it they are skipped",
    )


def pytest_configure(config: pytest.Config) -> None:
    given: Path | None = config.getoption("--data-dir", default=None)
    if given is None:
        return
    folder = (config.invocation_params.dir / given).resolve()
    if not folder.is_dir() or not any(folder.glob("*.jsonl")):
        # Asked for the corpus and it is not there: CI must fail, not quietly check less.
        raise pytest.UsageError(f"--data-dir {given}: no *.jsonl in {folder}")
    config.option.data_dir = folder


def pytest_report_header(config: pytest.Config) -> str:
    folder = config.getoption("--data-dir")
    if folder is None:
        return "trajectories: tests/fixtures only; dev-corpus checks skipped (no --data-dir)"
    return f"trajectories: tests/fixtures and the dev corpus in {folder}"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's SCRIBE_* variables must not change test results; the one set here
    shares the ONNX export (the default backend's) between tests and the servers they run."""
    for name in list(os.environ):
        if name.startswith("SCRIBE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SCRIBE_EMBEDDING_EXPORT_DIR", str(EXPORT_DIR))


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


@pytest.fixture(scope="session")
def data_dir(request: pytest.FixtureRequest) -> Path:
    """The dev corpus given with --data-dir (checked to exist at start-up)."""
    folder: Path | None = request.config.getoption("--data-dir")
    if folder is None:
        pytest.skip("dev-corpus check: pass --data-dir DIR (CI passes ../shared/data/dev)")
    return folder


def _corpus(request: pytest.FixtureRequest, corpus: str) -> list[dict[str, Any]]:
    path = request.getfixturevalue("data_dir") / CORPORA[corpus]
    if not path.is_file():
        pytest.fail(f"--data-dir has no {path.name}")
    return read_records(path)


# The dev corpus alone: tests that use these are skipped without --data-dir.
@pytest.fixture(scope="session")
def hotpot_corpus(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return _corpus(request, "hotpot")


@pytest.fixture(scope="session")
def processbench_corpus(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return _corpus(request, "processbench")


# Every record, for checks that must hold on each: the hand-written fixtures, then, with
# --data-dir, the dev corpus (the report header says which).
@pytest.fixture(scope="session")
def hotpot_records(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    extra = request.getfixturevalue("hotpot_corpus") if _has_data(request) else []
    return fixture_records("hotpot") + extra


@pytest.fixture(scope="session")
def processbench_records(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    extra = request.getfixturevalue("processbench_corpus") if _has_data(request) else []
    return fixture_records("processbench") + extra


def _has_data(request: pytest.FixtureRequest) -> bool:
    return request.config.getoption("--data-dir") is not None


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

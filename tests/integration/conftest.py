"""Real components: MiniLM, FAISS, the bundled 1.5B GGUF judge (in-process and behind
llama.cpp's OpenAI-compatible server), real HTTP. Models load once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scribe_service.bundled import ensure_judge_model
from scribe_service.pipeline.embed import SentenceTransformerEmbedder
from scribe_service.settings import BUNDLED_EMBEDDER, default_cache_dir
from support import free_port, stop, wait_for


@pytest.fixture(scope="session")
def judge_gguf() -> Path:
    # The user cache is where `scribe serve` assembles it too, so it is built once per machine.
    return ensure_judge_model(Path(os.environ.get("SCRIBE_TEST_CACHE", default_cache_dir())))


@pytest.fixture(scope="session")
def minilm() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(BUNDLED_EMBEDDER)


@pytest.fixture(scope="session")
def llama_server(judge_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m llama_cpp.server` on a free loopback port, serving the bundled judge."""
    port = free_port()
    log = (tmp_path_factory.mktemp("llama") / "server.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(judge_gguf), "--model_alias", "bundled-judge",
            "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", "4096", "--n_threads", str(os.cpu_count() or 2),
            # Reuse evaluated prompt prefixes (system prompt, rubric) across requests.
            "--cache", "true", "--cache_type", "ram",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(f"http://127.0.0.1:{port}/v1/models", process, timeout=120)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(process)
        log.close()

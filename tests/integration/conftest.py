"""Real components: MiniLM, FAISS, the bundled 1.5B GGUF judge (in-process and behind
llama.cpp's OpenAI-compatible server), real HTTP. Models load once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from scribe_service.bundled import ensure_judge_model
from scribe_service.pipeline.embed import Embedder, SentenceTransformerEmbedder, make_embedder
from scribe_service.settings import BUNDLED_EMBEDDER, default_cache_dir
from support import EXPORT_DIR, llama_cpp_server


@pytest.fixture(scope="session")
def judge_gguf() -> Path:
    # The user cache is where `scribe serve` assembles it too, so it is built once per machine.
    return ensure_judge_model(Path(os.environ.get("SCRIBE_TEST_CACHE", default_cache_dir())))


@pytest.fixture(scope="session")
def minilm() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(BUNDLED_EMBEDDER)


@pytest.fixture(scope="session")
def minilm_onnx(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    """MiniLM as the service runs it by default (ONNX Runtime, fp32), from the shared export."""
    cache = tmp_path_factory.mktemp("onnx-cache")
    return make_embedder(BUNDLED_EMBEDDER, backend="onnx", cache_dir=cache, export_dir=EXPORT_DIR)


@pytest.fixture(scope="session")
def llama_server(judge_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server on loopback, serving the bundled 1.5B judge."""
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with llama_cpp_server(judge_gguf, "bundled-judge", log) as url:
        yield url

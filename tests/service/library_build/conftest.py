"""The real models the library-build tests share: MiniLM, and SmolLM2-135M in-process with
the bounds a 135M model needs to finish a draft (COMPACT fields, 700 tokens, 3 attempts)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from scribe_service.library_build.build import BuildOptions, BuildResult, build_library
from scribe_service.library_build.distil import COMPACT
from scribe_service.pipeline.embed import SentenceTransformerEmbedder
from scribe_service.pipeline.judge import EmbeddedJudge
from scribe_service.settings import BUNDLED_EMBEDDER, Settings
from support import PROTOTYPES, smollm2_gguf


@pytest.fixture(scope="session")
def minilm() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(BUNDLED_EMBEDDER)


@pytest.fixture
async def smollm2() -> AsyncIterator[EmbeddedJudge]:
    backend = EmbeddedJudge(smollm2_gguf(), model="smollm2-135m", n_ctx=4096, n_threads=2)
    try:
        yield backend
    finally:
        await backend.aclose()


@pytest.fixture
def real_build(
    minilm: SentenceTransformerEmbedder, smollm2: EmbeddedJudge
) -> Callable[..., Awaitable[BuildResult]]:
    """`build_library` on `data` into `out` with the real models; keyword arguments are
    further `BuildOptions`."""

    async def build(data: Path, out: Path, **options: Any) -> BuildResult:
        return await build_library(
            BuildOptions(
                data=data, out=out, limits=COMPACT, max_tokens=700, max_attempts=3, **options
            ),
            backend=smollm2,
            embedder=minilm,
            shipped=PROTOTYPES,
            min_similarity=Settings().min_similarity,
        )

    return build

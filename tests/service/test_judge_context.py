"""A prompt longer than the judge's context, through real llama.cpp judges (SmolLM2-135M with a
tiny context): a permanent `judge_context_exceeded` step error, never retried, never a score."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from scribe_client.protocol import ScoreResponse
from scribe_service.app import create_app
from scribe_service.library import Library
from scribe_service.metrics import Metrics
from scribe_service.pipeline.judge import (
    EmbeddedJudge,
    Judge,
    JudgeContextExceeded,
    OpenAIJudge,
    Sampling,
)
from scribe_service.settings import Settings
from support import PROTOTYPES, FakeEmbedder, llama_cpp_server, smollm2_gguf

pytestmark = pytest.mark.real

N_CTX = 512
SHORT = [{"role": "user", "content": 'Answer with {"score": 2}.'}]
LONG = [{"role": "user", "content": "word " * (2 * N_CTX)}]


@pytest.fixture(scope="module")
def tiny_judge_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("tiny-judge") / "server.log"
    with llama_cpp_server(smollm2_gguf(), "smollm2-135m", log, n_ctx=N_CTX) as url:
        yield url


@pytest.mark.anyio
async def test_llama_cpp_server_overflow_is_context_exceeded(tiny_judge_url: str) -> None:
    backend = OpenAIJudge(tiny_judge_url)
    try:
        sampling = Sampling(max_tokens=16)
        # The same server answers a prompt that fits: the error below is about the length.
        assert (await backend.complete(SHORT, {"type": "object"}, sampling)).text
        with pytest.raises(JudgeContextExceeded, match=f"maximum context length is {N_CTX}"):
            await backend.complete(LONG, {"type": "object"}, sampling)
        with pytest.raises(JudgeContextExceeded):
            await backend.score_token(LONG, sampling)
    finally:
        await backend.aclose()


@pytest.mark.anyio
async def test_an_overflowing_step_is_not_retried(tiny_judge_url: str, library: Library) -> None:
    backend, metrics = OpenAIJudge(tiny_judge_url), Metrics()
    judge = Judge(
        backend, concurrency=1, timeout=60, max_attempts=3, sampling=Sampling(), metrics=metrics
    )
    try:
        with pytest.raises(JudgeContextExceeded) as caught:
            await judge.verdict(LONG, next(iter(library.routable())))
        assert "attempts" not in str(caught.value)  # failed on the first, with no retry
        assert judge.health.available  # the judge answered
    finally:
        await backend.aclose()
    registry = metrics.registry
    assert registry.get_sample_value("scribe_judge_retries_total") == 0.0
    calls = {"outcome": "judge_context_exceeded"}
    assert registry.get_sample_value("scribe_judge_calls_total", calls) == 1.0


def test_the_service_reports_the_overflowing_step(tiny_judge_url: str, tmp_path: Path) -> None:
    settings = Settings(
        prototypes_dir=PROTOTYPES, cache_dir=tmp_path, judge_url=tiny_judge_url,
        judge_max_tokens=16, judge_max_attempts=3,
    )  # fmt: skip
    trajectory = {"prompt": "Sum the list.", "steps": [{"content": "long " * 3000}]}
    with TestClient(create_app(settings, embedder=FakeEmbedder())) as client:
        response = client.post("/v1/score", json=trajectory)
    assert response.status_code == 200, response.text
    result = ScoreResponse.model_validate(response.json())
    [step] = result.steps
    assert step.status == "failed" and step.score is None and step.reward is None
    assert step.error is not None and step.error.type == "judge_context_exceeded"
    assert result.status == "failed" and result.reward is None


@pytest.mark.anyio
async def test_embedded_overflow_is_context_exceeded() -> None:
    backend = EmbeddedJudge(smollm2_gguf(), model="smollm2-135m", n_ctx=N_CTX, n_threads=2)
    try:
        sampling = Sampling(max_tokens=16)
        assert (await backend.complete(SHORT, {"type": "object"}, sampling)).text
        with pytest.raises(JudgeContextExceeded, match=f"exceed context window of {N_CTX}"):
            await backend.complete(LONG, {"type": "object"}, sampling)
        with pytest.raises(JudgeContextExceeded):
            await backend.score_token(LONG, sampling)
    finally:
        await backend.aclose()

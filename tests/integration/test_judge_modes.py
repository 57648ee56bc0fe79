"""Both judge modes on llama.cpp: its OpenAI-compatible server (dialect detected) and the
embedded judge, with SmolLM2-135M (a poor judge, a real engine: see tests/vllm for vLLM)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from scribe_client.protocol import ScoreResponse
from scribe_service.app import create_app
from scribe_service.library import Library
from scribe_service.pipeline.judge import EmbeddedJudge, OpenAIJudge, Sampling
from scribe_service.pipeline.render import render_messages
from scribe_service.pipeline.segment import segment
from scribe_service.settings import Settings
from support import PROTOTYPES, FakeEmbedder, smollm2_gguf

pytestmark = pytest.mark.real

TRAJECTORY: dict[str, Any] = {
    "prompt": "What is 3 * 4 + 1?",
    "steps": [{"content": "Compute 3 * 4 = 12."}, {"content": "Add 1 to get 13."}],
    "outcome": 1.0,
}


def _output_tokens(client: TestClient, mode: str) -> float:
    metrics = client.get("/metrics").text
    found = re.search(rf'^scribe_judge_output_tokens_total{{mode="{mode}"}} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def test_both_modes_on_llama_cpp_server(small_judge_url: str) -> None:
    # Repeats must reach the server (no judgment cache): the spread measured is the judge's.
    settings = Settings(
        prototypes_dir=PROTOTYPES,
        judge_url=small_judge_url,
        judge_min_score_mass=0.005,
        judgment_cache=False,
    )
    with TestClient(create_app(settings, embedder=FakeEmbedder())) as client:
        verdict = ScoreResponse.model_validate(client.post("/v1/score", json=TRAJECTORY).json())
        # `auto` saw llama-cpp-python's /models (owned_by "me"): json_object with a schema.
        assert client.app.state.pipeline.judge.backend.dialect == "json_object"  # type: ignore[attr-defined]
        payload = TRAJECTORY | {"options": {"judge_mode": "logprob"}}
        results = [
            ScoreResponse.model_validate(client.post("/v1/score", json=payload).json())
            for _ in range(2)
        ]
        tokens = _output_tokens(client, "logprob")
    assert verdict.status in ("ok", "partial")  # SmolLM2 may still write a poor verdict
    assert verdict.judge is not None and verdict.judge.mode == "verdict"
    first = results[0]
    assert first.status == "ok", [s.error for s in first.steps]
    assert all(s.expected_score is not None and s.score_mass for s in first.steps)
    # Not bit-identical here: llama.cpp evaluates only the part of a prompt that differs from
    # the one before, and quantised kernels round differently for other batch splits. vLLM
    # in fp32 is (tests/vllm); the spread here is well below a score level's worth.
    rewards = [r.reward for r in results if r.reward is not None]
    assert len(rewards) == len(results) and max(rewards) - min(rewards) < 0.01
    assert 0 < tokens <= 2 * sum(len(r.steps) for r in results)


@pytest.mark.anyio
async def test_embedded_judge_logprobs_match_the_server(
    small_judge_url: str, library: Library
) -> None:
    """The embedded judge reads the next-token logits in a logits processor (no logits_all):
    the same GGUF behind llama.cpp's server must give the same alternatives."""
    prototype = library.prototypes["arithmetic_computation"]
    seg = segment(
        messages=None,
        completion="Step 1: Compute 3 * 4 = 12.\nStep 2: Add 1 to get 13.",
        steps=None,
        prompt="What is 3 * 4 + 1?",
    )
    messages = render_messages(
        library, prototype, seg, seg.steps[0], max_step_chars=2000, max_context_chars=1500,
        mode="logprob",
    )  # fmt: skip
    embedded = EmbeddedJudge(smollm2_gguf(), model="smollm2", n_ctx=4096)
    server = OpenAIJudge(small_judge_url)
    try:
        mine = await embedded.score_token(messages, Sampling())
        theirs = await server.score_token(messages, Sampling())
    finally:
        await embedded.aclose()
        await server.aclose()
    assert mine.output_tokens == 1 and mine.top_logprobs and theirs.top_logprobs
    ours, reference = dict(mine.top_logprobs), dict(theirs.top_logprobs)
    shared = ours.keys() & reference.keys()
    assert len(shared) >= 15
    assert all(abs(ours[t] - reference[t]) < 0.05 for t in shared)

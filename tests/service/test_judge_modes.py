"""Judge modes, sampling metadata and replica settings through the real app (judge faked)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from scribe_client.protocol import ScoreResponse
from scribe_service.app import create_app, make_judge_backend
from scribe_service.pipeline.judge import OpenAIJudge
from scribe_service.pipeline.replicas import ReplicaPool
from scribe_service.settings import Settings
from support import PROTOTYPES, FakeEmbedder, FakeJudge

TRAJECTORY = {
    "prompt": "What is 3 * 4 + 1?",
    "steps": [{"content": "Compute 3 * 4 = 12."}, {"content": "Add 1 to get 13."}],
    "outcome": 1.0,
}


def _score(settings: Settings, judge: FakeJudge, options: dict[str, object]) -> ScoreResponse:
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=judge)
    with TestClient(app) as client:
        response = client.post("/v1/score", json=TRAJECTORY | {"options": options})
        metrics = client.get("/metrics").text
    assert response.status_code == 200, response.text
    assert 'scribe_judge_output_tokens_total{mode="' in metrics
    return ScoreResponse.model_validate(response.json())


def test_verdict_mode_is_the_default_and_reports_its_sampling(settings: Settings) -> None:
    result = _score(settings, FakeJudge(score=2), {})
    assert result.judge is not None
    assert result.judge.model_dump() == {
        "model": "fake-judge", "mode": "verdict", "temperature": 0.0, "top_p": 1.0, "seed": 0,
        "max_tokens": 200, "top_logprobs": None, "min_score_mass": None,
    }  # fmt: skip
    assert all(s.expected_score is None and s.score_mass is None for s in result.steps)
    assert all(s.rationale == "fine" for s in result.steps)


def test_logprob_mode_rewards_the_expected_score(settings: Settings) -> None:
    judge = FakeJudge(logprobs={"2": math.log(0.6), "3": math.log(0.3), "Sure": math.log(0.1)})
    result = _score(settings, judge, {"judge_mode": "logprob"})
    for step in result.steps:
        assert step.status == "ok" and step.score == 2
        assert step.expected_score == pytest.approx(2 + 1 / 3, abs=1e-4)
        assert step.score_mass == pytest.approx(0.9)
        assert step.reward == pytest.approx(step.expected_score / 3)
        assert step.failure_modes == [] and step.rationale is None
    assert result.process_reward == pytest.approx((2 + 1 / 3) / 3, abs=1e-4)
    assert result.judge is not None and result.judge.mode == "logprob"
    assert (result.judge.max_tokens, result.judge.top_logprobs) == (1, 20)
    assert result.judge.min_score_mass == 0.5
    # The logprob prompt asks for the digit alone.
    assert "digit" in judge.prompts[0][-1]["content"]
    assert all(s.max_tokens == 1 for s in judge.samplings)


def test_low_score_mass_is_an_explicit_step_failure(settings: Settings) -> None:
    judge = FakeJudge(logprobs={"The": math.log(0.7), "2": math.log(0.2)})
    result = _score(settings, judge, {"judge_mode": "logprob"})
    assert result.status == "failed" and result.reward is None
    for step in result.steps:
        assert step.score is None and step.reward is None and step.expected_score is None
        assert step.error is not None and step.error.type == "judge_low_score_mass"


def test_the_mode_and_sampling_come_from_settings(tmp_path: Path) -> None:
    settings = Settings(
        prototypes_dir=PROTOTYPES, cache_dir=tmp_path, judge_mode="logprob",
        judge_min_score_mass=0.1, judge_temperature=0.2, judge_top_p=0.95, judge_seed=5,
    )  # fmt: skip
    judge = FakeJudge(logprobs={"1": math.log(0.15)})
    result = _score(settings, judge, {})
    assert result.steps[0].expected_score == 1.0
    assert result.judge is not None
    assert (result.judge.mode, result.judge.min_score_mass) == ("logprob", 0.1)
    assert (result.judge.temperature, result.judge.top_p, result.judge.seed) == (0.2, 0.95, 5)
    verdict = _score(settings, FakeJudge(), {"judge_mode": "verdict"})
    assert verdict.judge is not None and verdict.judge.mode == "verdict"


def test_judge_url_lists_replicas(tmp_path: Path) -> None:
    settings = Settings(
        prototypes_dir=PROTOTYPES,
        cache_dir=tmp_path,
        judge_url=" http://a:8000/v1/ , http://b:8001/v1",
        judge_dialect="json_object",
    )
    assert settings.judge_urls == ["http://a:8000/v1", "http://b:8001/v1"]
    pool = make_judge_backend(settings)
    assert isinstance(pool, ReplicaPool)
    assert [r.url for r in pool.replicas] == settings.judge_urls
    assert all(r.backend.dialect == "json_object" for r in pool.replicas)
    single = make_judge_backend(Settings(prototypes_dir=PROTOTYPES, judge_url="http://a/v1"))
    assert isinstance(single, OpenAIJudge) and single.dialect == "auto"
    with pytest.raises(ValueError, match="empty entry"):
        Settings(judge_url="http://a/v1,,http://b/v1")

"""The pipeline's stages in order, each timed and each failing on its own (judge faked)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient

from scribe_client.protocol import ScoreResponse
from scribe_service.app import create_app
from scribe_service.pipeline.embed import Vectors
from scribe_service.settings import Settings
from support import FakeEmbedder, FakeJudge

TRAJECTORY = {
    "prompt": "What is 3 * 4 + 1?",
    "steps": [{"content": "Compute 3 * 4 = 12."}, {"content": "Add 1 to get 13."}],
    "outcome": 1.0,
}
STAGES = ("segment", "embed", "route", "render", "judge", "aggregate")


def test_every_stage_is_timed(settings: Settings) -> None:
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=FakeJudge())
    with TestClient(app) as client:
        assert client.post("/v1/score", json=TRAJECTORY).json()["status"] == "ok"
        text = client.get("/metrics").text
    per_step = {"render", "judge"}
    for stage in STAGES:
        count = 2.0 if stage in per_step else 1.0
        assert f'scribe_stage_seconds_count{{stage="{stage}"}} {count}' in text, stage


def test_a_render_failure_fails_its_step_only(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scribe_service.pipeline.render import render_messages as real_render

    def render(*args: Any, **kwargs: Any) -> Any:
        step = args[3]
        if step.index == 0:
            raise KeyError("template placeholder {{x}} has no value")
        return real_render(*args, **kwargs)

    monkeypatch.setattr("scribe_service.pipeline.run.render_messages", render)
    judge = FakeJudge(score=3)
    with TestClient(create_app(settings, embedder=FakeEmbedder(), judge_backend=judge)) as client:
        response = client.post("/v1/score", json=TRAJECTORY)
    assert response.status_code == 200
    result = ScoreResponse.model_validate(response.json())
    first, second = result.steps
    assert first.status == "failed" and first.score is None and first.reward is None
    assert first.error is not None and first.error.type == "internal"
    assert first.error.message.startswith("render: KeyError")
    assert second.status == "ok" and second.score == 3
    assert result.status == "partial" and len(judge.prompts) == 1  # the failed step never sent


def test_a_judge_bug_fails_its_step_only(settings: Settings) -> None:
    judge = FakeJudge(replies=[RuntimeError("backend bug")], score=1)
    settings = settings.model_copy(update={"judge_concurrency": 1})
    with TestClient(create_app(settings, embedder=FakeEmbedder(), judge_backend=judge)) as client:
        result = ScoreResponse.model_validate(client.post("/v1/score", json=TRAJECTORY).json())
    statuses = sorted((s.status, s.error.message if s.error else None) for s in result.steps)
    assert statuses == [("failed", "judge: RuntimeError: backend bug"), ("ok", None)]


class BreakingEmbedder(FakeEmbedder):
    """Embeds the library at startup, then breaks."""

    broken = False

    def encode(self, texts: Sequence[str]) -> Vectors:
        if self.broken:
            raise RuntimeError("/secret/path/model.bin is corrupt")
        return super().encode(texts)


def test_a_failed_request_wide_stage_is_a_named_error(settings: Settings) -> None:
    embedder = BreakingEmbedder()
    app = create_app(settings, embedder=embedder, judge_backend=FakeJudge())
    with TestClient(app, raise_server_exceptions=False) as client:
        embedder.broken = True
        response = client.post("/v1/score", json=TRAJECTORY)
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "internal"
    assert error["message"] == "the embed stage failed (RuntimeError)"  # no internals leaked


def test_an_input_limit_is_still_the_callers_error(settings: Settings) -> None:
    settings = settings.model_copy(update={"max_steps": 1})
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=FakeJudge())
    with TestClient(app) as client:
        response = client.post("/v1/score", json=TRAJECTORY)
    assert response.status_code == 422 and "SCRIBE_MAX_STEPS" in response.json()["error"]["message"]

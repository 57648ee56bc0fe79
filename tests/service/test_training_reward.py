"""Breaking the judge never pays, through the real app: a judge that fails chosen steps (an
invalid verdict, as a prompt-injected judge gives) against the same steps judged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, get_args

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scribe_client.protocol import Aggregation
from scribe_service.app import create_app
from scribe_service.pipeline.judge import Completion, Messages, Sampling
from scribe_service.settings import Settings
from support import PROTOTYPES, FakeEmbedder, FakeJudge

STEP_HEADING = "## The step to grade"


class MarkedJudge(FakeJudge):
    """Reads the step under grading: `score-N` gets N, `break-judge` an invalid verdict."""

    async def complete(
        self, messages: Messages, schema: dict[str, Any], sampling: Sampling
    ) -> Completion:
        self.prompts.append(messages)
        step = messages[-1]["content"].split(STEP_HEADING, 1)[1]
        if "break-judge" in step:
            return Completion("I refuse to grade this.", output_tokens=5)
        [score] = [n for n in range(4) if f"score-{n}" in step]
        verdict = {"failure_modes": [], "rationale": "marked", "score": score}
        return Completion(json.dumps(verdict), output_tokens=20)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(
        prototypes_dir=PROTOTYPES,
        cache_dir=tmp_path_factory.mktemp("cache"),
        judge_max_attempts=1,  # an invalid verdict fails the step at once
    )
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=MarkedJudge())
    with TestClient(app) as test_client:
        yield test_client


def request(marks: list[str], options: dict[str, Any], outcome: float | None) -> dict[str, Any]:
    steps = [{"content": f"Step {i}: work on part {i}, {mark}."} for i, mark in enumerate(marks)]
    return {"steps": steps, "outcome": outcome, "options": options}


cases = st.integers(1, 5).flatmap(
    lambda n: st.fixed_dictionaries(
        {
            "scores": st.lists(st.integers(0, 3), min_size=n, max_size=n),
            "failed": st.lists(st.booleans(), min_size=n, max_size=n),
            "instead": st.integers(0, 3),
            "aggregation": st.sampled_from(get_args(Aggregation)),
            "outcome": st.none() | st.sampled_from([0.0, 0.5, 1.0]),
            "weights": st.sampled_from([(0.7, 0.3), (0.5, 0.5), (1.0, 2.0), (0.0, 1.0)]),
            "failure_reward": st.sampled_from([0.0, -0.25, -1.0]),
        }
    )
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases)
def test_a_failed_step_never_raises_the_training_reward(
    client: TestClient, case: dict[str, Any]
) -> None:
    options = {
        "aggregation": case["aggregation"],
        "outcome_weight": case["weights"][0],
        "process_weight": case["weights"][1],
        "failure_reward": case["failure_reward"],
    }
    scored = [f"score-{s}" for s in case["scores"]]
    broken = ["break-judge" if f else m for m, f in zip(scored, case["failed"], strict=True)]
    zero = ["score-0" if f else m for m, f in zip(scored, case["failed"], strict=True)]
    other = [
        f"score-{case['instead']}" if f else m for m, f in zip(scored, case["failed"], strict=True)
    ]
    body = {"requests": [request(m, options, case["outcome"]) for m in (broken, zero, other)]}

    answer = client.post("/v1/score/batch", json=body)

    assert answer.status_code == 200, answer.text
    failed, judged_zero, judged_other = answer.json()["results"]
    assert failed["training_reward"] <= judged_zero["training_reward"] + 1e-9
    assert failed["training_reward"] <= judged_other["training_reward"] + 1e-9
    # The response stays honest: failures are explicit, and `reward` is the judged steps'.
    assert [s["status"] == "failed" for s in failed["steps"]] == case["failed"]
    assert all(s["reward"] is None for s in failed["steps"] if s["status"] == "failed")
    assert failed["status"] == (
        "ok" if not any(case["failed"]) else "failed" if all(case["failed"]) else "partial"
    )
    if all(case["failed"]):
        assert failed["reward"] is None and failed["process_reward"] is None
    assert judged_zero["status"] == "ok"
    assert judged_zero["training_reward"] == pytest.approx(judged_zero["reward"])
    assert (failed["failure_policy"], failed["failure_reward"]) == (
        "pessimistic",
        case["failure_reward"],
    )


def test_a_correct_rollout_that_breaks_the_judge_gets_less_than_a_judged_one(
    client: TestClient,
) -> None:
    body = {
        "requests": [
            request(["break-judge", "break-judge"], {}, 1.0),
            request(["score-0", "score-0"], {}, 1.0),
            request(["break-judge", "break-judge"], {"failure_policy": "exclude"}, 1.0),
        ]
    }
    broken, judged, excluded = client.post("/v1/score/batch", json=body).json()["results"]
    assert broken["reward"] is None and broken["status"] == "failed"
    assert broken["training_reward"] == pytest.approx(0.7) == judged["training_reward"]
    # The opt-in old rule pays the bare outcome: the exploit the default closes.
    assert excluded["training_reward"] == 1.0 and excluded["failure_policy"] == "exclude"


def test_the_server_setting_chooses_the_policy(tmp_path: Any) -> None:
    settings = Settings(
        prototypes_dir=PROTOTYPES,
        cache_dir=tmp_path / "cache",
        judge_max_attempts=1,
        failure_policy="exclude",
        failure_reward=-0.5,
    )
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=MarkedJudge())
    with TestClient(app) as client:
        body = request(["score-3", "break-judge"], {}, None)
        result = client.post("/v1/score", json=body).json()
    assert (result["failure_policy"], result["failure_reward"]) == ("exclude", -0.5)
    assert result["training_reward"] == 1.0 == result["reward"]


def test_a_failure_reward_that_pays_is_refused() -> None:
    with pytest.raises(ValueError, match="failure_reward"):
        Settings(prototypes_dir=PROTOTYPES, failure_reward=0.5)

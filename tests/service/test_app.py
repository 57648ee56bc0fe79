"""The real app (routes, validation, pipeline, FAISS) with the embedder and judge faked."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from scribe_client.protocol import ErrorResponse, ReadyResponse, RouteResponse, ScoreResponse
from scribe_service.app import create_app
from scribe_service.pipeline.judge import JudgeUnavailable
from scribe_service.settings import Settings
from support import FakeEmbedder, FakeJudge

MESSAGES = [
    {"role": "user", "content": "Who directed Alien?"},
    {
        "role": "assistant",
        "content": "I need to search for the director of the film.",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{}"}}
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "Alien (1979) was directed by Ridley Scott."},
    {"role": "assistant", "content": "<answer>Ridley Scott</answer>"},
]


@pytest.fixture
def client(settings: Settings, fake_judge: FakeJudge) -> Iterator[TestClient]:
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=fake_judge)
    with TestClient(app) as client:
        yield client


def _score(client: TestClient, payload: dict[str, Any]) -> ScoreResponse:
    response = client.post("/v1/score", json=payload)
    assert response.status_code == 200, response.text
    return ScoreResponse.model_validate(response.json())


def test_score_messages(client: TestClient, fake_judge: FakeJudge) -> None:
    result = _score(client, {"messages": MESSAGES, "request_id": "r1"})
    assert result.request_id == "r1"
    assert result.status == "ok"
    assert [s.message_index for s in result.steps] == [1, 3]
    assert all(s.score == 2 and s.reward == pytest.approx(2 / 3) for s in result.steps)
    assert result.process_reward == pytest.approx(2 / 3)
    assert result.reward == result.process_reward and result.outcome_reward is None
    assert result.judge_model == "fake-judge" and result.library_version
    assert len(fake_judge.prompts) == 2


def test_metadata_is_echoed_unchanged(client: TestClient) -> None:
    metadata = {"global_step": 120, "run": "grpo-7", "tags": ["a", {"b": None}]}
    result = _score(client, {"completion": "Step 1: 3*4 = 12.", "metadata": metadata})
    assert result.metadata == metadata
    assert _score(client, {"completion": "Step 1: 3*4 = 12."}).metadata is None


def test_outcome_mix_and_options(client: TestClient) -> None:
    result = _score(
        client,
        {
            "completion": "Step 1: Add\n1+1=2\nStep 2: Check\n2-1=1",
            "outcome": 1.0,
            "options": {"aggregation": "min", "outcome_weight": 0.5, "process_weight": 0.5},
        },
    )
    assert result.outcome_reward == 1.0
    assert result.reward == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert [s.char_span for s in result.steps] == [(0, 17), (18, 37)]
    assert len(result.request_id) == 32  # generated


def test_min_similarity_option_forces_the_fallback(client: TestClient) -> None:
    result = _score(client, {"steps": [{"content": "x"}], "options": {"min_similarity": 1.0}})
    assert result.steps[0].fallback and result.steps[0].prototype_id == "generic_step"


def test_batch_keeps_order(client: TestClient) -> None:
    requests = [{"completion": f"Let's do part {i}.", "request_id": str(i)} for i in range(5)]
    response = client.post("/v1/score/batch", json={"requests": requests})
    assert response.status_code == 200
    assert [r["request_id"] for r in response.json()["results"]] == ["0", "1", "2", "3", "4"]


def test_route_does_not_judge(client: TestClient, fake_judge: FakeJudge) -> None:
    response = client.post("/v1/route", json={"messages": MESSAGES})
    assert response.status_code == 200
    routed = RouteResponse.model_validate(response.json())
    assert [s.message_index for s in routed.steps] == [1, 3]
    assert "score" not in response.json()["steps"][0]
    assert fake_judge.prompts == []


def test_judge_failures_are_explicit_never_zero(settings: Settings) -> None:
    # Two attempts, not the default three: the judge is called exactly twice per step.
    attempts = 2
    assert Settings.model_fields["judge_max_attempts"].default != attempts
    settings.judge_max_attempts = attempts
    judge = FakeJudge(replies=["nonsense"] * attempts + [JudgeUnavailable("down")] * attempts)
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=judge)
    with TestClient(app) as client:
        result = _score(client, {"steps": [{"content": "a"}], "outcome": 1.0})
        assert len(judge.prompts) == attempts
        assert result.status == "failed"
        [step] = result.steps
        assert step.status == "failed" and step.score is None and step.reward is None
        assert step.error is not None and step.error.type == "judge_invalid_output"
        assert result.process_reward is None and result.reward is None
        assert result.outcome_reward == 1.0

        result = _score(client, {"steps": [{"content": "a"}]})
        assert result.steps[0].error is not None
        assert result.steps[0].error.type == "judge_unavailable"
        assert len(judge.prompts) == 2 * attempts and judge.replies == []


def test_partial_when_some_steps_fail(settings: Settings) -> None:
    # One attempt (the default is three): the first bad reply fails the step, and the two
    # good replies left over show no retry happened.
    assert Settings.model_fields["judge_max_attempts"].default != 1
    settings.judge_max_attempts = 1
    settings.judge_concurrency = 1
    good = '{"failure_modes": [], "rationale": "", "score": 3}'
    judge = FakeJudge(replies=[good, "x", good, good])
    with TestClient(create_app(settings, embedder=FakeEmbedder(), judge_backend=judge)) as client:
        result = _score(client, {"steps": [{"content": "a"}, {"content": "b"}]})
    assert len(judge.prompts) == 2 and judge.replies == [good, good]
    assert result.status == "partial"
    assert [s.status for s in result.steps] == ["ok", "failed"]
    assert result.process_reward == 1.0


@pytest.mark.parametrize(
    ("payload", "param", "fragment"),
    [
        pytest.param({}, None, "exactly one of", id="no-trajectory"),
        pytest.param(
            {"completion": "a", "steps": [{"content": "b"}]}, None, "exactly one", id="two-forms"
        ),
        pytest.param({"completion": "   "}, None, "empty", id="blank-completion"),
        pytest.param(
            {"messages": [{"role": "user", "content": "hi"}]}, None, "no assistant", id="no-steps"
        ),
        pytest.param(
            {"messages": [{"role": "robot", "content": "hi"}]}, "messages[0]", "", id="bad-role"
        ),
        pytest.param(
            {"messages": [{"role": "assistant"}, {"role": "tool", "content": "x"}]},
            "messages[1].tool_call_id",
            "Field required",
            id="tool-without-call-id",
        ),
        pytest.param({"completion": "a", "outcome": 1.5}, "outcome", "less than", id="outcome"),
        pytest.param(
            {"completion": "a", "options": {"aggregation": "max"}},
            "options.aggregation",
            "",
            id="aggregation",
        ),
        pytest.param({"completion": "a", "outcom": 1}, "outcom", "Extra", id="unknown-field"),
        pytest.param({"steps": [{"content": ""}]}, "steps[0].content", "", id="empty-step"),
        pytest.param(
            {"completion": "a", "metadata": {"blob": "x" * 5000}},
            "metadata",
            "limit is 4096",
            id="metadata-too-big",
        ),
        pytest.param(
            {"completion": "a", "metadata": [1]}, "metadata", "dictionary", id="metadata-not-object"
        ),
        pytest.param({"completion": "a", "reference": ""}, "reference", "", id="empty-reference"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    client: TestClient, payload: dict[str, Any], param: str | None, fragment: str
) -> None:
    response = client.post("/v1/score", json=payload)
    assert response.status_code == 422
    error = ErrorResponse.model_validate(response.json()).error
    assert error.type == "invalid_request"
    assert error.param == param
    assert fragment in error.message
    if param:
        assert error.message.startswith(param)


def test_malformed_json_body(client: TestClient) -> None:
    response = client.post(
        "/v1/score", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert ErrorResponse.model_validate(response.json()).error.type == "invalid_request"


def test_prototypes(client: TestClient) -> None:
    listing = client.get("/v1/prototypes").json()
    ids = [p["id"] for p in listing["prototypes"]]
    assert "generic_step" in ids and len(ids) >= 25
    detail = client.get(f"/v1/prototypes/{ids[0]}").json()
    assert set(detail["levels"]) == {"0", "1", "2", "3"}
    computing = client.get("/v1/prototypes/arithmetic_computation").json()
    assert computing["checks"] == ["arithmetic"]
    missing = client.get("/v1/prototypes/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found"


def test_health_and_readiness(client: TestClient, fake_judge: FakeJudge) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ReadyResponse.model_validate(ready.json())
    assert body.ready and body.checks == {"library": True, "index": True, "judge": True}
    fake_judge.healthy = False
    # One missed check is not an outage; SCRIBE_JUDGE_UNREACHABLE_AFTER (3) in a row are.
    checks = [client.get("/readyz") for _ in range(3)]
    assert checks[0].status_code == 200 and "fake judge is down" in checks[0].json()["detail"]
    assert checks[-1].status_code == 503
    assert ReadyResponse.model_validate(checks[-1].json()).checks["judge"] is False
    fake_judge.healthy = True
    assert client.get("/readyz").status_code == 200  # back on the first good check


def test_unknown_route_uses_the_error_shape(client: TestClient) -> None:
    response = client.get("/v2/nothing")
    assert response.status_code == 404
    assert ErrorResponse.model_validate(response.json()).error.type == "not_found"


def test_openapi_documents_the_schema(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/v1/score", "/v1/score/batch", "/v1/route", "/readyz"} <= set(spec["paths"])
    step = spec["components"]["schemas"]["StepResult"]["properties"]
    assert "null" in str(step["reward"]) and step["reward"].get("description")


def test_request_deadline_fails_the_steps_still_waiting(settings: Settings) -> None:
    settings.request_deadline = 0.4
    settings.judge_concurrency = 1
    judge = FakeJudge(delay=0.25)
    with TestClient(create_app(settings, embedder=FakeEmbedder(), judge_backend=judge)) as client:
        steps = [{"content": "a"}, {"content": "b"}, {"content": "c"}]
        result = _score(client, {"steps": steps, "outcome": 1.0})
    assert [s.status for s in result.steps] == ["ok", "failed", "failed"]
    for step in result.steps[1:]:
        assert step.error is not None and step.error.type == "judge_timeout"
        assert "deadline" in step.error.message and step.reward is None
    assert result.status == "partial" and result.process_reward == pytest.approx(2 / 3)


def test_every_response_carries_a_request_id(client: TestClient) -> None:
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32
    echoed = client.post("/v1/score", json={}, headers={"X-Request-ID": "trainer-step-7/3"})
    assert echoed.status_code == 422 and echoed.headers["x-request-id"] == "trainer-step-7/3"
    unsafe = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces"


def test_overload_is_a_429_with_retry_after_not_a_pile_up(settings: Settings) -> None:
    settings.max_pending = 2
    settings.judge_concurrency = 1
    settings.retry_after = 7
    judge = FakeJudge(delay=1.0)  # long enough that all three arrive while two are pending
    with TestClient(create_app(settings, embedder=FakeEmbedder(), judge_backend=judge)) as client:
        with ThreadPoolExecutor(3) as pool:
            futures = [
                pool.submit(client.post, "/v1/score", json={"steps": [{"content": str(i)}]})
                for i in range(3)
            ]
            responses = [f.result() for f in futures]
        codes = sorted(r.status_code for r in responses)
        assert codes == [200, 200, 429]
        [rejected] = [r for r in responses if r.status_code == 429]
        assert rejected.headers["retry-after"] == "7"
        assert rejected.json()["error"]["type"] == "overloaded"
        # Once the backlog drains, requests are admitted again.
        assert client.post("/v1/score", json={"steps": [{"content": "x"}]}).status_code == 200


def test_metrics_count_requests_stages_judge_calls_and_fallbacks(settings: Settings) -> None:
    judge = FakeJudge(replies=["garbage"])
    with TestClient(create_app(settings, embedder=FakeEmbedder(), judge_backend=judge)) as client:
        payload = {"steps": [{"content": "a"}], "options": {"min_similarity": 1.0}}
        assert client.post("/v1/score", json=payload).status_code == 200
        client.get("/v1/prototypes/nope")
        text = client.get("/metrics").text
    assert 'scribe_requests_total{route="/v1/score",status="200"} 1.0' in text
    assert 'scribe_requests_total{route="/v1/prototypes/{prototype_id}",status="404"} 1.0' in text
    assert 'scribe_judge_calls_total{outcome="judge_invalid_output"} 1.0' in text
    assert 'scribe_judge_calls_total{outcome="ok"} 1.0' in text
    assert "scribe_judge_retries_total 1.0" in text
    assert "scribe_fallback_routes_total 1.0" in text
    assert 'scribe_steps_total{status="ok"} 1.0' in text
    assert 'scribe_stage_seconds_count{stage="judge"} 1.0' in text
    assert "scribe_pending_trajectories 0.0" in text


def _metric_lines(client: TestClient, prefix: str) -> list[str]:
    return [line for line in client.get("/metrics").text.splitlines() if line.startswith(prefix)]


def test_identical_requests_are_judged_once_and_say_so(settings: Settings) -> None:
    judge = FakeJudge(delay=0.05)  # slow enough for a batch's twins to meet in flight
    with TestClient(create_app(settings, embedder=FakeEmbedder(), judge_backend=judge)) as client:
        first = _score(client, {"messages": MESSAGES})
        second = _score(client, {"messages": MESSAGES})
        assert len(judge.prompts) == 2  # one call per distinct step
        assert [s.cached for s in first.steps] == [False, False]
        assert [s.cached for s in second.steps] == [True, True]
        assert [s.score for s in second.steps] == [s.score for s in first.steps]

        twins = {"steps": [{"content": "Compute 3 * 4 = 12."}]}
        response = client.post("/v1/score/batch", json={"requests": [twins, twins]})
        assert response.status_code == 200
        cached = sorted(r["steps"][0]["cached"] for r in response.json()["results"])
        assert cached == [False, True] and len(judge.prompts) == 3

        assert _metric_lines(client, "scribe_judgment_cache_total") == [
            'scribe_judgment_cache_total{result="miss"} 3.0',
            'scribe_judgment_cache_total{result="hit"} 2.0',
            'scribe_judgment_cache_total{result="coalesced"} 1.0',
        ]
        assert _metric_lines(client, "scribe_judgment_cache_entries") == [
            "scribe_judgment_cache_entries 3.0"
        ]
        embedding = _metric_lines(client, "scribe_embedding_cache_total")
        # Both subgoals again in the second request, and the batch's twin.
        assert 'scribe_embedding_cache_total{result="hit"} 3.0' in embedding


def test_with_the_caches_off_every_step_is_judged_and_encoded(settings: Settings) -> None:
    settings.judgment_cache = False
    settings.embedding_cache_entries = 0
    settings.embedding_batch_window_ms = 0
    judge, embedder = FakeJudge(), FakeEmbedder()
    with TestClient(create_app(settings, embedder=embedder, judge_backend=judge)) as client:
        results = [_score(client, {"messages": MESSAGES}) for _ in range(2)]
        assert client.app.state.pipeline.embedder is embedder  # type: ignore[attr-defined]
        assert _metric_lines(client, "scribe_judgment_cache_total") == []
        assert _metric_lines(client, "scribe_embedding_cache_total") == []
    assert len(judge.prompts) == 4
    assert all(s.cached is None for r in results for s in r.steps)


def test_sampled_verdicts_are_never_cached_but_logprobs_are(settings: Settings) -> None:
    settings.judge_temperature = 0.7
    judge = FakeJudge()
    with TestClient(create_app(settings, embedder=FakeEmbedder(), judge_backend=judge)) as client:
        sampled = [_score(client, {"messages": MESSAGES}) for _ in range(2)]
        assert len(judge.prompts) == 4
        assert all(s.cached is None for r in sampled for s in r.steps)

        logprob = {"messages": MESSAGES, "options": {"judge_mode": "logprob"}}
        first, second = _score(client, logprob), _score(client, logprob)
    assert len(judge.prompts) == 6
    assert [s.cached for s in first.steps] == [False, False]
    assert [s.cached for s in second.steps] == [True, True]

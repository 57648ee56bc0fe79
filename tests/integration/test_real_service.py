"""The whole service on real components: MiniLM + FAISS routing over the trajectory fixtures
(and the dev corpus with --data-dir), and scoring with the bundled 1.5B judge, in-process and
behind llama.cpp's HTTP server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from scribe_client.protocol import RouteResponse, ScoreResponse
from scribe_service.app import create_app
from scribe_service.pipeline.embed import Embedder, SentenceTransformerEmbedder
from scribe_service.settings import Settings
from support import PROTOTYPES, ScriptedJudgeHandler, fixture_records, free_port

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def router_client(minilm_onnx: Embedder) -> Iterator[TestClient]:
    """The real app with MiniLM on its default backend (ONNX Runtime: what a user's service
    routes with, and 5x faster than torch over the 8,364 dev ProcessBench steps) and FAISS;
    the judge is never called by /v1/route."""
    settings = Settings(prototypes_dir=PROTOTYPES, judge_url="http://127.0.0.1:9/v1")
    with TestClient(create_app(settings, embedder=minilm_onnx)) as client:
        yield client


# Judging costs tens of seconds a step on a 2-core CPU: keep the prompts short in tests,
# and wait for a verdict rather than time out (a timed-out call keeps the server busy).
PROMPT_BUDGET = {"max_step_chars": 800, "max_context_chars": 600, "judge_timeout": 900.0}


@pytest.fixture(scope="module")
def embedded_client(minilm: SentenceTransformerEmbedder, judge_gguf: Path) -> Iterator[TestClient]:
    settings = Settings(prototypes_dir=PROTOTYPES, judge_model_path=judge_gguf, **PROMPT_BUDGET)
    with TestClient(create_app(settings, embedder=minilm)) as client:
        yield client


def _route_all(client: TestClient, records: list[dict[str, Any]]) -> list[RouteResponse]:
    """Every record routed, 32 requests in flight: the service coalesces their subgoals into
    larger encode calls, as it does under a trainer's load (one at a time, the 1,110
    ProcessBench records took over three minutes of CI)."""

    def route(record: dict[str, Any]) -> RouteResponse:
        response = client.post(
            "/v1/route",
            json={
                "messages": record["messages"],
                "tools": record.get("tools"),
                "request_id": record["id"],
            },
        )
        assert response.status_code == 200, (record["id"], response.text)
        return RouteResponse.model_validate(response.json())

    with ThreadPoolExecutor(max_workers=32) as pool:
        return list(pool.map(route, records))


# Fallback rates measured with MiniLM (ONNX and torch route all 8,732 dev steps alike): on the
# dev corpus 29.9 % of 368 HotpotQA agent steps and 19.6 % of 8,364 ProcessBench steps; on the
# fixtures 1 of 11 and 3 of 14. The bounds leave room for library edits, and fail a router that
# sends most steps to the generic rubric.
MAX_FALLBACK_RATE = {"hotpot": 0.40, "processbench": 0.30}


@pytest.mark.parametrize("corpus", ["hotpot", "processbench"])
@pytest.mark.parametrize("source", ["fixtures", "corpus"])
def test_every_trajectory_routes(
    router_client: TestClient, source: str, corpus: str, request: pytest.FixtureRequest
) -> None:
    """Every record of the fixtures, and of the dev corpus with --data-dir."""
    records: list[dict[str, Any]] = (
        fixture_records(corpus)
        if source == "fixtures"
        else request.getfixturevalue(f"{corpus}_corpus")
    )
    routed = _route_all(router_client, records)
    steps = fallbacks = 0
    for record, result in zip(records, routed, strict=True):
        assistant = [i for i, m in enumerate(record["messages"]) if m["role"] == "assistant"]
        indices = [s.message_index for s in result.steps]
        assert indices == assistant, record["id"]
        for key in record["step_labels"]:
            assert indices.count(int(key)) == 1
        for step in result.steps:
            steps += 1
            fallbacks += step.fallback
            # A prototype or an explicit fallback, never nothing.
            assert step.prototype_id
            assert step.fallback == (step.prototype_id == "generic_step")
            assert -1.0 <= step.similarity <= 1.0
    rate = fallbacks / steps
    print(f"\n{source} {corpus}: {steps} steps, fallback rate {rate:.1%}")
    assert rate <= MAX_FALLBACK_RATE[corpus], f"{fallbacks} of {steps} steps fell back"


def test_routing_separates_domains(router_client: TestClient, library: Any) -> None:
    domain = {p.id: p.domain for p in library.prototypes.values()}
    cases = {
        "search_qa": "I need to search for the year the school was founded.",
        "math": "Let's compute the total number of apples after the second purchase.",
        "tool_use": "Ask the user for their booking reference before cancelling the trip.",
    }
    for expected, subgoal in cases.items():
        response = router_client.post(
            "/v1/route", json={"steps": [{"subgoal": subgoal, "content": "…"}]}
        )
        step = response.json()["steps"][0]
        assert domain[step["prototype_id"]] == expected, (subgoal, step)


def _check_scored(result: ScoreResponse, steps: int) -> None:
    assert len(result.steps) == steps
    for step in result.steps:
        assert step.status == "ok", step.error
        assert step.score in (0, 1, 2, 3)
        assert step.reward == pytest.approx(step.score / 3)
    assert result.status == "ok" and result.process_reward is not None


def _short_hotpot(records: list[dict[str, Any]]) -> dict[str, Any]:
    two_steps = [r for r in records if sum(m["role"] == "assistant" for m in r["messages"]) == 2]
    record = min(two_steps, key=lambda r: sum(len(str(m.get("content"))) for m in r["messages"]))
    return {"messages": record["messages"], "tools": record.get("tools"), "outcome": 1.0}


def test_score_with_the_embedded_judge(embedded_client: TestClient) -> None:
    payload = _short_hotpot(fixture_records("hotpot"))
    response = embedded_client.post("/v1/score", json=payload)
    assert response.status_code == 200, response.text
    result = ScoreResponse.model_validate(response.json())
    _check_scored(result, sum(m["role"] == "assistant" for m in payload["messages"]))
    assert result.judge_model == "qwen2.5-coder-1.5b-instruct-q4_k_m"
    assert result.reward == pytest.approx(0.7 + 0.3 * result.process_reward)
    ready = embedded_client.get("/readyz").json()
    assert ready["ready"] and ready["checks"]["judge"]


def test_a_wrong_multiplication_scores_below_its_correct_twin(embedded_client: TestClient) -> None:
    """The issue's first example, on the bundled judge and the real router: the judge gave
    `3*4 = 7` a 3, as it gives `3*4 = 12`; the arithmetic check must make the difference.
    Logprob mode, as the issue measures (and one token a step instead of a verdict). Both
    trajectories must be judged: a failed step would score nothing and prove nothing."""
    scored = []
    for value in (7, 12):
        payload = {
            "prompt": "What is 3*4?",
            "completion": f"Step 1: 3*4 = {value}.\nStep 2: The answer is {value}.",
            "options": {"judge_mode": "logprob"},
        }
        response = embedded_client.post("/v1/score", json=payload)
        assert response.status_code == 200, response.text
        result = ScoreResponse.model_validate(response.json())
        assert [s.status for s in result.steps] == ["ok", "ok"], response.text
        assert all(s.expected_score is not None for s in result.steps)
        scored.append(result)
    wrong, right = scored
    assert [(f.check, f.failure_mode) for f in wrong.steps[0].findings if f.source == "check"] == [
        ("arithmetic", "arithmetic_error")
    ]
    assert all(f.source != "check" for step in right.steps for f in step.findings)
    assert wrong.steps[0].reward < right.steps[0].reward  # type: ignore[operator]
    assert wrong.process_reward < right.process_reward  # type: ignore[operator]


def test_score_with_llama_cpp_server_judge(
    llama_server: str, minilm: SentenceTransformerEmbedder
) -> None:
    settings = Settings(
        prototypes_dir=PROTOTYPES,
        judge_url=llama_server,
        judge_dialect="json_object",
        judge_concurrency=1,  # llama.cpp's server runs one completion at a time
        **PROMPT_BUDGET,
    )
    payload = {
        "prompt": "Joey loses 8 pounds in 4 weeks. How many pounds does he lose per week?",
        "completion": "Step 1: Compute the weekly rate\n8 / 4 = 2.\n"
        "Step 2: State the answer\nJoey loses \\boxed{2} pounds per week.",
    }
    with TestClient(create_app(settings, embedder=minilm)) as client:
        assert client.get("/readyz").status_code == 200
        response = client.post("/v1/score", json=payload)
    result = ScoreResponse.model_validate(response.json())
    _check_scored(result, 2)
    assert result.judge_model == "bundled-judge"
    assert [s.subgoal for s in result.steps] == ["Compute the weekly rate", "State the answer"]


def test_unreachable_judge_fails_steps_explicitly(minilm: SentenceTransformerEmbedder) -> None:
    settings = Settings(
        prototypes_dir=PROTOTYPES,
        judge_url=f"http://127.0.0.1:{free_port()}/v1",
        judge_model="m",
        judge_max_attempts=2,
        # Below the outage threshold, so the request is judged and fails step by step
        # (past it, /v1/score answers 503 at once: tests/service/test_judge_faults.py).
        judge_unreachable_after=10,
    )
    with TestClient(create_app(settings, embedder=minilm)) as client:
        assert "cannot reach the judge" in client.get("/readyz").json()["detail"]
        response = client.post(
            "/v1/score", json={"completion": "Let's add.\n\nThen check.", "outcome": 1}
        )
    assert response.status_code == 200
    result = ScoreResponse.model_validate(response.json())
    assert result.status == "failed"
    assert result.reward is None and result.process_reward is None
    for step in result.steps:
        assert step.status == "failed" and step.reward is None and step.score is None
        assert step.error is not None and step.error.type == "judge_unavailable"


class _GarbageJudge(ScriptedJudgeHandler):
    """Answers every completion with a score outside the rubric."""

    def reply(self) -> str:
        return '{"score": 7, "failure_modes": [], "rationale": "best ever"}'


def test_garbage_judge_fails_steps_explicitly(minilm: SentenceTransformerEmbedder) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _GarbageJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings = Settings(
            prototypes_dir=PROTOTYPES,
            judge_url=f"http://127.0.0.1:{server.server_address[1]}/v1",
            judge_max_attempts=2,
        )
        with TestClient(create_app(settings, embedder=minilm)) as client:
            response = client.post("/v1/score", json={"steps": [{"content": "2+2=4"}]})
    finally:
        server.shutdown()
        server.server_close()
    result = ScoreResponse.model_validate(response.json())
    [step] = result.steps
    assert step.status == "failed" and step.reward is None
    assert step.error is not None and step.error.type == "judge_invalid_output"
    assert "0-3" in step.error.message
    assert result.reward is None

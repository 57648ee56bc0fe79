from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from scribe_service.library import Library, Prototype
from scribe_service.pipeline.judge import (
    Judge,
    JudgeConnectionLost,
    JudgeHTTPError,
    JudgeInvalidOutput,
    JudgeTimeout,
    JudgeUnavailable,
    OpenAIJudge,
    Sampling,
    parse_verdict,
    verdict_schema,
)
from scribe_service.resilience import JudgeHealth, RetryBudget
from support import FakeJudge


@pytest.fixture
def prototype(library: Library) -> Prototype:
    return next(p for p in library.routable() if any(m.max_score < 3 for m in p.failure_modes))


def _reply(score: Any, modes: list[str] | None = None) -> str:
    return json.dumps({"failure_modes": modes or [], "rationale": "r", "score": score})


def test_valid_verdict(prototype: Prototype) -> None:
    verdict = parse_verdict(_reply(3), prototype)
    assert (verdict.score, verdict.failure_modes, verdict.rationale) == (3, (), "r")


def test_failure_mode_caps_the_score(prototype: Prototype) -> None:
    mode = min(prototype.failure_modes, key=lambda m: m.max_score)
    verdict = parse_verdict(_reply(3, [mode.id]), prototype)
    assert verdict.score == mode.max_score
    assert verdict.failure_modes == (mode.id,)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(_reply(4), id="out-of-range"),
        pytest.param(_reply(-1), id="negative"),
        pytest.param(_reply(2.5), id="float"),
        pytest.param(_reply("3"), id="string"),
        pytest.param(_reply(True), id="bool"),
        pytest.param(_reply(None), id="null"),
        pytest.param(_reply(2, ["no_such_mode"]), id="unknown-failure-mode"),
        pytest.param("the step is fine", id="no-json"),
        pytest.param('{"score": 2', id="truncated"),
        pytest.param('{"failure_modes": "x", "score": 1}', id="modes-not-list"),
    ],
)
def test_invalid_verdicts_are_errors_not_zeros(prototype: Prototype, raw: str) -> None:
    with pytest.raises(JudgeInvalidOutput):
        parse_verdict(raw, prototype)


def test_verdict_found_after_thinking_and_in_fences(prototype: Prototype) -> None:
    raw = '<think>{"score": 0}</think>\n```json\n' + _reply(2) + "\n```"
    assert parse_verdict(raw, prototype).score == 2


def test_schema_restricts_score_and_failure_modes(prototype: Prototype) -> None:
    schema = verdict_schema(prototype)
    assert schema["properties"]["score"]["enum"] == [0, 1, 2, 3]
    assert schema["properties"]["failure_modes"]["items"]["enum"] == list(
        prototype.failure_mode_ids()
    )


def _judge(backend: Any, attempts: int = 3) -> Judge:
    return Judge(
        backend, concurrency=2, timeout=5, max_attempts=attempts, sampling=Sampling(), backoff=0
    )


@pytest.mark.anyio
async def test_invalid_output_is_retried_with_sampling_then_succeeds(prototype: Prototype) -> None:
    backend = FakeJudge(replies=["garbage", _reply(1)])
    verdict = await _judge(backend).verdict([{"role": "user", "content": "x"}], prototype)
    assert verdict.score == 1 and len(backend.prompts) == 2


@pytest.mark.anyio
async def test_retries_are_bounded(prototype: Prototype) -> None:
    backend = FakeJudge(replies=["garbage"] * 5)
    with pytest.raises(JudgeInvalidOutput):
        await _judge(backend, attempts=3).verdict([], prototype)
    assert len(backend.prompts) == 3


@pytest.mark.anyio
async def test_client_errors_are_not_retried(prototype: Prototype) -> None:
    backend = FakeJudge(replies=[JudgeHTTPError(400, "bad request"), _reply(3)])
    with pytest.raises(JudgeHTTPError):
        await _judge(backend).verdict([], prototype)
    assert len(backend.prompts) == 1


@pytest.mark.anyio
async def test_transient_errors_are_retried(prototype: Prototype) -> None:
    backend = FakeJudge(replies=[JudgeHTTPError(503, "busy"), JudgeUnavailable("down"), _reply(3)])
    assert (await _judge(backend).verdict([], prototype)).score == 3


@pytest.mark.anyio
async def test_retry_budget_stops_retry_storms(prototype: Prototype) -> None:
    backend = FakeJudge(replies=[JudgeHTTPError(503, "busy") for _ in range(10)])
    judge = Judge(
        backend, concurrency=1, timeout=5, max_attempts=3, sampling=Sampling(), backoff=0,
        retry_budget=RetryBudget(ratio=0.0, capacity=1.0),
    )  # fmt: skip
    for _ in range(2):
        with pytest.raises(JudgeHTTPError, match="retry budget is spent"):
            await judge.verdict([], prototype)
    assert len(backend.prompts) == 3  # 1 + the one retry the budget held, then 1 with none


@pytest.mark.anyio
async def test_a_judge_marked_down_is_not_retried(prototype: Prototype) -> None:
    backend = FakeJudge(replies=[JudgeUnavailable("refused") for _ in range(10)])
    judge = Judge(
        backend, concurrency=1, timeout=5, max_attempts=5, sampling=Sampling(), backoff=0,
        health=JudgeHealth(threshold=2),
    )  # fmt: skip
    with pytest.raises(JudgeUnavailable, match="marked unavailable"):
        await judge.verdict([], prototype)
    assert len(backend.prompts) == 2 and not judge.health.available


@pytest.mark.anyio
async def test_any_answer_counts_as_reachable(prototype: Prototype) -> None:
    health = JudgeHealth(threshold=2)
    backend = FakeJudge(replies=[JudgeUnavailable("refused"), "garbage", JudgeUnavailable("x")])
    judge = Judge(
        backend, concurrency=1, timeout=5, max_attempts=3, sampling=Sampling(), backoff=0,
        health=health,
    )  # fmt: skip
    with pytest.raises(JudgeUnavailable):
        await judge.verdict([], prototype)
    assert health.available  # the garbage reply in between reset the count


@pytest.mark.anyio
async def test_judge_retry_after_is_honoured(prototype: Prototype) -> None:
    backend = FakeJudge(replies=[JudgeHTTPError(429, "slow down", retry_after=0.3), _reply(2)])
    started = time.monotonic()
    assert (await _judge(backend).verdict([], prototype)).score == 2
    assert time.monotonic() - started >= 0.3


def _openai_judge(handler: Any, dialect: str = "json_schema", **kw: Any) -> OpenAIJudge:
    return OpenAIJudge(
        "http://judge.test", dialect=dialect, transport=httpx.MockTransport(handler), **kw
    )


def _completion(content: str, finish: str = "stop") -> dict[str, Any]:
    return {"choices": [{"message": {"content": content}, "finish_reason": finish}]}


@pytest.mark.anyio
@pytest.mark.parametrize("dialect", ["json_schema", "json_object"])
async def test_openai_judge_request_shape(dialect: str, prototype: Prototype) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "judge-1"}]})
        seen.append(json.loads(request.content))
        assert request.url.path == "/v1/chat/completions"
        return httpx.Response(200, json=_completion(_reply(2)))

    judge = _openai_judge(handler, dialect)
    schema = verdict_schema(prototype)
    reply = await judge.complete([{"role": "user", "content": "x"}], schema, Sampling(seed=7))
    assert json.loads(reply.text)["score"] == 2
    assert judge.model == "judge-1"
    payload = seen[0]
    assert payload["model"] == "judge-1" and payload["seed"] == 7
    assert payload["temperature"] == 0.0
    assert "guided_json" not in payload  # ignored by vLLM >= 0.12: never rely on it
    if dialect == "json_schema":
        assert payload["response_format"]["type"] == "json_schema"
        assert payload["response_format"]["json_schema"]["schema"] == schema
    else:
        assert payload["response_format"] == {"type": "json_object", "schema": schema}
    await judge.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("handler_reply", "error"),
    [
        pytest.param(httpx.Response(500, text="boom"), JudgeHTTPError, id="http-500"),
        pytest.param(httpx.Response(200, text="not json"), JudgeInvalidOutput, id="not-json"),
        pytest.param(httpx.Response(200, json={"choices": []}), JudgeInvalidOutput, id="no-choice"),
        pytest.param(
            httpx.Response(200, json=_completion('{"score": 1', "length")),
            JudgeInvalidOutput,
            id="cut-off",
        ),
    ],
)
async def test_openai_judge_errors(handler_reply: httpx.Response, error: type[Exception]) -> None:
    judge = _openai_judge(lambda request: handler_reply, model="m")
    with pytest.raises(error):
        await judge.complete([], {}, Sampling())
    await judge.aclose()


@pytest.mark.anyio
async def test_openai_judge_transport_errors() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def dropped(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("Server disconnected", request=request)

    cases = ((refuse, JudgeUnavailable), (slow, JudgeTimeout), (dropped, JudgeConnectionLost))
    for handler, error in cases:
        judge = _openai_judge(handler, model="m")
        with pytest.raises(error):
            await judge.complete([], {}, Sampling())
        await judge.aclose()


@pytest.mark.anyio
async def test_openai_judge_reads_retry_after() -> None:
    judge = _openai_judge(lambda r: httpx.Response(429, headers={"Retry-After": "2"}), model="m")
    with pytest.raises(JudgeHTTPError) as caught:
        await judge.complete([], {}, Sampling())
    assert caught.value.retry_after == 2.0 and caught.value.transient
    await judge.aclose()


def test_api_base_appends_v1_only_to_bare_hosts() -> None:
    from scribe_service.pipeline.judge import _api_base

    assert _api_base("http://h:8000") == "http://h:8000/v1"
    assert _api_base("http://h:8000/v1/") == "http://h:8000/v1"
    assert _api_base("https://api.example.com/openai/v1") == "https://api.example.com/openai/v1"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("owned_by", "dialect"),
    [
        ("vllm", "json_schema"),
        ("me", "json_object"),  # llama-cpp-python's server
        ("llamacpp", "json_object"),  # llama.cpp's own llama-server
        (None, "json_schema"),
    ],
)
async def test_auto_dialect_is_read_from_the_server(owned_by: str | None, dialect: str) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            entry = {"id": "j"} | ({"owned_by": owned_by} if owned_by else {})
            return httpx.Response(200, json={"data": [entry]})
        seen.append(json.loads(request.content))
        return httpx.Response(200, json=_completion(_reply(1)))

    judge = _openai_judge(handler, "auto", model="j")
    assert judge.dialect == "auto"
    await judge.complete([], {"type": "object"}, Sampling())
    assert judge.dialect == dialect
    assert seen[0]["response_format"]["type"] == dialect
    await judge.aclose()


@pytest.mark.anyio
async def test_sampling_is_sent_on_every_call() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        body = _completion(_reply(1)) | {"usage": {"completion_tokens": 12}}
        return httpx.Response(200, json=body)

    judge = _openai_judge(handler, model="m")
    sampling = Sampling(temperature=0.3, top_p=0.9, seed=11, max_tokens=64)
    completion = await judge.complete([], {}, sampling)
    assert completion.output_tokens == 12
    assert {k: seen[0][k] for k in ("temperature", "top_p", "seed", "max_tokens")} == {
        "temperature": 0.3, "top_p": 0.9, "seed": 11, "max_tokens": 64
    }  # fmt: skip
    await judge.aclose()


@pytest.mark.anyio
async def test_score_token_asks_for_one_token_and_its_alternatives() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        top = [{"token": "2", "logprob": -0.2}, {"token": "3", "logprob": -1.9}]
        body = {
            "choices": [
                {
                    "message": {"content": "2"},
                    "finish_reason": "length",
                    "logprobs": {"content": [{"token": "2", "logprob": -0.2, "top_logprobs": top}]},
                }
            ],
            "usage": {"completion_tokens": 1},
        }
        return httpx.Response(200, json=body)

    judge = _openai_judge(handler, model="m")
    completion = await judge.score_token([], Sampling(max_tokens=200, seed=3))
    payload = seen[0]
    assert payload["max_tokens"] == 1 and payload["logprobs"] is True
    assert payload["top_logprobs"] == 20 and payload["seed"] == 3
    # Never constrained: vLLM would return the masked (renormalised) distribution.
    assert "response_format" not in payload and "structured_outputs" not in payload
    assert completion.top_logprobs == (("2", -0.2), ("3", -1.9))
    assert completion.output_tokens == 1 and completion.text == "2"
    await judge.aclose()


@pytest.mark.anyio
async def test_judge_in_logprob_mode(prototype: Prototype) -> None:
    import math

    backend = FakeJudge(logprobs={"1": math.log(0.25), "2": math.log(0.75)})
    judge = _judge(backend)
    verdict = await judge.verdict([], prototype, "logprob")
    assert (verdict.score, verdict.expected_score, verdict.score_mass) == (2, 1.75, 1.0)
    assert backend.samplings[-1].max_tokens == 1
    assert judge.sampling("logprob").max_tokens == 1 and judge.sampling("verdict").max_tokens == 200


@pytest.mark.anyio
async def test_low_score_mass_fails_without_retry(prototype: Prototype) -> None:
    from scribe_service.pipeline.judge import JudgeLowScoreMass

    backend = FakeJudge(logprobs={"The": -0.1, "2": -4.0})
    with pytest.raises(JudgeLowScoreMass):
        await _judge(backend, attempts=3).verdict([], prototype, "logprob")
    assert len(backend.prompts) == 1

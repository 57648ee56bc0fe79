from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from scribe_service.library import Library, Prototype
from scribe_service.pipeline.judge import (
    Completion,
    Judge,
    JudgeConnectionLost,
    JudgeContextExceeded,
    JudgeHTTPError,
    JudgeInvalidOutput,
    JudgeNoLogprobs,
    JudgeTimeout,
    JudgeUnavailable,
    Messages,
    OpenAIJudge,
    Sampling,
    is_context_exceeded,
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


def test_the_schema_asks_for_two_failure_modes_and_every_extra_one_still_caps(
    library: Library,
) -> None:
    prototype = next(p for p in library.routable() if len(p.failure_modes) >= 3)
    ids = list(prototype.failure_mode_ids())
    caps = {mode.id: mode.max_score for mode in prototype.failure_modes}
    assert verdict_schema(prototype)["properties"]["failure_modes"]["maxItems"] == 2
    assert parse_verdict(_reply(2, ids[:2] + ids[:1]), prototype).failure_modes == tuple(ids[:2])
    # An engine that ignores maxItems: the third mode is kept, and its cap applies.
    verdict = parse_verdict(_reply(3, ids[:3]), prototype)
    assert verdict.failure_modes == tuple(ids[:3])
    assert verdict.score == min(caps[i] for i in ids[:3])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_reply(4), r"^score must be an integer 0-3, got 4 \("),
        (_reply(True), r"^score must be an integer 0-3, got True \("),
        (_reply(2, ["no_such_mode"]), r"^failure modes not in prototype '.+': \['no_such_mode'\]$"),
        ('{"failure_modes": "x", "score": 1}', r"^failure_modes must be a list"),
        ('{"rationale": 5, "score": 1}', r"^rationale must be a string, got 5 \("),
        ("prose", r"^no JSON verdict in the judge's reply"),
    ],
)
def test_invalid_verdicts_say_what_is_wrong(prototype: Prototype, raw: str, message: str) -> None:
    with pytest.raises(JudgeInvalidOutput, match=message):
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
    # Through the HTTP backend, so what is checked is what went out on the wire.
    sent: list[dict[str, Any]] = []
    replies = iter(["garbage", "still garbage", _reply(1)])

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json=_completion(next(replies)))

    sleeps: list[float] = []
    judge = Judge(
        _openai_judge(handler, model="m"), concurrency=1, timeout=5, max_attempts=3,
        sampling=Sampling(temperature=0.0, seed=7), sleep=_recorder(sleeps),
    )  # fmt: skip
    verdict = await judge.verdict([{"role": "user", "content": "x"}], prototype)
    assert verdict.score == 1
    assert [(p["temperature"], p["seed"]) for p in sent] == [(0.0, 7), (0.5, 8), (0.5, 10)]
    assert sleeps == [0.0, 0.0]  # a bad answer is no reason to wait
    assert judge.sampling("verdict") == Sampling(temperature=0.0, seed=7)  # first calls: greedy
    await judge.backend.aclose()


@pytest.mark.anyio
async def test_retries_without_a_seed_stay_unseeded(prototype: Prototype) -> None:
    backend = FakeJudge(replies=["garbage", _reply(1)])
    judge = Judge(
        backend, concurrency=1, timeout=5, max_attempts=2, sampling=Sampling(seed=None),
        backoff=0,
    )  # fmt: skip
    assert (await judge.verdict([], prototype)).score == 1
    assert [(s.temperature, s.seed) for s in backend.samplings] == [(0.0, None), (0.5, None)]


@pytest.mark.anyio
async def test_a_judge_with_other_sampling_shares_its_bounds(prototype: Prototype) -> None:
    backend = FakeJudge(delay=0.05)
    base = Judge(backend, concurrency=1, timeout=5, max_attempts=1, sampling=Sampling(seed=0))
    other = base.with_sampling(Sampling(temperature=1.0, seed=3))
    assert other.backend is backend and other.health is base.health
    in_flight, peak = 0, 0
    original = backend._next

    async def counted(messages: Messages, sampling: Sampling) -> str | None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await original(messages, sampling)
        finally:
            in_flight -= 1

    backend._next = counted  # type: ignore[method-assign]
    await asyncio.gather(base.verdict([], prototype), other.verdict([], prototype))
    assert peak == 1  # one call in flight across both: they share the judge's slots
    assert sorted((s.temperature, s.seed) for s in backend.samplings) == [(0.0, 0), (1.0, 3)]
    assert base.sampling("verdict") == Sampling(seed=0)


@pytest.mark.anyio
async def test_other_errors_are_retried_with_the_same_sampling(prototype: Prototype) -> None:
    backend = FakeJudge(replies=[JudgeHTTPError(503, "busy"), _reply(1)])
    assert (await _judge(backend).verdict([], prototype)).score == 1
    assert backend.samplings == [Sampling(), Sampling()]


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


def _recorder(sleeps: list[float]) -> Callable[[float], Awaitable[None]]:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return sleep


@pytest.mark.anyio
async def test_judge_retry_after_is_honoured(prototype: Prototype) -> None:
    backend = FakeJudge(
        replies=[
            JudgeHTTPError(429, "slow down", retry_after=3.0),
            JudgeHTTPError(429, "slower", retry_after=600.0),
            _reply(2),
        ]
    )
    sleeps: list[float] = []
    judge = Judge(
        backend, concurrency=1, timeout=5, max_attempts=3, sampling=Sampling(), backoff=0.01,
        backoff_max=10.0, sleep=_recorder(sleeps),
    )  # fmt: skip
    assert (await judge.verdict([], prototype)).score == 2
    assert sleeps == [3.0, 10.0]  # the judge's word, up to backoff_max


@pytest.mark.anyio
async def test_backoff_is_jittered_exponential(prototype: Prototype) -> None:
    backend = FakeJudge(replies=[JudgeHTTPError(503, "busy")] * 3 + [_reply(2)])
    sleeps: list[float] = []
    judge = Judge(
        backend, concurrency=1, timeout=5, max_attempts=4, sampling=Sampling(), backoff=1.0,
        backoff_max=3.0, sleep=_recorder(sleeps),
    )  # fmt: skip
    assert (await judge.verdict([], prototype)).score == 2
    assert len(sleeps) == 3
    assert all(0 <= s <= ceiling for s, ceiling in zip(sleeps, [1.0, 2.0, 3.0], strict=True))


@pytest.mark.anyio
async def test_exhausted_attempts_are_named_in_the_message(prototype: Prototype) -> None:
    backend = FakeJudge(replies=[JudgeHTTPError(503, "busy")] * 3)
    with pytest.raises(JudgeHTTPError, match=r"HTTP 503: busy \(after 3 attempts\)$"):
        await _judge(backend, attempts=3).verdict([], prototype)


@pytest.mark.anyio
async def test_a_bug_in_a_backend_is_not_retried(prototype: Prototype) -> None:
    backend = FakeJudge(replies=[RuntimeError("bug"), _reply(2)])
    with pytest.raises(RuntimeError, match="bug"):
        await _judge(backend).verdict([], prototype)
    assert len(backend.prompts) == 1


# --- a prompt longer than the judge's context ----------------------------------------------

# Verbatim from the engines (numbers aside).
VLLM_TOO_LONG = (
    "This model's maximum context length is 2048 tokens. However, you requested 2254 tokens "
    "(2054 in the messages, 200 in the completion). Please reduce the length of the messages "
    "or completion."
)
VLLM_V1_TOO_LONG = (
    "'max_tokens' or 'max_completion_tokens' is too large: 200. This model's maximum context "
    "length is 2048 tokens and your request has 1990 input tokens (200 > 2048 - 1990)."
)
VLLM_DECODER_TOO_LONG = (
    "The decoder prompt (length 2300) is longer than the maximum model length of 2048. Make "
    "sure that `max_model_len` is no smaller than the number of text tokens."
)
LLAMA_SERVER_TOO_LONG = "request (4476 tokens) exceeds the available context size (4096 tokens)"
LLAMA_CPP_PYTHON_TOO_LONG = "Requested tokens (600) exceed context window of 512"


@pytest.mark.parametrize(
    "message",
    [VLLM_TOO_LONG, VLLM_V1_TOO_LONG, VLLM_DECODER_TOO_LONG, LLAMA_SERVER_TOO_LONG,
     LLAMA_CPP_PYTHON_TOO_LONG],
)  # fmt: skip
def test_context_overflow_wordings_are_recognised(message: str) -> None:
    assert is_context_exceeded(message)


@pytest.mark.parametrize(
    "message",
    ["Invalid 'messages': empty", "model 'x' not found", "rate limited", "context: bad input"],
)
def test_other_errors_are_not_context_overflows(message: str) -> None:
    assert not is_context_exceeded(message)


def _error_body(message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"message": message, "type": "BadRequestError", "code": 400, **extra}}


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(_error_body(VLLM_TOO_LONG), id="vllm"),
        pytest.param(_error_body(VLLM_DECODER_TOO_LONG), id="vllm-decoder"),
        pytest.param(
            _error_body(LLAMA_SERVER_TOO_LONG, type="exceed_context_size_error"),
            id="llama-server",
        ),
    ],
)
async def test_openai_judge_reports_an_overlong_prompt(body: dict[str, Any]) -> None:
    judge = _openai_judge(lambda r: httpx.Response(400, json=body), model="m")
    with pytest.raises(JudgeContextExceeded, match="does not fit the judge's context") as caught:
        await judge.complete([], {}, Sampling())
    assert caught.value.type == "judge_context_exceeded" and not caught.value.transient
    await judge.aclose()


@pytest.mark.anyio
async def test_a_5xx_that_mentions_the_context_is_still_a_server_error() -> None:
    reply = httpx.Response(500, json=_error_body("maximum context length bookkeeping failed"))
    judge = _openai_judge(lambda r: reply, model="m")
    with pytest.raises(JudgeHTTPError) as caught:
        await judge.complete([], {}, Sampling())
    assert caught.value.transient
    await judge.aclose()


@pytest.mark.anyio
async def test_an_overlong_prompt_is_never_retried(prototype: Prototype) -> None:
    backend = FakeJudge(replies=[JudgeContextExceeded("too long"), _reply(2)])
    judge = _judge(backend, attempts=5)
    with pytest.raises(JudgeContextExceeded, match="^too long$"):
        await judge.verdict([], prototype)
    assert len(backend.prompts) == 1
    assert judge.health.available  # the judge answered: it is there


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
async def test_a_reply_without_logprobs_fails_once_as_invalid_output(prototype: Prototype) -> None:
    class NoLogprobs(FakeJudge):  # a server with logprobs switched off
        async def score_token(self, messages: Messages, sampling: Sampling) -> Completion:
            self.prompts.append(messages)
            return Completion("2")

    backend = NoLogprobs()
    with pytest.raises(JudgeNoLogprobs) as raised:
        await _judge(backend, attempts=3).verdict([], prototype, "logprob")
    assert raised.value.type == "judge_invalid_output"
    assert len(backend.prompts) == 1  # the same call would come back without them again


@pytest.mark.anyio
async def test_low_score_mass_fails_without_retry(prototype: Prototype) -> None:
    from scribe_service.pipeline.judge import JudgeLowScoreMass

    backend = FakeJudge(logprobs={"The": -0.1, "2": -4.0})
    with pytest.raises(JudgeLowScoreMass):
        await _judge(backend, attempts=3).verdict([], prototype, "logprob")
    assert len(backend.prompts) == 1

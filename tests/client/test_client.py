"""RewardClient and AsyncRewardClient against httpx.MockTransport handlers.

Each behaviour test runs on both twins: `make_rig` builds either client around a handler,
and `Rig.call` awaits when the method returned a coroutine, so a test body is written once.
"""

from __future__ import annotations

import inspect
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pydantic
import pytest

from scribe_client import (
    AsyncRewardClient,
    AuthenticationError,
    BatchScoreRequest,
    ErrorResponse,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    ProtocolError,
    PrototypeDetail,
    PrototypeList,
    ReadyResponse,
    RewardClient,
    RouteResponse,
    ScoreRequest,
    ScoreResponse,
    ServiceConnectionError,
    ServiceTimeoutError,
    ServiceUnavailableError,
    StatusError,
    __version__,
)
from scribe_client._base import backoff_delay, parse_retry_after

pytestmark = pytest.mark.anyio

Handler = Callable[[httpx.Request], httpx.Response]
Client = RewardClient | AsyncRewardClient


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def clean_client_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own SCRIBE_* settings must not change what these tests see.
    monkeypatch.delenv("SCRIBE_URL", raising=False)
    monkeypatch.delenv("SCRIBE_API_KEY", raising=False)


# --- canned wire bodies --------------------------------------------------------------------


def step_result(index: int) -> dict[str, Any]:
    return {
        "index": index,
        "subgoal": f"subgoal {index}",
        "subgoal_source": "derived",
        "prototype_id": "arithmetic",
        "similarity": 0.8,
        "fallback": False,
        "score": 3,
        "reward": 1.0,
        "status": "ok",
    }


def score_body(request_id: str) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "status": "ok",
        "reward": 1.0,
        "process_reward": 1.0,
        "outcome_reward": None,
        "steps": [step_result(0), step_result(1)],
        "library_version": "lib-1",
        "judge_model": "judge-1",
    }


def error_body(message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"type": "invalid_request", "message": message, "param": param}}


PROTOTYPE = {"id": "arithmetic", "name": "Arithmetic", "domain": "math", "usage_context": "sums"}


def service(request: httpx.Request) -> httpx.Response:
    """A well-behaved scribe-reward service, routed on the path as the real one is."""
    path = request.url.path
    body = json.loads(request.content) if request.content else {}
    if path == "/v1/score":
        return httpx.Response(200, json=score_body(body.get("request_id", "generated")))
    if path == "/v1/score/batch":
        results = [score_body(item["request_id"]) for item in body["requests"]]
        return httpx.Response(200, json={"results": results})
    if path == "/v1/route":
        route = {key: value for key, value in step_result(0).items() if key in ROUTE_KEYS}
        return httpx.Response(
            200, json={"request_id": "r", "steps": [route], "library_version": "lib-1"}
        )
    if path == "/v1/prototypes":
        return httpx.Response(200, json={"library_version": "lib-1", "prototypes": [PROTOTYPE]})
    if path.startswith("/v1/prototypes/"):
        detail = PROTOTYPE | {
            "id": request.url.raw_path.decode().rpartition("/")[2],
            "reasoning_pattern": "add",
            "levels": {str(level): "descriptor" for level in range(4)},
            "failure_modes": [],
            "exemplars": ["add two numbers"],
        }
        return httpx.Response(200, json=detail)
    if path == "/healthz":
        return httpx.Response(200, json={"status": "ok"})
    if path == "/readyz":
        return httpx.Response(200, json={"ready": True, "prototypes": 1})
    return httpx.Response(404, json=error_body(f"no route {path}"))


ROUTE_KEYS = {"index", "subgoal", "subgoal_source", "prototype_id", "similarity", "fallback"}


@dataclass
class Script:
    """A handler that gives its answers in turn (repeating the last) and records requests."""

    answers: list[httpx.Response | Exception]
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer


# --- the sync/async rig --------------------------------------------------------------------


@dataclass
class Rig:
    client: Client
    http: httpx.Client | httpx.AsyncClient
    sleeps: list[float]

    async def call(self, method: str, *args: Any) -> Any:
        result = getattr(self.client, method)(*args)
        return await result if inspect.isawaitable(result) else result


MakeRig = Callable[..., Rig]


@pytest.fixture(params=[pytest.param("sync", id="sync"), pytest.param("async", id="async")])
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_rig(flavour: str) -> MakeRig:
    def make(handler: Handler = service, **kwargs: Any) -> Rig:
        transport = httpx.MockTransport(handler)
        sleeps: list[float] = []
        if flavour == "sync":
            sync_http = httpx.Client(transport=transport)
            sync_client = RewardClient(http_client=sync_http, **kwargs)
            sync_client._sleep = sleeps.append
            return Rig(sync_client, sync_http, sleeps)

        async def record(delay: float) -> None:
            sleeps.append(delay)

        async_http = httpx.AsyncClient(transport=transport)
        async_client = AsyncRewardClient(http_client=async_http, **kwargs)
        async_client._sleep = record
        return Rig(async_client, async_http, sleeps)

    return make


async def close(client: Client) -> None:
    if isinstance(client, RewardClient):
        with client:
            pass
    else:
        async with client:
            pass


# --- round trips ---------------------------------------------------------------------------


async def test_score_round_trip(make_rig: MakeRig) -> None:
    script = Script([httpx.Response(200, json=score_body("r-1"))])
    rig = make_rig(script)

    result = await rig.call("score", ScoreRequest(prompt="2 + 2?", completion="2 + 2 = 4."))

    assert isinstance(result, ScoreResponse)
    assert result.request_id == "r-1"
    assert [step.index for step in result.steps] == [0, 1]
    [sent] = script.requests
    assert (sent.method, str(sent.url)) == ("POST", "http://127.0.0.1:8000/v1/score")
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["user-agent"] == f"scribe-client/{__version__}"
    assert "authorization" not in sent.headers
    # None fields are left out, so the server applies its own defaults for them.
    assert json.loads(sent.content) == {
        "prompt": "2 + 2?",
        "completion": "2 + 2 = 4.",
        "options": {"aggregation": "mean", "outcome_weight": 0.7, "process_weight": 0.3},
    }


async def test_score_validates_a_dict_into_the_request_model(make_rig: MakeRig) -> None:
    rig = make_rig()

    result = await rig.call("score", {"steps": [{"content": "4"}], "request_id": "mine"})

    assert result.request_id == "mine"


async def test_invalid_dict_raises_before_sending(make_rig: MakeRig) -> None:
    script = Script([httpx.Response(200, json=score_body("r"))])
    rig = make_rig(script)

    with pytest.raises(pydantic.ValidationError, match="exactly one of"):
        await rig.call("score", {"completion": "a", "steps": [{"content": "b"}]})
    assert script.requests == []


async def test_score_batch_keeps_request_order(make_rig: MakeRig) -> None:
    rig = make_rig()
    ids = ["c", "a", "b"]

    results = await rig.call(
        "score_batch", [{"completion": "x", "request_id": request_id} for request_id in ids]
    )
    from_model = await rig.call(
        "score_batch",
        BatchScoreRequest(requests=[ScoreRequest(completion="x", request_id="z")]),
    )

    assert [result.request_id for result in results] == ids
    assert [result.request_id for result in from_model] == ["z"]


async def test_score_batch_with_missing_results_is_a_protocol_error(make_rig: MakeRig) -> None:
    rig = make_rig(Script([httpx.Response(200, json={"results": [score_body("a")]})]))

    with pytest.raises(ProtocolError, match="sent 2 requests but got 1 results"):
        await rig.call("score_batch", [{"completion": "x"}, {"completion": "y"}])


async def test_route(make_rig: MakeRig) -> None:
    rig = make_rig()

    result = await rig.call("route", {"completion": "Step 1: add."})

    assert isinstance(result, RouteResponse)
    assert result.steps[0].prototype_id == "arithmetic"


async def test_prototypes_and_prototype(make_rig: MakeRig) -> None:
    rig = make_rig()

    listing = await rig.call("prototypes")
    detail = await rig.call("prototype", "odd/id")

    assert isinstance(listing, PrototypeList)
    assert [summary.id for summary in listing.prototypes] == ["arithmetic"]
    assert isinstance(detail, PrototypeDetail)
    assert detail.id == "odd%2Fid"  # the id stays one path segment


async def test_health_and_ready(make_rig: MakeRig) -> None:
    rig = make_rig()

    assert (await rig.call("health")).status == "ok"
    assert (await rig.call("ready")).ready is True


# --- configuration -------------------------------------------------------------------------


async def test_env_fallback_for_url_and_api_key(
    make_rig: MakeRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCRIBE_URL", "http://scribe.test:9000/prefix/")
    monkeypatch.setenv("SCRIBE_API_KEY", "sk-env")
    script = Script([httpx.Response(200, json={"status": "ok"})])
    rig = make_rig(script)

    await rig.call("health")

    [sent] = script.requests
    assert str(sent.url) == "http://scribe.test:9000/prefix/healthz"
    assert sent.headers["authorization"] == "Bearer sk-env"


async def test_arguments_win_over_env(make_rig: MakeRig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRIBE_URL", "http://from-env")
    monkeypatch.setenv("SCRIBE_API_KEY", "sk-env")
    script = Script([httpx.Response(200, json={"status": "ok"})])
    rig = make_rig(script, base_url="http://from-arg", api_key="sk-arg")

    await rig.call("health")

    [sent] = script.requests
    assert sent.url.host == "from-arg"
    assert sent.headers["authorization"] == "Bearer sk-arg"


def test_negative_max_retries_is_refused() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        RewardClient(max_retries=-1)


# --- retries -------------------------------------------------------------------------------


async def test_retries_a_503_then_succeeds(make_rig: MakeRig) -> None:
    script = Script(
        [httpx.Response(503, json=error_body("loading")), httpx.Response(200, json=score_body("r"))]
    )
    rig = make_rig(script)

    result = await rig.call("score", {"completion": "x"})

    assert result.request_id == "r"
    assert len(script.requests) == 2
    [delay] = rig.sleeps
    assert 0.0 <= delay <= 0.5  # the first backoff step, with full jitter


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        pytest.param("3", 3.0, id="seconds"),
        pytest.param("0.25", 0.25, id="fractional"),
        pytest.param("3600", 60.0, id="capped"),
    ],
)
async def test_retry_after_is_honoured(
    make_rig: MakeRig, retry_after: str, expected: float
) -> None:
    busy = httpx.Response(429, json=error_body("busy"), headers={"Retry-After": retry_after})
    rig = make_rig(Script([busy, httpx.Response(200, json={"status": "ok"})]))

    await rig.call("health")

    assert rig.sleeps == [expected]


@pytest.mark.parametrize(
    ("status", "error_cls"),
    [
        pytest.param(400, InvalidRequestError, id="400"),
        pytest.param(401, AuthenticationError, id="401"),
        pytest.param(404, NotFoundError, id="404"),
        pytest.param(413, PayloadTooLargeError, id="413"),
        pytest.param(422, InvalidRequestError, id="422"),
        pytest.param(500, StatusError, id="500"),
    ],
)
async def test_no_retry_on_client_errors_or_500(
    make_rig: MakeRig, status: int, error_cls: type[StatusError]
) -> None:
    body = error_body("tool message answers no call", param="messages[2].tool_call_id")
    headers = {"X-Request-ID": "req-9"}
    script = Script([httpx.Response(status, json=body, headers=headers)])
    rig = make_rig(script)

    with pytest.raises(error_cls) as caught:
        await rig.call("score", {"completion": "x"})

    assert type(caught.value) is error_cls
    assert len(script.requests) == 1
    assert rig.sleeps == []
    error = caught.value
    assert (error.status_code, error.param, error.request_id) == (
        status,
        "messages[2].tool_call_id",
        "req-9",
    )
    assert isinstance(error.error, ErrorResponse)
    assert "tool message answers no call" in str(error)
    assert "(param: messages[2].tool_call_id)" in str(error)


@pytest.mark.parametrize(
    ("status", "error_cls"),
    [
        pytest.param(429, OverloadedError, id="429"),
        pytest.param(503, ServiceUnavailableError, id="503"),
    ],
)
async def test_retries_run_out(
    make_rig: MakeRig, status: int, error_cls: type[StatusError]
) -> None:
    script = Script([httpx.Response(status, json=error_body("at capacity"))])
    rig = make_rig(script, max_retries=2)

    with pytest.raises(error_cls, match="at capacity"):
        await rig.call("score", {"completion": "x"})

    assert len(script.requests) == 3
    assert len(rig.sleeps) == 2


async def test_error_body_that_is_not_json_is_kept_as_text(make_rig: MakeRig) -> None:
    rig = make_rig(Script([httpx.Response(502, text="<html>Bad Gateway</html>")]), max_retries=0)

    with pytest.raises(StatusError, match=r"502 Bad Gateway from GET .*<html>") as caught:
        await rig.call("health")

    assert caught.value.error is None
    assert caught.value.param is None


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(httpx.ConnectError, id="refused"),
        pytest.param(httpx.ConnectTimeout, id="connect-timeout"),
    ],
)
async def test_connect_failures_are_retried(
    make_rig: MakeRig, failure: type[httpx.TransportError]
) -> None:
    script = Script([failure("no route to host")])
    rig = make_rig(script, max_retries=2)

    with pytest.raises(ServiceConnectionError, match="after 3 attempts") as caught:
        await rig.call("health")

    assert len(script.requests) == 3
    assert len(rig.sleeps) == 2
    assert isinstance(caught.value.__cause__, failure)


async def test_read_timeout_is_not_retried(make_rig: MakeRig) -> None:
    script = Script([httpx.ReadTimeout("slow judge")])
    rig = make_rig(script)

    with pytest.raises(ServiceTimeoutError, match="timed out") as caught:
        await rig.call("score", {"completion": "x"})

    assert len(script.requests) == 1
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"text": "not json"}, id="not-json"),
        pytest.param({"json": {"reward": 1.0}}, id="wrong-shape"),
    ],
)
async def test_malformed_success_body_is_a_protocol_error(
    make_rig: MakeRig, body: dict[str, Any]
) -> None:
    rig = make_rig(Script([httpx.Response(200, **body)]))

    with pytest.raises(ProtocolError, match="not a valid ScoreResponse") as caught:
        await rig.call("score", {"completion": "x"})

    assert isinstance(caught.value.__cause__, pydantic.ValidationError)


# --- /readyz -------------------------------------------------------------------------------


async def test_ready_returns_the_503_body_without_retrying(make_rig: MakeRig) -> None:
    not_ready = {"ready": False, "checks": {"judge": False}, "detail": "judge unreachable"}
    script = Script([httpx.Response(503, json=not_ready)])
    rig = make_rig(script)

    result = await rig.call("ready")

    assert isinstance(result, ReadyResponse)
    assert (result.ready, result.checks) == (False, {"judge": False})
    assert len(script.requests) == 1


async def test_ready_503_from_something_else_raises(make_rig: MakeRig) -> None:
    rig = make_rig(Script([httpx.Response(503, text="upstream down")]))

    with pytest.raises(ServiceUnavailableError, match="upstream down"):
        await rig.call("ready")


# --- lifecycle -----------------------------------------------------------------------------


async def test_injected_http_client_is_not_closed(make_rig: MakeRig) -> None:
    rig = make_rig()

    await close(rig.client)

    assert not rig.http.is_closed


@pytest.mark.parametrize(
    "client_cls",
    [pytest.param(RewardClient, id="sync"), pytest.param(AsyncRewardClient, id="async")],
)
async def test_own_http_client_is_closed(client_cls: type[Client]) -> None:
    client = client_cls()

    await close(client)

    assert client._http.is_closed


# --- pure policy ---------------------------------------------------------------------------

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, None, id="absent"),
        pytest.param("7", 7.0, id="seconds"),
        pytest.param("Wed, 01 Jan 2025 12:00:30 GMT", 30.0, id="http-date"),
        pytest.param("Wed, 01 Jan 2025 12:00:30 -0000", 30.0, id="http-date-no-zone"),
        pytest.param("Wed, 01 Jan 2025 11:00:00 GMT", 0.0, id="date-in-the-past"),
        pytest.param("soon", None, id="garbage"),
        pytest.param("nan", None, id="nan"),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    headers = httpx.Headers({} if value is None else {"Retry-After": value})

    assert parse_retry_after(headers, now=NOW) == expected


@pytest.mark.parametrize("attempt", [0, 1, 2, 3, 10])
def test_backoff_stays_within_its_cap(attempt: int) -> None:
    delays = [backoff_delay(attempt) for _ in range(200)]

    assert all(0.0 <= delay <= min(8.0, 0.5 * 2**attempt) for delay in delays)


def test_status_error_survives_pickling() -> None:
    error = InvalidRequestError(
        422,
        ErrorResponse.model_validate(error_body("bad", param="steps")),
        "req-1",
        body="{}",
        endpoint="POST http://h/v1/score",
    )

    copy = pickle.loads(pickle.dumps(error))

    assert type(copy) is InvalidRequestError
    assert (str(copy), copy.param, copy.request_id) == (str(error), "steps", "req-1")

"""`scribe eval labels --url`: the `scribe` arms judged by a real service over real uvicorn
(hashed-words embedder, a scripted judge), the other arms here; the judgments must equal an
in-process run's, a rerun must send nothing, and a service that segments otherwise must stop
the run with an error naming the record."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from scribe_client import AsyncRewardClient
from scribe_service.app import create_app
from scribe_service.cli import main
from scribe_service.evaluation.evaluate import Options, Result, evaluate
from scribe_service.evaluation.runner import EvalError
from scribe_service.pipeline.judge import Completion, JudgeHTTPError, Messages, Sampling
from scribe_service.settings import Settings
from support import ARITHMETIC_RECORD, RAR_RUBRIC, FakeEmbedder, uvicorn_in_thread

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "eval"
WRONG = ("Leipzig", "capital of Peru", "Lima", "Nile", "= 10.", "= 110", "= 30")


class StepJudge:
    """Scores 0 a step whose text names a WRONG word, else 3; fails (HTTP 400) on steps
    mentioning "novel Emma"; writes a fixed instance rubric; counts its calls."""

    model = "step-judge"

    def __init__(self) -> None:
        self.calls = 0

    def _score(self, messages: Messages) -> int:
        self.calls += 1
        step = messages[-1]["content"].split("Step:\n", 1)[1].split("Tool results returned")[0]
        if "novel Emma" in step:
            raise JudgeHTTPError(400, "bad request")
        return 0 if any(word in step for word in WRONG) else 3

    async def complete(
        self, messages: Messages, schema: dict[str, Any], sampling: Sampling
    ) -> Completion:
        await asyncio.sleep(0)
        if "criteria" in schema["properties"]:
            self.calls += 1
            return Completion(json.dumps(RAR_RUBRIC))
        verdict = {"rationale": "r", "failure_modes": [], "score": self._score(messages)}
        return Completion(json.dumps(verdict))

    async def score_token(self, messages: Messages, sampling: Sampling) -> Completion:
        score = self._score(messages)
        return Completion(str(score), top_logprobs=((str(score), -0.1), ("1", -3.0)))

    async def check(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class Service:
    """The real app over real uvicorn, with the judge it uses and the score requests it got."""

    def __init__(self, url: str, judge: StepJudge) -> None:
        self.url = url
        self.judge = judge
        self.requests: list[tuple[str, str | None]] = []
        """(request id, reference) of each score request."""

    @contextlib.asynccontextmanager
    async def http(
        self, tamper: Callable[[dict[str, Any]], None] | None = None
    ) -> AsyncIterator[httpx.AsyncClient]:
        """A client that counts score requests and lets `tamper` edit each score answer."""
        target = httpx.AsyncClient(base_url=self.url, timeout=60)

        async def forward(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/v1/score":
                body = json.loads(request.content)
                self.requests.append((body["request_id"], body.get("reference")))
            answer = await target.request(
                request.method, request.url.path, content=request.content,
                headers={"content-type": "application/json"},
            )  # fmt: skip
            if tamper is None or request.url.path != "/v1/score" or answer.status_code != 200:
                return httpx.Response(answer.status_code, content=answer.content)
            body = answer.json()
            tamper(body)
            return httpx.Response(200, json=body)

        async with target, httpx.AsyncClient(transport=httpx.MockTransport(forward)) as http:
            yield http


@pytest.fixture
def service(settings: Settings) -> Iterator[Service]:
    judge = StepJudge()
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=judge)
    with uvicorn_in_thread(app) as url:
        yield Service(url, judge)


def options(out: Path, data: Path = FIXTURES / "agent.jsonl", **changes: Any) -> Options:
    base: dict[str, Any] = {
        "command": "labels", "data": data, "out": out, "arms": ["scribe"],
        "n_resamples": 20, "quiet": True,
    }  # fmt: skip
    return Options(**{**base, **changes})


async def in_process(out: Path, settings: Settings, **changes: Any) -> Result:
    return await evaluate(
        options(out, **changes), settings, embedder=FakeEmbedder(), judge_backend=StepJudge()
    )


async def remote(
    out: Path,
    settings: Settings,
    service: Service,
    *,
    judge: StepJudge | None = None,
    tamper: Callable[[dict[str, Any]], None] | None = None,
    **changes: Any,
) -> Result:
    async with service.http(tamper) as http:
        return await evaluate(
            options(out, url=service.url, **changes), settings, embedder=FakeEmbedder(),
            judge_backend=judge, http_client=http,
        )  # fmt: skip


def lines(out: Path) -> dict[tuple[str, int, str], dict[str, Any]]:
    """Each judgment line, less its wall time (the one field two runs never share)."""
    text = (out / "judgments.jsonl").read_text(encoding="utf-8")
    parsed = [json.loads(line) for line in text.splitlines()]
    assert all(line.pop("seconds") >= 0 for line in parsed)
    return {(line["record_id"], line["step"], line["arm"]): line for line in parsed}


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.anyio
async def test_scribe_arm_through_the_service_equals_in_process(
    tmp_path: Path, settings: Settings, service: Service
) -> None:
    here = await in_process(tmp_path / "here", settings)
    there = await remote(tmp_path / "there", settings, service)
    assert lines(tmp_path / "there") == lines(tmp_path / "here")
    assert len(lines(tmp_path / "there")) == 12
    assert read_json(tmp_path / "there" / "run.json") == read_json(tmp_path / "here" / "run.json")
    assert there.summary["arms"] == here.summary["arms"]
    # One request per record, shared by its steps.
    assert sorted(service.requests) == [(f"eval:fixture/agent-{i}", None) for i in range(1, 7)]
    assert service.judge.calls == 12

    # A rerun sends nothing and judges nothing.
    service.requests.clear()
    again = await remote(tmp_path / "there", settings, service)
    assert (again.judgments_made, service.requests, service.judge.calls) == (0, [], 12)

    # --retry-failed sends again only the record whose step failed ("novel Emma").
    retried = await remote(tmp_path / "there", settings, service, retry_failed=True)
    assert retried.judgments_made == 1
    assert len(service.requests) == 1
    assert lines(tmp_path / "there") == lines(tmp_path / "here")


@pytest.mark.anyio
async def test_every_arm_with_a_judge_url_equals_in_process(
    tmp_path: Path, settings: Settings, service: Service
) -> None:
    arms = ["scribe", "generic", "rar", "direct", "scribe+ref"]
    data = tmp_path / "data.jsonl"
    records = (FIXTURES / "agent.jsonl").read_text(encoding="utf-8").splitlines()[:2]
    # The judge scores its first step 3; the arithmetic check (generic rubric) caps it at 1.
    data.write_text("\n".join([*records, json.dumps(ARITHMETIC_RECORD)]) + "\n", encoding="utf-8")
    here = await in_process(tmp_path / "here", settings, data=data, arms=arms)
    local = StepJudge()  # stands for --judge-url: the same judge the service uses
    there = await remote(tmp_path / "there", settings, service, judge=local, data=data, arms=arms)
    assert lines(tmp_path / "there") == lines(tmp_path / "here")
    assert read_json(tmp_path / "there" / "run.json") == read_json(tmp_path / "here" / "run.json")
    # scribe: 3 records x 2 steps; scribe+ref: the one record with a reference (the others
    # fail here as no_reference, unsent).
    assert service.judge.calls == 6 + 2
    assert sorted(service.requests, key=str) == [
        ("eval:fixture/agent-1", None), ("eval:fixture/agent-2", None),
        ("eval:fixture/arith-1", "42"), ("eval:fixture/arith-1", None),
    ]  # fmt: skip
    assert lines(tmp_path / "there")["fixture/agent-1", 0, "scribe+ref"]["error"] == "no_reference"
    assert local.calls == 3 * 6 + 3  # generic, rar, direct; and one rubric per task
    for arm in ("scribe", "generic"):  # the service's step result, and the check run here
        capped = lines(tmp_path / "there")["fixture/arith-1", 0, arm]
        assert (capped["score"], capped["judge_score"], capped["capped_by_check"]) == (1, 3, True)
        assert capped["findings"] == ["arithmetic_error"]
        assert there.summary["arms"][arm]["capped_by_check"] == 1
    # A finding that caps nothing (the judge already gave 0) is no capped step.
    grounded = lines(tmp_path / "there")["fixture/agent-2", 1, "scribe"]
    assert (grounded["score"], grounded["judge_score"], grounded["capped_by_check"]) == (
        0, None, False,
    )  # fmt: skip
    assert there.summary == {**here.summary, "data": there.summary["data"]}


@pytest.mark.anyio
async def test_the_service_reports_the_judge_score_a_check_capped(service: Service) -> None:
    request = {
        "messages": ARITHMETIC_RECORD["messages"],
        "options": {"min_similarity": 1.0},  # the generic rubric, which has the check
    }
    async with AsyncRewardClient(service.url) as client:
        response = await client.score(request)
    capped, clean = response.steps
    assert (capped.score, capped.judge_score, capped.judge_expected_score) == (1, 3, None)
    assert [f.source for f in capped.findings] == ["check"]
    assert (clean.score, clean.judge_score) == (3, None)  # "43" alone claims no sum


def drop_last_step(body: dict[str, Any]) -> None:
    body["steps"].pop()


def swap_messages(body: dict[str, Any]) -> None:
    first, second = body["steps"][:2]
    first["message_index"], second["message_index"] = (
        second["message_index"], first["message_index"],
    )  # fmt: skip


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("tamper", "says"),
    [
        pytest.param(drop_last_step, "the service answered 1 steps [0]", id="dropped"),
        pytest.param(swap_messages, "the service's step is message 4, here it is", id="reordered"),
    ],
)
async def test_a_service_that_segments_otherwise_stops_the_run(
    tmp_path: Path,
    settings: Settings,
    service: Service,
    tamper: Callable[[dict[str, Any]], None],
    says: str,
) -> None:
    with pytest.raises(EvalError, match="record 'fixture/agent-1', step") as caught:
        await remote(tmp_path, settings, service, tamper=tamper, limit=1)
    assert says in str(caught.value) and "segmenter" in str(caught.value)


@pytest.mark.anyio
async def test_other_arms_without_a_judge_url_are_refused(
    tmp_path: Path, settings: Settings
) -> None:
    with pytest.raises(EvalError, match="generic, direct need the judge too: give --judge-url"):
        await evaluate(
            options(tmp_path, arms=["scribe", "generic", "direct"], url="http://127.0.0.1:9"),
            settings,
            embedder=FakeEmbedder(),
        )
    assert not (tmp_path / "run.json").exists()


def test_the_command_line_refuses_them_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["eval", "labels", str(FIXTURES / "agent.jsonl"), "--out", str(tmp_path),
                 "--arms", "scribe,rar", "--url", "http://127.0.0.1:9"])  # fmt: skip
    assert code == 2
    assert "--judge-url" in capsys.readouterr().out
